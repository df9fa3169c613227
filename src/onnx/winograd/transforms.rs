//! The input and output transforms of Winograd F(2×2, 3×3) as tract operations. Both are
//! memory-bound passes; how they are laid out was measured (docs/PERFORMANCE.md).

use std::ops::Range;

use rayon::prelude::*;
use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::{Geometry, HALF, TILE};

/// [n, c, h, w] → V [16, c, n·tiles], as two halves [8, c, n·tiles]: each 4×4 input tile
/// (stride 2, zero outside the image) as Bᵀ·d·B.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct InputTransform(pub(super) Geometry);

impl Op for InputTransform {
    fn name(&self) -> StaticName {
        "WinogradInput".into()
    }
    op_as_typed_op!();
}

impl TypedOp for InputTransform {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.0;
        ensure!(inputs[0].shape.as_concrete() == Some(&[g.n, g.c, g.h, g.w][..]));
        let half = f32::fact([HALF, g.c, g.n * g.tiles()]);
        Ok(tvec!(half.clone(), half))
    }
}

impl EvalOp for InputTransform {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.0;
        let x = plain(&inputs[0])?;
        let columns = g.n * g.tiles();
        // V in two halves by tile position (e < 8, e ≥ 8), for the two halves of the products.
        // Every value is written below.
        let mut low = unsafe { Tensor::uninitialized::<f32>(&[HALF, g.c, columns])? };
        let mut high = unsafe { Tensor::uninitialized::<f32>(&[HALF, g.c, columns])? };
        // Channels in groups, side by side on rayon's threads; each group gets its share of
        // V's 16 rows (rows[e] covers the group's channels).
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
            transform_input_channels(g, x, channels, &mut rows);
        };
        if parallel {
            groups.into_par_iter().enumerate().for_each(run);
        } else {
            groups.into_iter().enumerate().for_each(run);
        }
        Ok(tvec!(low.into_tvalue(), high.into_tvalue()))
    }
}

/// Bᵀ·d·B of every tile of `channels` (all images); `rows[e]` is V's row e for those channels.
fn transform_input_channels(
    g: Geometry,
    x: &[f32],
    channels: Range<usize>,
    rows: &mut [&mut [f32]],
) {
    let (tiles_h, tiles_w, tiles) = (g.tiles_h(), g.tiles_w(), g.tiles());
    let columns = g.n * tiles;
    // The plane with its zero border, so that tiles read without bounds checks. The border is
    // never written: it stays zero from plane to plane.
    let (ph, pw) = (2 * tiles_h + 2, 2 * tiles_w + 2);
    let mut padded = vec![0f32; ph * pw];
    // Large planes: a channel's 16 rows of V go to a scratch first and are copied out as runs.
    // Writing V's rows directly is 4× slower where they lie a multiple of 4 KiB apart (64
    // channels × 28² tiles): every store then competes for the same L1 sets; the scratch rows
    // are spaced off that. Small planes (14², 49 tiles) write directly: there the 16 short
    // copies per channel cost more than they save (measured).
    let buffered = tiles >= 64;
    let stride = tiles + 16;
    let mut scratch = vec![0f32; if buffered { TILE * stride } else { 0 }];
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
                padded[at..at + len].copy_from_slice(&row[..len]);
            }
            let offset = (c - first) * columns + n * tiles;
            for i in 0..tiles_h {
                for j in 0..tiles_w {
                    let at = |r: usize, s: usize| padded[(2 * i + r) * pw + 2 * j + s];
                    // Bᵀ·d: rows d0 − d2, d1 + d2, d2 − d1, d1 − d3.
                    let mut t = [[0f32; 4]; 4];
                    #[allow(clippy::needless_range_loop)] // s: the tile's column, as written
                    for s in 0..4 {
                        let (d0, d1, d2, d3) = (at(0, s), at(1, s), at(2, s), at(3, s));
                        t[0][s] = d0 - d2;
                        t[1][s] = d1 + d2;
                        t[2][s] = d2 - d1;
                        t[3][s] = d1 - d3;
                    }
                    // (Bᵀ·d)·B, value by value.
                    let tile = i * tiles_w + j;
                    for (r, [a, b, d, e]) in t.into_iter().enumerate() {
                        for (s, value) in [a - d, b + d, d - b, b - e].into_iter().enumerate() {
                            let position = 4 * r + s;
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

/// M [16, o, n·tiles] as two halves [8, o, n·tiles], and the bias [o] → [n, o, out_h, out_w]:
/// each tile as Aᵀ·m·A + bias.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(super) struct OutputTransform(pub(super) Geometry);

impl Op for OutputTransform {
    fn name(&self) -> StaticName {
        "WinogradOutput".into()
    }
    op_as_typed_op!();
}

impl TypedOp for OutputTransform {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.0;
        for half in &inputs[..2] {
            ensure!(half.shape.as_concrete() == Some(&[HALF, g.o, g.n * g.tiles()][..]));
        }
        Ok(tvec!(f32::fact([g.n, g.o, g.out_h, g.out_w])))
    }
}

impl EvalOp for OutputTransform {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.0;
        let m = [plain(&inputs[0])?, plain(&inputs[1])?];
        let bias = plain(&inputs[2])?;
        let tiles = g.tiles();
        // Every value is written below.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[g.n, g.o, g.out_h, g.out_w])? };
        let out = plain_mut(&mut y)?;
        // One output plane per (image, channel), side by side on rayon's threads when the
        // image may use them.
        let plane = g.out_h * g.out_w;
        let scratch = || (vec![0f32; 8 * tiles], vec![0f32; 4 * tiles]);
        let run = |(t, corners): &mut (Vec<f32>, Vec<f32>), (k, y): (usize, &mut [f32])| {
            transform_output_plane(g, m, bias, k, y, t, corners)
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

/// Output plane `k` (image k / o, channel k % o): Aᵀ·m (2 rows × 4 columns) and then the
/// tiles' 4 outputs as runs over the tiles, then into place. `t` and `corners`: scratch.
fn transform_output_plane(
    g: Geometry,
    m: [&[f32]; 2],
    bias: &[f32],
    k: usize,
    plane: &mut [f32],
    t: &mut [f32],
    corners: &mut [f32],
) {
    let (tiles_w, tiles) = (g.tiles_w(), g.tiles());
    let columns = g.n * tiles;
    let (image, o) = (k / g.o, k % g.o);
    let m = |e: usize| &m[e / HALF][(e % HALF * g.o + o) * columns + image * tiles..][..tiles];
    // Aᵀ on the rows: m0 + m1 + m2 and m1 − m2 − m3.
    for s in 0..4 {
        let (m0, m1, m2, m3) = (m(s), m(4 + s), m(8 + s), m(12 + s));
        let (top, bottom) = t.split_at_mut(4 * tiles);
        combine3(&mut top[s * tiles..][..tiles], m0, m1, m2, |a, b, c| {
            a + b + c
        });
        combine3(&mut bottom[s * tiles..][..tiles], m1, m2, m3, |a, b, c| {
            a - b - c
        });
    }
    // A on the columns, plus the bias: each tile's top-left, top-right, bottom-left and
    // bottom-right output.
    let b = bias[o];
    for (r, corner) in corners.chunks_mut(2 * tiles).enumerate() {
        let t = |s: usize| &t[(4 * r + s) * tiles..][..tiles];
        let (left, right) = corner.split_at_mut(tiles);
        combine3(left, t(0), t(1), t(2), |a, c, d| a + c + d + b);
        combine3(right, t(1), t(2), t(3), |a, c, d| a - c - d + b);
    }
    for (y, row) in plane.chunks_mut(g.out_w).enumerate() {
        let (i, r) = (y / 2, y % 2);
        let left = &corners[2 * r * tiles + i * tiles_w..][..tiles_w];
        let right = &corners[(2 * r + 1) * tiles + i * tiles_w..][..tiles_w];
        for (x, value) in row.iter_mut().enumerate() {
            *value = if x % 2 == 0 {
                left[x / 2]
            } else {
                right[x / 2]
            };
        }
    }
}

/// Whether this image may spread over rayon's threads: the runner (src/onnx/run.rs) says so
/// through tract's executor when one image is alone; a batch already runs an image per thread.
pub(super) fn spread_over_threads() -> bool {
    !matches!(current_tract_executor(), Executor::SingleThread)
}

/// `out[k] = f(a[k], b[k], c[k])`: one pass the compiler vectorises.
#[inline(always)]
fn combine3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    let n = out.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    for k in 0..n {
        out[k] = f(a[k], b[k], c[k]);
    }
}

pub(super) fn plain(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

fn plain_mut(t: &mut Tensor) -> TractResult<&mut [f32]> {
    t.to_plain_array_view_mut::<f32>()?
        .into_slice()
        .context("not contiguous")
}
