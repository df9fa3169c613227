//! OpenCV's `cv2.resize` of a square RGB image, for AdaFace's low-resolution augmentation, which
//! draws one of its five interpolations for each way. Written here because the `image` crate's
//! filters are other kernels (its Triangle widens when shrinking, its CatmullRom is a = −0.5
//! where OpenCV's cubic is a = −0.75, its Lanczos has 3 lobes where OpenCV's has 4, and it has
//! no area mode). Separable, each output pixel a weighted sum of source pixels along x then y,
//! in f32, rounded once at the end: OpenCV's 8-bit paths use 11-bit fixed-point coefficients,
//! so the two differ by a grey level at most (tested against cv2).

/// cv2's interpolation flags, as AdaFace draws them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Nearest,
    Linear,
    Area,
    Cubic,
    Lanczos4,
}

impl Interpolation {
    pub const ALL: [Interpolation; 5] = [
        Interpolation::Nearest,
        Interpolation::Linear,
        Interpolation::Area,
        Interpolation::Cubic,
        Interpolation::Lanczos4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Interpolation::Nearest => "nearest",
            Interpolation::Linear => "linear",
            Interpolation::Area => "area",
            Interpolation::Cubic => "cubic",
            Interpolation::Lanczos4 => "lanczos4",
        }
    }
}

/// For each output index, the (source index, weight) pairs of one axis.
pub(super) type Taps = Vec<Vec<(usize, f32)>>;

/// `src` (side × side RGB, row-major) resized to `out` × `out` as cv2.resize does.
pub fn resize(src: &[u8], side: usize, out: usize, mode: Interpolation) -> Vec<u8> {
    resample(src, side, out, &taps(side, out, mode))
}

/// `src` (side × side RGB) resampled to `out` × `out` with `taps` on both axes: along x, then
/// along y, in f32, each value a sum over its taps in order, rounded once (half up) and clamped
/// to [0, 255]. The loops run over whole pixels and rows so that they vectorise.
pub(super) fn resample(src: &[u8], side: usize, out: usize, taps: &Taps) -> Vec<u8> {
    debug_assert_eq!(src.len(), side * side * 3);
    debug_assert_eq!(taps.len(), out);
    let width = out * 3;
    // Along x: [side rows][out columns][3].
    let mut rows = vec![0f32; side * width];
    for (y, row) in rows.chunks_exact_mut(width).enumerate() {
        let line = &src[y * side * 3..(y + 1) * side * 3];
        for (pixel, tap) in row.chunks_exact_mut(3).zip(taps) {
            for &(s, w) in tap {
                for c in 0..3 {
                    pixel[c] += w * line[s * 3 + c] as f32;
                }
            }
        }
    }
    let mut dst = vec![0u8; out * width];
    let mut sum = vec![0f32; width];
    for (line, tap) in dst.chunks_exact_mut(width).zip(taps) {
        sum.fill(0.0);
        for &(s, w) in tap {
            for (acc, v) in sum.iter_mut().zip(&rows[s * width..(s + 1) * width]) {
                *acc += w * v;
            }
        }
        for (d, v) in line.iter_mut().zip(&sum) {
            *d = to_u8(*v);
        }
    }
    dst
}

/// A value rounded half up and saturated to a grey level (truncating v + ½ after the clamp:
/// one instruction where `round` is a library call on baseline x86-64).
fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5) as u8
}

/// One axis's taps from `from` to `to` samples.
pub(super) fn taps(from: usize, to: usize, mode: Interpolation) -> Taps {
    let scale = from as f64 / to as f64;
    let last = from as isize - 1;
    // Indices past the edges repeat the edge (cv2's BORDER_REPLICATE for resizing).
    let clamp = |i: isize| i.clamp(0, last) as usize;
    (0..to)
        .map(|d| match mode {
            Interpolation::Nearest => {
                vec![(((d as f64 * scale).floor() as usize).min(from - 1), 1.0)]
            }
            Interpolation::Linear => {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let s = f.floor();
                let (s, f) = match s as isize {
                    s if s < 0 => (0, 0.0),
                    s if s >= last => (last, 0.0),
                    s => (s, f - s as f64),
                };
                vec![(clamp(s), (1.0 - f) as f32), (clamp(s + 1), f as f32)]
            }
            Interpolation::Cubic | Interpolation::Lanczos4 => {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let s = f.floor();
                let t = f - s;
                let (lo, n) = match mode {
                    Interpolation::Cubic => (-1, 4),
                    _ => (-3, 8),
                };
                let weights: Vec<f64> = (0..n)
                    .map(|k| {
                        let x = t - (lo + k) as f64;
                        match mode {
                            Interpolation::Cubic => cubic(x),
                            _ => lanczos4(x),
                        }
                    })
                    .collect();
                let sum: f64 = weights.iter().sum();
                (0..n)
                    .map(|k| {
                        let i = clamp(s as isize + lo + k);
                        (i, (weights[k as usize] / sum) as f32)
                    })
                    .collect()
            }
            Interpolation::Area if scale >= 1.0 => area_taps(d, scale, from),
            Interpolation::Area => {
                // Enlarging, cv2's area mode is linear with its own fraction: the source pixel
                // under the output pixel's left edge, blended only across a source edge.
                let s = (d as f64 * scale).floor();
                let f = (d as f64 + 1.0) - (s + 1.0) / scale;
                let f = if f <= 0.0 { 0.0 } else { f - f.floor() };
                let s = s as isize;
                vec![(clamp(s), (1.0 - f) as f32), (clamp(s + 1), f as f32)]
            }
        })
        .collect()
}

/// Shrinking by `scale`, output pixel `d` averages the source interval [d·scale, (d+1)·scale),
/// each source pixel weighted by its overlap.
fn area_taps(d: usize, scale: f64, from: usize) -> Vec<(usize, f32)> {
    let (start, end) = (d as f64 * scale, ((d + 1) as f64 * scale).min(from as f64));
    let mut out = Vec::new();
    let mut s = start.floor() as usize;
    while (s as f64) < end && s < from {
        let overlap = (end.min(s as f64 + 1.0) - start.max(s as f64)).max(0.0);
        if overlap > 1e-9 {
            out.push((s, (overlap / (end - start)) as f32));
        }
        s += 1;
    }
    out
}

/// cv2's bicubic kernel (a = −0.75).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.75;
    let x = x.abs();
    if x <= 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// cv2's Lanczos kernel with 4 lobes, sinc(x)·sinc(x/4), normalised over its 8 taps by the
/// caller as cv2 does.
fn lanczos4(x: f64) -> f64 {
    if x.abs() < 1e-6 {
        return 1.0;
    }
    let pi = std::f64::consts::PI;
    let y = pi * x;
    4.0 * (y).sin() * (y / 4.0).sin() / (y * y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_axis_weight_sums_to_one() {
        for mode in Interpolation::ALL {
            for (from, to) in [(112, 23), (23, 112), (112, 112), (112, 56), (50, 112)] {
                for (d, tap) in taps(from, to, mode).iter().enumerate() {
                    let sum: f32 = tap.iter().map(|t| t.1).sum();
                    assert!(
                        (sum - 1.0).abs() < 1e-5,
                        "{mode:?} {from}->{to} [{d}]: {sum}"
                    );
                    assert!(tap.iter().all(|t| t.0 < from));
                }
            }
        }
    }
}
