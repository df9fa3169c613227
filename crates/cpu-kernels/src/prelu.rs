//! PReLU on burn's CPU backend (Flex), one pass each way: the backward's gives dx and each
//! plane's share of dα. Why not the composed backward of `src/model/prelu.rs`: a comparison,
//! two products, two selects, a negation, a transposed copy and a sum, eight passes over the
//! activations.

use crate::batch_norm::Layout;
use crate::buffers::{zeroed_by_tasks_with, zeroed_chunks};

/// y = x (x ≥ 0), α_c·x (x < 0), plane by plane (burn-flex's PReLU broadcasts α element by
/// element).
pub fn forward(layout: Layout, x: &[f32], alpha: &[f32]) -> Vec<f32> {
    let plane = layout.plane.max(1);
    zeroed_chunks(x.len(), plane, |index, y| {
        let a = alpha[index % layout.channels];
        plane_forward(y, &x[index * plane..][..y.len()], a);
    })
}

with_avx2_copy!(fn plane_forward(y: &mut [f32], x: &[f32], a: f32) = plane_forward_baseline);

#[inline(always)]
fn plane_forward_baseline(y: &mut [f32], x: &[f32], a: f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = if x >= 0.0 { x } else { a * x };
    }
}

/// (dx, dα) of y = x (x ≥ 0), α_c·x (x < 0) for the output gradient `grad`.
pub fn backward(layout: Layout, x: &[f32], alpha: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let plane = layout.plane.max(1);
    // Each plane's Σ dy·x over x < 0, summed per channel below in plane order: the same
    // result whichever thread finishes first.
    let tasks = x.len().div_ceil(plane);
    let ([dx], shares) = zeroed_by_tasks_with(tasks, [x.len()], [plane], |index, [dx]| {
        let a = alpha[index % layout.channels];
        let x = &x[index * plane..][..dx.len()];
        let grad = &grad[index * plane..][..dx.len()];
        plane_backward(dx, x, grad, a)
    });
    let mut grad_alpha = vec![0.0f64; layout.channels];
    for (index, share) in shares.into_iter().enumerate() {
        grad_alpha[index % layout.channels] += share;
    }
    (dx, grad_alpha.into_iter().map(|v| v as f32).collect())
}

with_avx2_copy!(
    /// One plane's dx, and its Σ dy·x over x < 0 (eight running sums, then in f64).
    fn plane_backward(dx: &mut [f32], x: &[f32], grad: &[f32], a: f32) -> f64 = plane_backward_baseline
);

#[inline(always)]
fn plane_backward_baseline(dx: &mut [f32], x: &[f32], grad: &[f32], a: f32) -> f64 {
    // Two loops of plain selects over fixed-size chunks, no closure: each vectorises into
    // compares and blends (one loop doing both, written with a closure taking `&mut lanes[i]`,
    // ran one value at a time: 19 % of a tiny step). The plane is in cache for the second.
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(grad) {
        *dx = if x < 0.0 { a * dy } else { dy };
    }
    let mut lanes = [0.0f32; 8];
    let (mut xs, mut dys) = (x.chunks_exact(8), grad.chunks_exact(8));
    for (x, dy) in (&mut xs).zip(&mut dys) {
        let x: &[f32; 8] = x.try_into().expect("chunks of 8");
        let dy: &[f32; 8] = dy.try_into().expect("chunks of 8");
        for i in 0..8 {
            // dy·x where x < 0, else +0.0, as a mask on the bits: written as a select, LLVM
            // branched around the product value by value.
            let keep = if x[i] < 0.0 { u32::MAX } else { 0 };
            lanes[i] += f32::from_bits((dy[i] * x[i]).to_bits() & keep);
        }
    }
    for (i, (&x, &dy)) in xs.remainder().iter().zip(dys.remainder()).enumerate() {
        lanes[i] += if x < 0.0 { dy * x } else { 0.0 };
    }
    let mut share = 0.0f64;
    for lane in lanes {
        share += lane as f64;
    }
    share
}
