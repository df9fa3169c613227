//! The input and output transforms of Winograd F(m×m, 3×3), m = 2 or 4, as tract operations.
//! Both are memory-bound passes; how they are laid out was measured (docs/HISTORY.md).

use std::ops::Range;

use rayon::prelude::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::Geometry;
use crate::tract::eval::{plain, plain_mut, spread_over_threads, with_avx2_copy};

/// [n, c, h, w] → V [α², c, n·tiles], as two halves [α²/2, c, n·tiles]: each α×α input tile
/// (stride m, zero outside the image) as Bᵀ·d·B. With `affine`, two more inputs, scale [c] and
/// shift [c]: the tiles are of x·scale + shift (src/tract/fusion.rs).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct InputTransform {
    pub(super) geometry: Geometry,
    pub(super) affine: bool,
}

impl Op for InputTransform {
    fn name(&self) -> StaticName {
        "WinogradInput".into()
    }
    op_as_typed_op!();
}

impl TypedOp for InputTransform {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.geometry;
        ensure!(inputs[0].shape.as_concrete() == Some(&[g.n, g.c, g.h, g.w][..]));
        ensure!(inputs.len() == if self.affine { 3 } else { 1 });
        for per_channel in &inputs[1..] {
            ensure!(per_channel.shape.as_concrete() == Some(&[g.c][..]));
        }
        let half = f32::fact([g.half(), g.c, g.n * g.tiles()]);
        Ok(tvec!(half.clone(), half))
    }
}

impl EvalOp for InputTransform {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.geometry;
        let x = plain(&inputs[0])?;
        let affine = if self.affine {
            Some((plain(&inputs[1])?, plain(&inputs[2])?))
        } else {
            None
        };
        let columns = g.n * g.tiles();
        // V in two halves by tile position, for the two halves of the products.
        // Every value is written below.
        let mut low = unsafe { Tensor::uninitialized::<f32>(&[g.half(), g.c, columns])? };
        let mut high = unsafe { Tensor::uninitialized::<f32>(&[g.half(), g.c, columns])? };
        // Channels in groups, side by side on rayon's threads; each group gets its share of
        // V's α² rows (rows[e] covers the group's channels).
        let block = g.c * columns;
        let parallel = spread_over_threads();
        let group = if parallel {
            g.c.div_ceil(2 * rayon::current_num_threads()).max(1)
        } else {
            g.c
        };
        let mut groups: Vec<Vec<&mut [f32]>> = (0..g.c.div_ceil(group)).map(|_| vec![]).collect();
        let e_blocks = plain_mut(&mut low)?
            .chunks_mut(block)
            .chain(plain_mut(&mut high)?.chunks_mut(block));
        for e_block in e_blocks {
            for (k, piece) in e_block.chunks_mut(group * columns).enumerate() {
                groups[k].push(piece);
            }
        }
        let run = |(k, mut rows): (usize, Vec<&mut [f32]>)| {
            let channels = k * group..((k + 1) * group).min(g.c);
            if g.m == 2 {
                input_channels(g, x, affine, channels, &mut rows, input_f2);
            } else {
                input_channels(g, x, affine, channels, &mut rows, input_f4);
            }
        };
        if parallel {
            groups.into_par_iter().enumerate().for_each(run);
        } else {
            groups.into_iter().enumerate().for_each(run);
        }
        Ok(tvec!(low.into_tvalue(), high.into_tvalue()))
    }
}

/// Bᵀ of F(2×2, 3×3) on one column (or row) of a tile.
#[inline(always)]
fn input_f2([d0, d1, d2, d3]: [f32; 4]) -> [f32; 4] {
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
}

/// Bᵀ of F(4×4, 3×3) on one column (or row) of a tile: rows 4 0 −5 0 1 0 | 0 −4 −4 1 1 0 |
/// 0 4 −4 −1 1 0 | 0 −2 −1 2 1 0 | 0 2 −1 −2 1 0 | 0 4 0 −5 0 1, with shared sums.
#[inline(always)]
fn input_f4([d0, d1, d2, d3, d4, d5]: [f32; 6]) -> [f32; 6] {
    let (s12, d12) = (d1 + d2, d1 - d2);
    let (s34, d43) = (d3 + d4, d4 - d3);
    let (p, q) = (d4 - d2, d3 - d1);
    [
        4.0 * d0 - 5.0 * d2 + d4,
        s34 - 4.0 * s12,
        d43 + 4.0 * d12,
        p + 2.0 * q,
        p - 2.0 * q,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

// The transforms are plain loops that LLVM vectorises, each in a baseline and an AVX2 copy
// (`with_avx2_copy!`, src/tract/eval.rs).

with_avx2_copy!(fn input_channels, input_channels_avx2<const A: usize>(
    g: Geometry,
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    channels: Range<usize>,
    rows: &mut [&mut [f32]],
    bt: impl Fn([f32; A]) -> [f32; A],
) => transform_input_channels);

/// Bᵀ·d·B of every tile of `channels` (all images) of x, or of x·scale + shift per channel;
/// `rows[e]` is V's row e for those channels; `bt`: Bᵀ on one column of A values.
#[inline(always)]
fn transform_input_channels<const A: usize>(
    g: Geometry,
    x: &[f32],
    affine: Option<(&[f32], &[f32])>,
    channels: Range<usize>,
    rows: &mut [&mut [f32]],
    bt: impl Fn([f32; A]) -> [f32; A],
) {
    debug_assert_eq!(A, g.alpha());
    let (tiles_h, tiles_w, tiles) = (g.tiles_h(), g.tiles_w(), g.tiles());
    let columns = g.n * tiles;
    // The plane with its zero border, so that tiles read without bounds checks. The border is
    // never written: it stays zero from plane to plane.
    let (ph, pw) = (g.m * tiles_h + 2, g.m * tiles_w + 2);
    let mut padded = vec![0f32; ph * pw];
    // Large planes: a channel's α² rows of V go to a scratch first and are copied out as runs.
    // Writing V's rows directly is 4× slower where they lie a multiple of 4 KiB apart (64
    // channels × 28² tiles): every store then competes for the same L1 sets; the scratch rows
    // are spaced off that. Small planes (14², 49 tiles) write directly: there the short
    // copies per channel cost more than they save (measured).
    let buffered = tiles >= 64;
    let stride = tiles + 16;
    let mut scratch = vec![0f32; if buffered { A * A * stride } else { 0 }];
    let mut vertical = vec![0f32; A * pw];
    let first = channels.start;
    for c in channels {
        for n in 0..g.n {
            let plane = &x[(n * g.c + c) * g.h * g.w..][..g.h * g.w];
            for (r, row) in plane
                .chunks(g.w)
                .enumerate()
                .take(ph.saturating_sub(g.pad_top))
            {
                let at = (r + g.pad_top) * pw + g.pad_left;
                let len = g.w.min(pw - g.pad_left);
                let (to, from) = (&mut padded[at..at + len], &row[..len]);
                match affine {
                    // The same two operations as the Mul and Add nodes it replaces.
                    Some((scale, shift)) => {
                        let (a, b) = (scale[c], shift[c]);
                        to.iter_mut().zip(from).for_each(|(y, x)| *y = x * a + b);
                    }
                    None => to.copy_from_slice(from),
                }
            }
            let offset = (c - first) * columns + n * tiles;
            for i in 0..tiles_h {
                // Bᵀ·d on the tile row's α image rows at once: runs along x, vectorised.
                let top = g.m * i * pw;
                let image_rows = std::array::from_fn(|r| &padded[top + r * pw..][..pw]);
                combine(runs(&mut vertical, pw), image_rows, &bt, 0.0);
                // (Bᵀ·d)·B, tile by tile along each of those rows. (Dealing each row out by
                // x mod m to run this along the tiles too measured slower: the runs are short.)
                for (r, row) in vertical.chunks_exact(pw).enumerate() {
                    for j in 0..tiles_w {
                        let tile = i * tiles_w + j;
                        let values = bt(std::array::from_fn(|s| row[g.m * j + s]));
                        for (s, value) in values.into_iter().enumerate() {
                            let position = A * r + s;
                            if buffered {
                                scratch[position * stride + tile] = value;
                            } else {
                                rows[position][offset + tile] = value;
                            }
                        }
                    }
                }
            }
            if buffered {
                for (e, run) in scratch.chunks(stride).enumerate() {
                    rows[e][offset..offset + tiles].copy_from_slice(&run[..tiles]);
                }
            }
        }
    }
}

/// M [α², o, n·tiles] as two halves [α²/2, o, n·tiles], and the bias [o] →
/// [n, o, out_h, out_w]: each tile as Aᵀ·m·A + bias. With `prelu`, one more input, slopes [o]:
/// then PReLU of that (src/tract/fusion.rs).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct OutputTransform {
    pub(super) geometry: Geometry,
    pub(super) prelu: bool,
}

impl Op for OutputTransform {
    fn name(&self) -> StaticName {
        "WinogradOutput".into()
    }
    op_as_typed_op!();
}

impl TypedOp for OutputTransform {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.geometry;
        ensure!(inputs.len() == if self.prelu { 4 } else { 3 });
        for per_channel in &inputs[2..] {
            ensure!(per_channel.shape.as_concrete() == Some(&[g.o][..]));
        }
        for half in &inputs[..2] {
            ensure!(half.shape.as_concrete() == Some(&[g.half(), g.o, g.n * g.tiles()][..]));
        }
        Ok(tvec!(f32::fact([g.n, g.o, g.out_h, g.out_w])))
    }
}

impl EvalOp for OutputTransform {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.geometry;
        let m = [plain(&inputs[0])?, plain(&inputs[1])?];
        let bias = plain(&inputs[2])?;
        let slopes = if self.prelu {
            Some(plain(&inputs[3])?)
        } else {
            None
        };
        let tiles = g.tiles();
        // Every value is written below.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[g.n, g.o, g.out_h, g.out_w])? };
        let out = plain_mut(&mut y)?;
        // One output plane per (image, channel), side by side on rayon's threads when the
        // image may use them.
        let plane = g.out_h * g.out_w;
        let (alpha, edge) = (g.alpha(), g.m);
        let scratch = || {
            (
                vec![0f32; edge * alpha * tiles],
                vec![0f32; edge * edge * tiles],
            )
        };
        let run = |(t, corners): &mut (Vec<f32>, Vec<f32>), (k, y): (usize, &mut [f32])| {
            let slope = slopes.map(|slopes| slopes[k % g.o]);
            if g.m == 2 {
                output_plane(g, m, bias, slope, k, y, t, corners, output_f2)
            } else {
                output_plane(g, m, bias, slope, k, y, t, corners, output_f4)
            }
        };
        if spread_over_threads() {
            out.par_chunks_mut(plane)
                .enumerate()
                .for_each_init(scratch, run);
        } else {
            let mut buffers = scratch();
            out.chunks_mut(plane)
                .enumerate()
                .for_each(|item| run(&mut buffers, item));
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

/// Aᵀ of F(2×2, 3×3) on one column (or row) of a product tile: rows 1 1 1 0 | 0 1 −1 −1.
#[inline(always)]
fn output_f2([m0, m1, m2, m3]: [f32; 4]) -> [f32; 2] {
    [m0 + m1 + m2, m1 - m2 - m3]
}

/// Aᵀ of F(4×4, 3×3): rows 1 1 1 1 1 0 | 0 1 −1 2 −2 0 | 0 1 1 4 4 0 | 0 1 −1 8 −8 1.
#[inline(always)]
fn output_f4([m0, m1, m2, m3, m4, m5]: [f32; 6]) -> [f32; 4] {
    let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [
        m0 + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m5,
    ]
}

with_avx2_copy!(fn output_plane, output_plane_avx2<const A: usize, const M: usize>(
    g: Geometry,
    m: [&[f32]; 2],
    bias: &[f32],
    slope: Option<f32>,
    k: usize,
    plane: &mut [f32],
    t: &mut [f32],
    corners: &mut [f32],
    at: impl Fn([f32; A]) -> [f32; M] + Copy,
) => transform_output_plane);

/// Output plane `k` (image k / o, channel k % o): Aᵀ·m (M rows × A columns per tile), then
/// ·A plus the bias (the tiles' M×M outputs), each as runs over the tiles, then into place,
/// through the PReLU of `slope` when there is one. `t` and `corners`: scratch; `at`: Aᵀ on one
/// column of A values.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn transform_output_plane<const A: usize, const M: usize>(
    g: Geometry,
    m: [&[f32]; 2],
    bias: &[f32],
    slope: Option<f32>,
    k: usize,
    plane: &mut [f32],
    t: &mut [f32],
    corners: &mut [f32],
    at: impl Fn([f32; A]) -> [f32; M] + Copy,
) {
    debug_assert_eq!((A, M), (g.alpha(), g.m));
    let (tiles_w, tiles) = (g.tiles_w(), g.tiles());
    let columns = g.n * tiles;
    let half = g.half();
    let (image, o) = (k / g.o, k % g.o);
    let m = |e: usize| &m[e / half][(e % half * g.o + o) * columns + image * tiles..][..tiles];
    // Aᵀ on the columns: t[s][r] from m[r'][s] (r' < A), for each column s.
    for (s, block) in t.chunks_mut(M * tiles).enumerate() {
        combine(
            runs(block, tiles),
            std::array::from_fn(|r| m(A * r + s)),
            at,
            0.0,
        );
    }
    // A on the rows, plus the bias: corners[r][q] from t[s][r] (s < A).
    let t = &*t;
    for (r, block) in corners.chunks_mut(M * tiles).enumerate() {
        let row = std::array::from_fn(|s| &t[(s * M + r) * tiles..][..tiles]);
        combine(runs(block, tiles), row, at, bias[o]);
    }
    for (y, row) in plane.chunks_mut(g.out_w).enumerate() {
        let (i, r) = (y / M, y % M);
        for (x, value) in row.iter_mut().enumerate() {
            *value = corners[(r * M + x % M) * tiles + i * tiles_w + x / M];
        }
        if let Some(a) = slope {
            // As src/tract/prelu.rs computes it.
            row.iter_mut()
                .for_each(|v| *v = if *v > 0.0 { *v } else { *v * a });
        }
    }
}

/// out[q][k] = f(inputs[·][k])[q] + add for k below the outputs' length: one pass the compiler
/// vectorises.
#[inline(always)]
fn combine<const A: usize, const M: usize>(
    outs: [&mut [f32]; M],
    inputs: [&[f32]; A],
    f: impl Fn([f32; A]) -> [f32; M],
    add: f32,
) {
    let n = outs[0].len();
    let inputs = inputs.map(|input| &input[..n]);
    let mut outs = outs.map(|out| &mut out[..n]);
    for k in 0..n {
        let values = f(inputs.map(|input| input[k]));
        for (out, value) in outs.iter_mut().zip(values) {
            out[k] = value + add;
        }
    }
}

/// `block` as M consecutive runs of `n`.
#[inline(always)]
fn runs<const M: usize>(block: &mut [f32], n: usize) -> [&mut [f32]; M] {
    let mut runs = block.chunks_exact_mut(n);
    std::array::from_fn(|_| runs.next().expect("M runs of n"))
}
