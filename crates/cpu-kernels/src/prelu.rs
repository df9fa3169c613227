//! PReLU on burn's CPU backend (Flex), one pass each way: the backward's gives dx and each
//! plane's share of dα. Why not the composed backward of `src/model/prelu.rs`: a comparison,
//! two products, two selects, a negation, a transposed copy and a sum, eight passes over the
//! activations.

use rayon::prelude::*;

use crate::batch_norm::Layout;

/// y = x (x ≥ 0), α_c·x (x < 0), plane by plane (burn-flex's PReLU broadcasts α element by
/// element).
pub fn forward(layout: Layout, x: &[f32], alpha: &[f32]) -> Vec<f32> {
    let plane = layout.plane.max(1);
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(plane).enumerate().for_each(|(index, y)| {
        let a = alpha[index % layout.channels];
        for (y, &x) in y.iter_mut().zip(&x[index * plane..]) {
            *y = if x >= 0.0 { x } else { a * x };
        }
    });
    y
}

/// (dx, dα) of y = x (x ≥ 0), α_c·x (x < 0) for the output gradient `grad`.
pub fn backward(layout: Layout, x: &[f32], alpha: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let plane = layout.plane.max(1);
    let mut dx = vec![0.0; x.len()];
    // Each plane's Σ dy·x over x < 0, summed per channel below in plane order: the same
    // result whichever thread finishes first.
    let shares: Vec<f64> = dx
        .par_chunks_mut(plane)
        .enumerate()
        .map(|(index, dx)| {
            let a = alpha[index % layout.channels];
            let x = &x[index * plane..][..dx.len()];
            let grad = &grad[index * plane..][..dx.len()];
            let mut lanes = [0.0f32; 8];
            let step = |dx: &mut f32, x: f32, dy: f32, lane: &mut f32| {
                let negative = x < 0.0;
                *dx = if negative { a * dy } else { dy };
                *lane += if negative { dy * x } else { 0.0 };
            };
            let mut chunks = dx.chunks_exact_mut(8);
            let (mut xs, mut dys) = (x.chunks_exact(8), grad.chunks_exact(8));
            for ((dx, x), dy) in (&mut chunks).zip(&mut xs).zip(&mut dys) {
                for i in 0..8 {
                    step(&mut dx[i], x[i], dy[i], &mut lanes[i]);
                }
            }
            let tail = chunks.into_remainder();
            for (i, dx) in tail.iter_mut().enumerate() {
                step(dx, xs.remainder()[i], dys.remainder()[i], &mut lanes[i]);
            }
            lanes.iter().map(|&v| v as f64).sum()
        })
        .collect();
    let mut grad_alpha = vec![0.0f64; layout.channels];
    for (index, share) in shares.into_iter().enumerate() {
        grad_alpha[index % layout.channels] += share;
    }
    (dx, grad_alpha.into_iter().map(|v| v as f32).collect())
}
