//! Scaled dot-product attention, softmax(s·Q·Kᵀ)·V, forward and backward, one image per task
//! on rayon's threads, head by head: the product, the softmax and the second product of each
//! (image, head) pair while its [T, T] matrix is in cache, reading q, k, v where the qkv
//! Linear wrote them (burn composes attention from a dozen whole-tensor operations), and exp as
//! a polynomial that vectorises ([`exp`]) where libm's is called value by value. Each pair's sums run in an order fixed by the shapes, so runs repeat bit for bit.
//!
//! A row's largest value and its sums are taken over [`LANES`] running values at once (one
//! chain of dependent additions a row was half the forward's attention time on vit_tiny: the
//! adds and the max's compare-and-move wait on each other); the softmax runs in an AVX2 copy
//! where the CPU has it (`with_avx2_copy!`: the same values, every sum's order fixed by `LANES`).

use crate::buffers::zeroed_by_tasks;
use crate::matmul::{View, matmul, matmul_strided};

/// Shapes: `images` × `tokens` rows of q, k and v for `heads` heads of `width` values each,
/// packed as the ViT's qkv Linear writes them: row (image, token) holds [3, heads, width]
/// (vit.py's reshape(B, N, 3, H, d/H)). The output rows hold [heads, width] (its
/// transpose(1, 2).reshape(B, N, C)), so no permuted copies are made either way.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub images: usize,
    pub heads: usize,
    pub tokens: usize,
    pub width: usize,
}

impl Shape {
    /// Values in a token's output row: heads × width.
    fn dim(&self) -> usize {
        self.heads * self.width
    }
    /// One image's qkv values.
    fn image_qkv(&self) -> usize {
        self.tokens * 3 * self.dim()
    }
    /// One image's output values.
    fn image_out(&self) -> usize {
        self.tokens * self.dim()
    }
    /// One image's probabilities, [heads, T, T].
    fn image_scores(&self) -> usize {
        self.heads * self.tokens * self.tokens
    }
    /// Where head `h`'s q (part 0), k (1) or v (2) starts in a packed row.
    fn column(&self, part: usize, h: usize) -> usize {
        (part * self.heads + h) * self.width
    }
    /// Head `h`'s q, k or v of one image's qkv rows.
    fn part<'a>(&self, qkv: &'a [f32], part: usize, h: usize) -> View<'a> {
        View {
            data: &qkv[self.column(part, h)..],
            row_stride: 3 * self.dim(),
            col_stride: 1,
        }
    }
}

/// (output [images, T, heads·width], probabilities [images, heads, T, T]) of packed qkv
/// [images, T, 3·heads·width]; images on rayon's threads.
pub fn forward(s: Shape, qkv: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let (t, w, d) = (s.tokens, s.width, s.dim());
    let lens = [s.image_out(), s.image_scores()].map(|len| s.images * len);
    let chunks = [s.image_out(), s.image_scores()].map(|len| len.max(1));
    let [out, probs] = zeroed_by_tasks(s.images, lens, chunks, |image, [out, probs]| {
        let qkv = &qkv[image * s.image_qkv()..][..s.image_qkv()];
        for (h, p) in probs.chunks_exact_mut(t * t).enumerate() {
            let (q, k, v) = (s.part(qkv, 0, h), s.part(qkv, 1, h), s.part(qkv, 2, h));
            matmul(p, q, k.t(), (t, w, t), false, false);
            softmax_rows(p, t, scale);
            let out = &mut out[h * w..];
            matmul_strided(out, d, View::rows(p, t), v, (t, t, w), false, false);
        }
    });
    (out, probs)
}

/// d(qkv), packed as qkv, for the output gradient `grad` [images, T, heads·width], from the
/// forward's probabilities P: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Σ_j dP·P), dQ = s·dS·K,
/// dK = s·dSᵀ·Q.
pub fn backward(s: Shape, qkv: &[f32], probs: &[f32], grad: &[f32], scale: f32) -> Vec<f32> {
    let (t, w, d) = (s.tokens, s.width, s.dim());
    let len = s.images * s.image_qkv();
    let [dqkv] = zeroed_by_tasks(s.images, [len], [s.image_qkv().max(1)], |image, [dqkv]| {
        let qkv = &qkv[image * s.image_qkv()..][..s.image_qkv()];
        let grad = &grad[image * s.image_out()..][..s.image_out()];
        let probs = &probs[image * s.image_scores()..][..s.image_scores()];
        let mut ds = vec![0.0; t * t];
        for (h, p) in probs.chunks_exact(t * t).enumerate() {
            let (q, k, v) = (s.part(qkv, 0, h), s.part(qkv, 1, h), s.part(qkv, 2, h));
            let dout = View {
                data: &grad[h * w..],
                row_stride: d,
                col_stride: 1,
            };
            let p = View::rows(p, t);
            // Head h's dQ, dK, dV: its columns of the packed rows, each [T, w].
            let into_part = |dst: &mut [f32], lhs: View, rhs: View| {
                matmul_strided(dst, 3 * d, lhs, rhs, (t, t, w), false, false)
            };
            into_part(&mut dqkv[s.column(2, h)..], p.t(), dout);
            matmul(&mut ds, dout, v.t(), (t, w, t), false, false);
            softmax_backward_rows(&mut ds, p.data, t, scale);
            let ds_rows = View::rows(&ds, t);
            into_part(&mut dqkv[s.column(0, h)..], ds_rows, k);
            into_part(&mut dqkv[s.column(1, h)..], ds_rows.t(), q);
        }
    });
    dqkv
}

/// Running values of a row's max and sums (two AVX2 registers).
const LANES: usize = 16;

with_avx2_copy!(
    /// Each row of `t` scores → softmax(scale · row), in place.
    pub fn softmax_rows(scores: &mut [f32], t: usize, scale: f32) = softmax_rows_baseline
);

/// The copy without AVX2 (public for the test that both copies agree bit for bit). Plain loops
/// in the hot paths: a closure would not be compiled into the AVX2 copy.
#[inline(always)]
pub fn softmax_rows_baseline(scores: &mut [f32], t: usize, scale: f32) {
    for row in scores.chunks_exact_mut(t) {
        // Shifted by the row's largest value, as burn and PyTorch compute it.
        let max = lanes_max(row);
        for x in row.iter_mut() {
            *x = exp(scale * (*x - max));
        }
        let inverse = 1.0 / lanes_sum(row, None);
        for x in row.iter_mut() {
            *x *= inverse;
        }
    }
}

with_avx2_copy!(
    /// dS = s · P ⊙ (dP − Σ_j dP·P) for each row of `t`, dP given in `ds` and replaced.
    fn softmax_backward_rows(ds: &mut [f32], p: &[f32], t: usize, scale: f32) = softmax_backward_rows_baseline
);

#[inline(always)]
fn softmax_backward_rows_baseline(ds: &mut [f32], p: &[f32], t: usize, scale: f32) {
    for (ds, p) in ds.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
        let dot = lanes_sum(ds, Some(p));
        for (d, &p) in ds.iter_mut().zip(p) {
            *d = scale * (p * (*d - dot));
        }
    }
}

/// The largest value of `row` (NaN left out, as `f32::max` does: a NaN then makes its exp NaN).
#[inline(always)]
fn lanes_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            // A select, which vectorises where `f32::max` does not.
            *m = if x > *m { x } else { *m };
        }
    }
    let max = halve(lanes, |a, b| if b > a { b } else { a });
    tail.iter().fold(max, |m, &x| m.max(x))
}

/// The lanes combined by halves (lane l with lane l + 8, then + 4, …): four steps where a
/// chain through the sixteen would take fifteen.
#[inline(always)]
fn halve(mut lanes: [f32; LANES], combine: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] = combine(lanes[l], lanes[l + width]);
        }
        width /= 2;
    }
    lanes[0]
}

/// Σ row (or Σ row ⊙ weights): lane l sums the values at l, l + LANES, …, then the lanes are
/// added by halves and the tail in order.
#[inline(always)]
fn lanes_sum(row: &[f32], weights: Option<&[f32]>) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    match weights {
        None => {
            for chunk in chunks {
                for (s, &x) in lanes.iter_mut().zip(chunk) {
                    *s += x;
                }
            }
            halve(lanes, |a, b| a + b) + tail.iter().sum::<f32>()
        }
        Some(weights) => {
            let weights = &weights[..row.len()];
            let weight_chunks = weights.chunks_exact(LANES);
            let weight_tail = weight_chunks.remainder();
            for (chunk, w) in chunks.zip(weight_chunks) {
                for ((s, &x), &w) in lanes.iter_mut().zip(chunk).zip(w) {
                    *s += x * w;
                }
            }
            let tail: f32 = tail.iter().zip(weight_tail).map(|(x, w)| x * w).sum();
            halve(lanes, |a, b| a + b) + tail
        }
    }
}

/// eˣ for x ≤ 0 (softmax's shifted scores) within 2 ulp, branch-free so that a loop of it
/// vectorises: x = n·ln 2 + r with |r| ≤ ln 2 / 2, eʳ by a degree-7 polynomial (Cephes'
/// expf coefficients), 2ⁿ from the exponent bits. Below −87.3, where eˣ leaves f32's normal
/// numbers, it gives e^−87.3 (1.2·10⁻³⁸); NaN gives NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n·ln 2 is subtracted exactly.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // A select, not `f32::max`, which would turn NaN into −87.3.
    let x = if x < -87.3 { -87.3 } else { x };
    // Rounded to the nearest integer by adding and taking away 1.5·2²³ (|x·log₂e| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    let rounded = x * LOG2_E + ROUND;
    let n = rounded - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    // 2ⁿ for n in [−126, 0]: its exponent field. n is also the difference of the bits of
    // `rounded` and ROUND (one binade, unit steps), integer arithmetic that vectorises where
    // `n as i32` (saturating, NaN to 0) runs value by value.
    let n_bits = rounded.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    er * two_n
}
