//! Scaled dot-product attention, softmax(s·Q·Kᵀ)·V, forward and backward, one (image, head)
//! pair per task on rayon's threads: the product, the softmax and the second product of each
//! pair while its [T, T] matrix is in cache, where burn composes them from a dozen whole-tensor
//! operations, and exp as a polynomial that vectorises ([`exp`]) where libm's is called value by
//! value. Each pair's sums run in an order fixed by the shapes, so runs repeat bit for bit.

use rayon::prelude::*;

use crate::matmul::{View, matmul};

/// Shapes: `pairs` (image, head) pairs of `tokens` × `width` matrices, back to back.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub pairs: usize,
    pub tokens: usize,
    pub width: usize,
}

impl Shape {
    fn matrix(&self) -> usize {
        self.tokens * self.width
    }
    fn scores(&self) -> usize {
        self.tokens * self.tokens
    }
}

/// (output [pairs, T, width], probabilities [pairs, T, T]) of q, k, v [pairs, T, width].
pub fn forward(s: Shape, q: &[f32], k: &[f32], v: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let (m, t) = (s.matrix(), s.tokens);
    let mut out = vec![0.0; s.pairs * m];
    let mut probs = vec![0.0; s.pairs * s.scores()];
    out.par_chunks_mut(m.max(1))
        .zip(probs.par_chunks_mut(s.scores().max(1)))
        .enumerate()
        .for_each(|(pair, (out, p))| {
            let (q, k, v) = (&q[pair * m..][..m], &k[pair * m..][..m], &v[pair * m..][..m]);
            let rows = |x| View::rows(x, s.width);
            matmul(p, rows(q), rows(k).t(), (t, s.width, t), false, false);
            p.chunks_exact_mut(t).for_each(|row| softmax(row, scale));
            matmul(out, View::rows(p, t), rows(v), (t, t, s.width), false, false);
        });
    (out, probs)
}

/// (dq, dk, dv) for the output gradient `grad` [pairs, T, width], from the forward's
/// probabilities P: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Σ_j dP·P), dQ = s·dS·K, dK = s·dSᵀ·Q.
pub fn backward(
    s: Shape,
    (q, k, v): (&[f32], &[f32], &[f32]),
    probs: &[f32],
    grad: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (m, t, w) = (s.matrix(), s.tokens, s.width);
    let mut dq = vec![0.0; s.pairs * m];
    let mut dk = vec![0.0; s.pairs * m];
    let mut dv = vec![0.0; s.pairs * m];
    dq.par_chunks_mut(m.max(1))
        .zip(dk.par_chunks_mut(m.max(1)))
        .zip(dv.par_chunks_mut(m.max(1)))
        .enumerate()
        .for_each_init(
            || vec![0.0; s.scores()],
            |ds, (pair, ((dq, dk), dv))| {
                let [q, k, v, dout] = [q, k, v, grad].map(|x| &x[pair * m..][..m]);
                let p = &probs[pair * s.scores()..][..s.scores()];
                let rows = |x| View::rows(x, w);
                matmul(dv, View::rows(p, t).t(), rows(dout), (t, t, w), false, false);
                matmul(ds, rows(dout), rows(v).t(), (t, w, t), false, false);
                for (ds, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
                    let dot: f32 = ds.iter().zip(p).map(|(d, p)| d * p).sum();
                    ds.iter_mut()
                        .zip(p)
                        .for_each(|(d, &p)| *d = scale * (p * (*d - dot)));
                }
                matmul(dq, View::rows(ds, t), rows(k), (t, t, w), false, false);
                matmul(dk, View::rows(ds, t).t(), rows(q), (t, t, w), false, false);
            },
        );
    (dq, dk, dv)
}

/// One row of scores → softmax(scale · row), in place: shifted by its largest value, as burn
/// and PyTorch compute it.
fn softmax(row: &mut [f32], scale: f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // Three loops, so that the first and the last vectorise (the sum's order is kept).
    row.iter_mut().for_each(|x| *x = exp(scale * (*x - max)));
    let sum: f32 = row.iter().sum();
    let inverse = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inverse);
}

/// eˣ for x ≤ 0 (softmax's shifted scores) within 2 ulp, branch-free so that a loop of it
/// vectorises: x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by a degree-7 polynomial (Cephes'
/// expf coefficients), 2ⁿ from the exponent bits. Below −87.3, where eˣ leaves f32's normal
/// numbers, it gives e^−87.3 (1.2·10⁻³⁸).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n·ln 2 is subtracted exactly.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.3);
    // Rounded to the nearest integer by adding and taking away 1.5·2²³ (|x·log₂e| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    // 2ⁿ for n in [−126, 0]: its exponent field.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * two_n
}
