//! BatchNorm in training on burn's CPU backend (Flex): a statistics pass and one output pass
//! each way, over NCHW data where it lies.
//!
//! Why not burn's `batch_norm_train` and its backward (the default of every backend, which
//! Flex keeps): they are composed of ~10 (forward) and ~15 (backward) tensor operations, each a
//! pass over the activations, four of them copies of a transposed view (docs/PERFORMANCE.md,
//! "CPU training"). The arithmetic here is PyTorch's CPU kernel's: per channel the mean and the
//! biased variance (two passes, sums in f64), y = x·scale + shift, and in the backward
//! dx = γ/σ·(dy − mean(dy) − x̂·mean(dy·x̂)) with x̂ = (x − μ)/σ, σ = √(var + ε).

use rayon::prelude::*;

use crate::buffers::zeroed_chunks;

/// [N, C, values per image and channel] of an NCHW (or NC…) tensor.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub batch: usize,
    pub channels: usize,
    pub plane: usize,
}

impl Layout {
    pub fn of(shape: &[usize]) -> Self {
        Self {
            batch: shape[0],
            channels: shape.get(1).copied().unwrap_or(1),
            plane: shape.iter().skip(2).product(),
        }
    }

    fn per_channel(&self) -> usize {
        self.batch * self.plane
    }

    /// The planes of channel `c`, image by image.
    fn planes<'a>(&self, data: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        let (plane, channels) = (self.plane, self.channels);
        (0..self.batch).map(move |n| &data[(n * channels + c) * plane..][..plane])
    }
}

// The per-plane sums, in f64 over eight running values then in order: each its own function
// with its loop written out and an AVX2 copy (`with_avx2_copy!`). One generic sum taking a
// closure compiled the centred ones value by value (7 % of a tiny step).

with_avx2_copy!(
    /// Σ values.
    fn plane_sum(values: &[f32]) -> f64 = plane_sum_baseline
);

#[inline(always)]
fn plane_sum_baseline(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (chunks, rest) = values.as_chunks::<8>();
    for chunk in chunks {
        for i in 0..8 {
            lanes[i] += chunk[i] as f64;
        }
    }
    let rest: f64 = rest.iter().map(|&v| v as f64).sum();
    lanes.iter().sum::<f64>() + rest
}

with_avx2_copy!(
    /// Σ (values − mean)².
    fn plane_squares_about(values: &[f32], mean: f64) -> f64 = plane_squares_about_baseline
);

#[inline(always)]
fn plane_squares_about_baseline(values: &[f32], mean: f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let (chunks, rest) = values.as_chunks::<8>();
    for chunk in chunks {
        for i in 0..8 {
            let d = chunk[i] as f64 - mean;
            lanes[i] += d * d;
        }
    }
    let rest: f64 = rest
        .iter()
        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
        .sum();
    lanes.iter().sum::<f64>() + rest
}

with_avx2_copy!(
    /// Σ dy·(x − mean) over two planes in step.
    fn plane_products_about(dy: &[f32], x: &[f32], mean: f64) -> f64 = plane_products_about_baseline
);

#[inline(always)]
fn plane_products_about_baseline(dy: &[f32], x: &[f32], mean: f64) -> f64 {
    let x = &x[..dy.len()];
    let mut lanes = [0.0f64; 8];
    let ((dys, dy_rest), (xs, x_rest)) = (dy.as_chunks::<8>(), x.as_chunks::<8>());
    for (d, v) in dys.iter().zip(xs) {
        for i in 0..8 {
            lanes[i] += d[i] as f64 * (v[i] as f64 - mean);
        }
    }
    let rest: f64 = dy_rest
        .iter()
        .zip(x_rest)
        .map(|(&d, &v)| d as f64 * (v as f64 - mean))
        .sum();
    lanes.iter().sum::<f64>() + rest
}

/// Writes `out` = a·x + b·y + c plane by plane with per-channel (a, b, c), `y` optional.
fn per_channel_affine(
    layout: Layout,
    x: &[f32],
    y: Option<&[f32]>,
    coefficients: &[(f32, f32, f32)],
) -> Vec<f32> {
    let plane = layout.plane.max(1);
    zeroed_chunks(x.len(), plane, |index, out| {
        let (a, b, c) = coefficients[index % layout.channels];
        let x = &x[index * plane..][..out.len()];
        match y {
            Some(y) => {
                let y = &y[index * plane..][..out.len()];
                for ((o, &u), &v) in out.iter_mut().zip(x).zip(y) {
                    *o = a * u + b * v + c;
                }
            }
            None => {
                for (o, &u) in out.iter_mut().zip(x) {
                    *o = a * u + c;
                }
            }
        }
    })
}

/// The batch's per-channel mean and biased variance of `x`.
pub fn statistics(layout: Layout, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let count = layout.per_channel().max(1) as f64;
    (0..layout.channels)
        .into_par_iter()
        .map(|c| {
            let mean = layout.planes(x, c).map(plane_sum).sum::<f64>() / count;
            let var = layout
                .planes(x, c)
                .map(|p| plane_squares_about(p, mean))
                .sum::<f64>()
                / count;
            (mean as f32, var as f32)
        })
        .unzip()
}

/// y = γ·(x − μ)/√(var + ε) + β with the given per-channel statistics.
pub fn normalize(
    layout: Layout,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
) -> Vec<f32> {
    let coefficients: Vec<(f32, f32, f32)> = (0..layout.channels)
        .map(|c| {
            let scale = gamma[c] as f64 / (var[c] as f64 + epsilon).sqrt();
            (
                scale as f32,
                0.0,
                (beta[c] as f64 - mean[c] as f64 * scale) as f32,
            )
        })
        .collect();
    per_channel_affine(layout, x, None, &coefficients)
}

/// (dx, dγ, dβ) for the output gradient `grad` of [`normalize`] by the batch's own
/// [`statistics`] `(mean, var)`.
pub fn backward(
    layout: Layout,
    x: &[f32],
    gamma: &[f32],
    (mean, var): (&[f32], &[f32]),
    epsilon: f64,
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let count = layout.per_channel().max(1) as f64;
    // Per channel: Σdy and Σdy·(x − μ).
    let sums: Vec<(f64, f64)> = (0..layout.channels)
        .into_par_iter()
        .map(|c| {
            let mu = mean[c] as f64;
            layout
                .planes(grad, c)
                .zip(layout.planes(x, c))
                .map(|(dy, x)| (plane_sum(dy), plane_products_about(dy, x, mu)))
                .fold((0.0, 0.0), |(a, b), (u, v)| (a + u, b + v))
        })
        .collect();
    let mut coefficients = Vec::with_capacity(layout.channels);
    let (mut grad_gamma, mut grad_beta) = (Vec::new(), Vec::new());
    for (c, &(sum_dy, sum_dy_centred)) in sums.iter().enumerate() {
        let inv_std = 1.0 / (var[c] as f64 + epsilon).sqrt();
        let g = gamma[c] as f64;
        // dx = k1·dy + k2·(x − μ) + k3, with k1 = γ/σ, k2 = −γ/σ³·Σdy(x − μ)/M, k3 = −γ/σ·Σdy/M.
        let k1 = g * inv_std;
        let k2 = -g * inv_std.powi(3) * sum_dy_centred / count;
        let k3 = -k1 * sum_dy / count;
        coefficients.push((k1 as f32, k2 as f32, (k3 - k2 * mean[c] as f64) as f32));
        grad_gamma.push((sum_dy_centred * inv_std) as f32);
        grad_beta.push(sum_dy as f32);
    }
    let dx = per_channel_affine(layout, grad, Some(x), &coefficients);
    (dx, grad_gamma, grad_beta)
}
