//! 5-point alignment onto insightface's 112×112 template: the least-squares similarity
//! transform (rotation, uniform scale, translation; what skimage's
//! `SimilarityTransform.estimate`, i.e. Umeyama without reflection, returns) from the detected
//! landmarks to the template, then a bilinear warp with border 0.

use image::RgbImage;

/// Left eye, right eye, nose, left and right mouth corner in the 112×112 crop (ArcFace).
pub const TEMPLATE: [[f32; 2]; 5] = [
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
];

/// x' = a·x − b·y + tx, y' = b·x + a·y + ty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    /// The 2×3 matrix [[a, −b, tx], [b, a, ty]] (cv2.warpAffine's M).
    pub fn matrix(&self) -> [[f64; 3]; 2] {
        [[self.a, -self.b, self.tx], [self.b, self.a, self.ty]]
    }

    pub fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        ]
    }

    pub fn inverse(&self) -> Similarity {
        let n = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / n, -self.b / n);
        Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        }
    }
}

/// Least-squares similarity mapping `from` onto `to`; None when the points coincide.
pub fn estimate(from: &[[f32; 2]], to: &[[f32; 2]]) -> Option<Similarity> {
    let n = from.len() as f64;
    let mean = |p: &[[f32; 2]]| {
        let (sx, sy) = p
            .iter()
            .fold((0.0, 0.0), |(x, y), q| (x + q[0] as f64, y + q[1] as f64));
        (sx / n, sy / n)
    };
    let ((fx, fy), (tx, ty)) = (mean(from), mean(to));
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (p, q) in from.iter().zip(to) {
        let (x, y) = (p[0] as f64 - fx, p[1] as f64 - fy);
        let (u, v) = (q[0] as f64 - tx, q[1] as f64 - ty);
        dot += x * u + y * v;
        cross += x * v - y * u;
        norm += x * x + y * y;
    }
    if norm <= f64::EPSILON {
        return None;
    }
    let (a, b) = (dot / norm, cross / norm);
    Some(Similarity {
        a,
        b,
        tx: tx - (a * fx - b * fy),
        ty: ty - (b * fx + a * fy),
    })
}

/// The `side`×`side` crop: each output pixel samples the image at the inverse transform of its
/// centre, bilinearly; neighbours outside the image count as 0 (skimage `warp`, order 1,
/// mode "constant"). Returned as float RGB, 0–255.
pub fn warp(image: &RgbImage, transform: &Similarity, side: usize) -> Vec<[f32; 3]> {
    let inverse = transform.inverse();
    let (w, h) = (image.width() as i64, image.height() as i64);
    let pixel = |x: i64, y: i64| -> [f32; 3] {
        if x < 0 || y < 0 || x >= w || y >= h {
            [0.0; 3]
        } else {
            let p = image.get_pixel(x as u32, y as u32).0;
            [p[0] as f32, p[1] as f32, p[2] as f32]
        }
    };
    let mut out = Vec::with_capacity(side * side);
    for row in 0..side {
        for col in 0..side {
            let [sx, sy] = inverse.apply([col as f64, row as f64]);
            let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
            let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
            let mut value = [0f32; 3];
            for (dx, dy, weight) in [
                (0, 0, (1.0 - fx) * (1.0 - fy)),
                (1, 0, fx * (1.0 - fy)),
                (0, 1, (1.0 - fx) * fy),
                (1, 1, fx * fy),
            ] {
                let p = pixel(x0 + dx, y0 + dy);
                for c in 0..3 {
                    value[c] += weight * p[c];
                }
            }
            out.push(value);
        }
    }
    out
}

/// The aligned 112×112 face as an 8-bit image (rounded), for saving and embedding.
pub fn align_face(image: &RgbImage, landmarks: &[[f32; 2]; 5]) -> Option<RgbImage> {
    let transform = estimate(landmarks, &TEMPLATE)?;
    let pixels = warp(image, &transform, 112);
    let raw: Vec<u8> = pixels
        .iter()
        .flat_map(|p| p.map(|v| v.round().clamp(0.0, 255.0) as u8))
        .collect();
    RgbImage::from_raw(112, 112, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_a_known_similarity() {
        let truth = Similarity {
            a: 0.8,
            b: 0.3,
            tx: 5.0,
            ty: -2.0,
        };
        let from: Vec<[f32; 2]> = TEMPLATE.to_vec();
        let to: Vec<[f32; 2]> = from
            .iter()
            .map(|p| {
                let [x, y] = truth.apply([p[0] as f64, p[1] as f64]);
                [x as f32, y as f32]
            })
            .collect();
        let got = estimate(&from, &to).unwrap();
        for (g, t) in [
            (got.a, truth.a),
            (got.b, truth.b),
            (got.tx, truth.tx),
            (got.ty, truth.ty),
        ] {
            assert!((g - t).abs() < 1e-4, "{got:?}");
        }
        let back = got.inverse().apply(got.apply([3.0, 4.0]));
        assert!((back[0] - 3.0).abs() < 1e-9 && (back[1] - 4.0).abs() < 1e-9);
    }

    #[test]
    fn identical_points_have_no_transform() {
        assert!(estimate(&[[1.0, 1.0]; 5], &TEMPLATE).is_none());
    }
}
