//! ReLU6, min(max(x, 0), 6) (the ViTs' MLP activation), and its backward as PyTorch's
//! `hardtanh_backward` computes it: the gradient passes where 0 < x < 6. One pass each way,
//! in chunks on rayon's threads, where burn composes a clamp from two masked fills each way.

use rayon::prelude::*;

/// Values per task.
const CHUNK: usize = 1 << 14;

pub fn forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                // Selects, not max/min: NaN stays NaN, as in PyTorch.
                *y = if x < 0.0 {
                    0.0
                } else if x > 6.0 {
                    6.0
                } else {
                    x
                };
            }
        });
    y
}

/// dx for the output gradient `grad` at the input `x`.
pub fn backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(dx, (x, grad))| {
            for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(grad) {
                *dx = if x > 0.0 && x < 6.0 { g } else { 0.0 };
            }
        });
    dx
}
