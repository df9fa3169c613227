//! ReLU6, min(max(x, 0), 6) (the ViTs' MLP activation), and its backward as PyTorch's
//! `hardtanh_backward` computes it: the gradient passes where 0 < x < 6. One pass each way,
//! in chunks on rayon's threads, where burn composes a clamp from two masked fills each way.

use crate::buffers::zeroed_chunks;

/// Values per task.
const CHUNK: usize = 1 << 14;

pub fn forward(x: &[f32]) -> Vec<f32> {
    zeroed_chunks(x.len(), CHUNK, |i, y| {
        for (y, &x) in y.iter_mut().zip(&x[i * CHUNK..]) {
            // Selects, not max/min: NaN stays NaN, as in PyTorch.
            *y = if x < 0.0 {
                0.0
            } else if x > 6.0 {
                6.0
            } else {
                x
            };
        }
    })
}

/// dx for the output gradient `grad` at the input `x`.
pub fn backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        grad.len(),
        "relu6: input and gradient differ in length"
    );
    zeroed_chunks(x.len(), CHUNK, |i, dx| {
        let values = x[i * CHUNK..].iter().zip(&grad[i * CHUNK..]);
        for (dx, (&x, &g)) in dx.iter_mut().zip(values) {
            *dx = if x > 0.0 && x < 6.0 { g } else { 0.0 };
        }
    })
}
