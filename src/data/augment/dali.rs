//! arcface_torch's augmentations (recognition/arcface_torch/dataset.py, `dali_data_iter` with
//! `dali_aug = True`) as NVIDIA DALI computes them. Each is a DALI op of its own with an 8-bit
//! output, so each rounds; in dataset.py's order:
//!
//! - **resize** (p 0.1): `fn.resize(resize_x = resize_y = s)`, s uniform in [56, 89) as a float,
//!   then `fn.resize(size = (112, 112))`. DALI's defaults: linear, antialiased (shrinking, a
//!   triangle filter as wide as the scale), and `subpixel_scale` — the output is round(s) pixels
//!   while the scale stays 112 / s, the source window shrunk (or grown) about its centre;
//!   coordinates past the edge repeat it. Back up, plain linear interpolation.
//! - **blur** (p 0.2): `fn.gaussian_blur(window_size = 2·w + 1)` with w from
//!   `fn.random.uniform(range = (1, 2), dtype = INT32)`, which rounds its float draw (DALI's
//!   documented conversion): a 3×3 window (σ 0.8) or a 5×5 one (σ 1.1) equally often, σ by
//!   DALI's rule (radius − 1)·0.3 + 0.8, borders reflected without repeating the edge (101).
//! - **hsv** (p 0.2): `fn.hsv(hue, saturation)`, hue uniform in [0°, 20°), saturation in
//!   [1, 1.2): one 3×3 matrix, Yiq2Rgb · rotation(hue) · scale_IQ(saturation) · Rgb2Yiq, with
//!   DALI's three-decimal matrices (dali/operators/image/color/hsv.h).
//! - **gray** (p 0.1): `fn.hsv(saturation = coin)` on *every* image: greyscale when the coin
//!   says so, else the same matrices at saturation 1, whose product is not quite the identity
//!   (one grey level off on about 5 % of the values) — arcface_torch's images go through it, so
//!   ours do.
//!
//! Then the flip (p 0.5), the loader's own. Written here because no kept crate has DALI's
//! resampling or colour twist; each step is tested against Pillow, OpenCV or scikit-image
//! (tests/augment.rs). Not checked against DALI itself, which needs a GPU and NVIDIA's wheel:
//! the centring of the subpixel window follows DALI's documentation of `subpixel_scale`.

use super::resize::{self, Interpolation, Taps};

/// DALI's RGB → YIQ matrix and its rounded inverse (hsv.h).
const RGB_TO_YIQ: [[f32; 3]; 3] = [
    [0.299, 0.587, 0.114],
    [0.596, -0.274, -0.321],
    [0.211, -0.523, 0.311],
];
const YIQ_TO_RGB: [[f32; 3]; 3] = [
    [1.0, 0.956, 0.621],
    [1.0, -0.272, -0.647],
    [1.0, -1.107, 1.705],
];

/// The small side `fn.resize` makes of a requested `size`: round(size), at least 1.
pub fn resized_side(size: f32) -> usize {
    (size.round() as usize).max(1)
}

/// `rgb` (side × side) shrunk to the requested `size` as DALI's antialiased linear resize does
/// with subpixel scale: returns the resized_side(size)-pixel square.
pub fn shrink(rgb: &[u8], side: usize, size: f32) -> Vec<u8> {
    let small = resized_side(size);
    resize::resample(rgb, side, small, &triangle_taps(side, small, size))
}

/// DALI's random resize: shrunk to `size`, then back to `side` with linear interpolation.
pub fn resize_down_and_up(rgb: &mut [u8], side: usize, size: f32) {
    let small = resized_side(size);
    let reduced = shrink(rgb, side, size);
    // DALI's linear magnification samples the triangle of radius 1 at (d + ½)·scale − ½ with
    // clamped coordinates: cv2's linear enlargement, tap for tap.
    let back = resize::resample(
        &reduced,
        small,
        side,
        &resize::taps(small, side, Interpolation::Linear),
    );
    rgb.copy_from_slice(&back);
}

/// The taps of an antialiased shrink from `from` to `to` pixels at scale from / `size`: output
/// pixel d centred at start + (d + ½)·scale in the source, start placing the window of
/// to·scale source pixels about the image's centre; each source pixel weighted by the triangle
/// 1 − |distance| / scale, indices past the edges clamped, the weights normalised.
fn triangle_taps(from: usize, to: usize, size: f32) -> Taps {
    let scale = from as f64 / size as f64;
    let radius = scale.max(1.0);
    let start = (from as f64 - to as f64 * scale) / 2.0;
    let last = from as isize - 1;
    (0..to)
        .map(|d| {
            let centre = start + (d as f64 + 0.5) * scale;
            let lo = (centre - radius - 0.5).floor() as isize;
            let hi = (centre + radius - 0.5).ceil() as isize;
            let weighted: Vec<(usize, f64)> = (lo..=hi)
                .map(|j| {
                    let w = 1.0 - (j as f64 + 0.5 - centre).abs() / radius;
                    (j.clamp(0, last) as usize, w)
                })
                .filter(|&(_, w)| w > 0.0)
                .collect();
            let sum: f64 = weighted.iter().map(|t| t.1).sum();
            weighted
                .into_iter()
                .map(|(j, w)| (j, (w / sum) as f32))
                .collect()
        })
        .collect()
}

/// fn.gaussian_blur with a `window` × `window` kernel (odd), σ from the window as DALI derives
/// it, separable in f32, borders reflected (101), rounded once: the resamplers' two passes
/// with the kernel as every pixel's taps.
pub fn blur(rgb: &mut [u8], side: usize, window: usize) {
    debug_assert!(window % 2 == 1 && window < side);
    let radius = window / 2;
    let sigma = (radius as f32 - 1.0) * 0.3 + 0.8;
    let raw: Vec<f32> = (0..window)
        .map(|k| {
            let x = k as f32 - radius as f32;
            (-(x * x) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = raw.iter().sum();
    // The source index of each padded position −radius..side + radius, reflected (101).
    let last = side as isize - 1;
    let source: Vec<usize> = (-(radius as isize)..=last + radius as isize)
        .map(|i| i.abs().min(2 * last - i) as usize)
        .collect();
    let taps: Taps = (0..side)
        .map(|x| {
            let window = &source[x..x + window];
            window
                .iter()
                .zip(&raw)
                .map(|(&s, w)| (s, w / total))
                .collect()
        })
        .collect();
    rgb.copy_from_slice(&resize::resample(rgb, side, side, &taps));
}

/// fn.hsv's matrix for `hue` degrees and `saturation` (value 1), composed in f32 as hsv.h does.
pub fn hsv_matrix(hue: f32, saturation: f32) -> [[f32; 3]; 3] {
    let radians = hue as f64 * std::f64::consts::PI / 180.0;
    let (sin, cos) = (radians.sin() as f32, radians.cos() as f32);
    let rotate = [[1.0, 0.0, 0.0], [0.0, cos, sin], [0.0, -sin, cos]];
    let scale = [
        [1.0, 0.0, 0.0],
        [0.0, saturation, 0.0],
        [0.0, 0.0, saturation],
    ];
    let left = product(&product(&YIQ_TO_RGB, &rotate), &scale);
    product(&left, &RGB_TO_YIQ)
}

fn product(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

/// `rgb` through fn.hsv at `hue` and `saturation`: each pixel times the matrix, saturated to
/// [0, 255] and rounded to nearest, ties to even (the GPU's conversion).
pub fn hsv(rgb: &mut [u8], hue: f32, saturation: f32) {
    // Adding and removing 1.5·2²³ rounds an f32 below 2²² to the nearest integer, ties to
    // even, in the default rounding mode: `round_ties_even` without its library call.
    const ROUND: f32 = 12_582_912.0;
    let m = hsv_matrix(hue, saturation);
    for p in rgb.chunks_exact_mut(3) {
        let v = [p[0] as f32, p[1] as f32, p[2] as f32];
        for (out, row) in p.iter_mut().zip(&m) {
            let t = row[0] * v[0] + row[1] * v[1] + row[2] * v[2];
            *out = ((t.clamp(0.0, 255.0) + ROUND) - ROUND) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrink_taps_are_normalised_and_inside() {
        for size in [56.0f32, 63.3, 70.5, 88.99] {
            let taps = triangle_taps(112, resized_side(size), size);
            for tap in &taps {
                let sum: f32 = tap.iter().map(|t| t.1).sum();
                assert!((sum - 1.0).abs() < 1e-5 && tap.iter().all(|t| t.0 < 112));
            }
        }
    }

    #[test]
    fn saturation_zero_is_the_luma_row() {
        let m = hsv_matrix(0.0, 0.0);
        for row in m {
            for (got, want) in row.iter().zip([0.299, 0.587, 0.114]) {
                assert!((got - want).abs() < 1e-6, "{m:?}");
            }
        }
    }
}
