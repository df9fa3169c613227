//! Convolutions with a few input channels per group, computed directly: MobileFaceNet's
//! depthwise ones (3×3, and the 7×7 global one; one channel per group) and its second layer
//! (3×3, two channels per group), with the BatchNorm and the PReLU after each taken into its
//! last pass.
//!
//! tract ran the depthwise ones at a few GFLOP/s and the second layer as 64 matrix products of
//! two rows each after a padding pass: on a 2-core Zen 4, one mbf image on one core spent 3.4 ms
//! in that layer and its padding, and 2.4 ms in the depthwise ones (docs/HISTORY.md).
//!
//! Each input channel is copied once into zero-padded phase planes: for stride s, the s×s
//! planes of the padded image's pixels at rows ≡ q and columns ≡ p (mod s), so that every kernel
//! tap reads one plane at a fixed offset. Each output plane is then the sum over the taps of
//! weight × plane, as one run over the planes' rows laid end to end (the columns between rows
//! are computed and dropped), long enough to vectorise where the rows are 7 to 28 wide.
//!
//! The rewrite runs on tract's typed graph, before its optimiser, like the Winograd one.

use std::sync::Arc;

use anyhow::Result;
use rayon::prelude::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::eval::{plain, plain_mut, spread_over_threads, with_avx2_copy};
pub use super::fusion::Rewritten;
use super::fusion::{After, Epilogue, after, plain_conv};

/// Input channels per group up to which a convolution is computed here.
const MAX_PER_GROUP: usize = 4;

/// Replaces every grouped convolution of `model` with at most [`MAX_PER_GROUP`] input channels
/// per group (NCHW, f32, undilated, constant weights).
pub fn rewrite(model: &mut TypedModel) -> Result<Rewritten> {
    let candidates: Vec<_> = model
        .nodes()
        .iter()
        .filter_map(|node| plan_for(model, node).map(|plan| (node.id, plan)))
        .collect();
    let mut rewritten = Rewritten::default();
    for (id, plan) in candidates {
        let name = model.node(id).name.clone();
        let after = replace(model, id, plan)
            .map_err(|e| anyhow::anyhow!("grouped convolution `{name}`: {e:#}"))?;
        rewritten.convolutions += 1;
        rewritten.took(&after);
    }
    Ok(rewritten)
}

/// Shapes of one convolution: input [n, c, h, w] → output [n, o, out_h, out_w].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    groups: usize,
    kernel: (usize, usize),
    stride: (usize, usize),
    /// Zeros before the first row and column.
    pad: (usize, usize),
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn in_per_group(&self) -> usize {
        self.c / self.groups
    }
    fn out_per_group(&self) -> usize {
        self.o / self.groups
    }
    fn taps(&self) -> usize {
        self.kernel.0 * self.kernel.1
    }
    /// A phase plane's rows and columns: what the output's rows and columns read.
    fn phase_h(&self) -> usize {
        self.out_h + (self.kernel.0 - 1) / self.stride.0
    }
    fn phase_w(&self) -> usize {
        self.out_w + (self.kernel.1 - 1) / self.stride.1
    }
    fn phase_len(&self) -> usize {
        self.phase_h() * self.phase_w()
    }
    /// One input channel's phase planes, back to back.
    fn channel_len(&self) -> usize {
        self.stride.0 * self.stride.1 * self.phase_len()
    }
    /// The run each tap adds to an output plane: whole phase rows but the last, which stops at
    /// the output's width, so that no tap reads past its plane.
    fn run_len(&self) -> usize {
        (self.out_h - 1) * self.phase_w() + self.out_w
    }
}

fn plan_for(model: &TypedModel, node: &TypedNode) -> Option<(Geometry, Vec<f32>, Vec<f32>)> {
    let plain = plain_conv(model, node)?;
    let spec = &plain.conv.pool_spec;
    let (c, groups) = (spec.input_channels, plain.conv.group);
    if groups == 1 || c / groups > MAX_PER_GROUP {
        return None;
    }
    let [n, _, h, w] = plain.input;
    let padding = spec.computed_padding(&plain.input[2..]);
    let strides = spec.strides();
    let g = Geometry {
        n,
        c,
        h,
        w,
        o: spec.output_channels,
        groups,
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride: (strides[0], strides[1]),
        pad: (padding[0].pad_before, padding[1].pad_before),
        out_h: padding[0].convoluted,
        out_w: padding[1].convoluted,
    };
    (g.out_h > 0 && g.out_w > 0).then_some((g, plain.weights, plain.bias))
}

fn replace(
    model: &mut TypedModel,
    id: usize,
    (g, mut weights, bias): (Geometry, Vec<f32>, Vec<f32>),
) -> TractResult<After> {
    let node = model.node(id).clone();
    let after = after(model, id, g.o);
    let epilogue = after.fold(&mut weights, bias);
    let op = GroupedConv {
        geometry: g,
        weights: Arc::new(weights),
        epilogue,
    };
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, node.inputs[0])?;
    let y = patch.wire_node(format!("{}.grouped", node.name), op, &[input])?;
    patch.shunt_outside(model, OutletId::new(after.last, 0), y[0])?;
    patch.apply(model)?;
    Ok(after)
}

/// The convolution, then its epilogue (shift, PReLU) per output channel.
#[derive(Debug, Clone)]
pub struct GroupedConv {
    geometry: Geometry,
    /// [o, c / groups, kh, kw], row-major.
    weights: Arc<Vec<f32>>,
    epilogue: Epilogue,
}

// Equal when built by the same replacement (the weights are shared, not copied).
impl PartialEq for GroupedConv {
    fn eq(&self, other: &Self) -> bool {
        self.geometry == other.geometry
            && Arc::ptr_eq(&self.weights, &other.weights)
            && self.epilogue == other.epilogue
    }
}

impl Eq for GroupedConv {}

impl Op for GroupedConv {
    fn name(&self) -> StaticName {
        "GroupedConv".into()
    }
    op_as_typed_op!();
}

impl TypedOp for GroupedConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = self.geometry;
        ensure!(
            inputs[0].datum_type == f32::datum_type()
                && inputs[0].shape.as_concrete() == Some(&[g.n, g.c, g.h, g.w][..]),
            "GroupedConv: input {:?} {:?}, built for [{}, {}, {}, {}]",
            inputs[0].datum_type,
            inputs[0].shape,
            g.n,
            g.c,
            g.h,
            g.w
        );
        Ok(tvec!(f32::fact([g.n, g.o, g.out_h, g.out_w])))
    }
}

impl EvalOp for GroupedConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.geometry;
        let x = plain(&inputs[0])?;
        // Every value is written below.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&[g.n, g.o, g.out_h, g.out_w])? };
        let out = plain_mut(&mut y)?;
        let group_in = g.in_per_group() * g.h * g.w;
        let group_out = g.out_per_group() * g.out_h * g.out_w;
        // (image, group) pairs: their inputs and outputs.
        let pairs = x
            .chunks_exact(group_in)
            .zip(out.chunks_exact_mut(group_out));
        let run = |scratch: &mut Scratch, (k, (x, out)): (usize, (&[f32], &mut [f32]))| {
            let group = k % g.groups;
            let weights = &self.weights[group * g.out_per_group() * g.in_per_group() * g.taps()..];
            convolve_group(g, x, weights, out, scratch);
            let planes = out.chunks_exact_mut(g.out_h * g.out_w);
            for (o, plane) in planes.enumerate() {
                self.epilogue.apply(group * g.out_per_group() + o, plane);
            }
        };
        if spread_over_threads() {
            pairs
                .collect::<Vec<_>>()
                .into_par_iter()
                .enumerate()
                .for_each_init(|| Scratch::new(g), run);
        } else {
            let mut scratch = Scratch::new(g);
            pairs.enumerate().for_each(|pair| run(&mut scratch, pair));
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

/// A thread's working space: one group's phase planes, one output plane's sums, and where
/// each tap's run starts in the planes.
struct Scratch {
    planes: Vec<f32>,
    sums: Vec<f32>,
    offsets: Vec<usize>,
}

impl Scratch {
    fn new(g: Geometry) -> Scratch {
        let (sh, sw) = g.stride;
        let offsets = (0..g.in_per_group())
            .flat_map(|channel| {
                (0..g.taps()).map(move |tap| {
                    let (ky, kx) = (tap / g.kernel.1, tap % g.kernel.1);
                    let phase = (ky % sh) * sw + kx % sw;
                    channel * g.channel_len()
                        + phase * g.phase_len()
                        + (ky / sh) * g.phase_w()
                        + kx / sw
                })
            })
            .collect();
        Scratch {
            planes: vec![0.0; g.in_per_group() * g.channel_len()],
            sums: vec![0.0; g.run_len()],
            offsets,
        }
    }
}

with_avx2_copy!(fn convolve_group, convolve_group_avx2<>(
    g: Geometry,
    x: &[f32],
    weights: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) => convolve_group_here);

/// One group of one image: `x` its input channels, `weights` from its first output channel's,
/// `out` its output planes (before the epilogue).
#[inline(always)]
fn convolve_group_here(
    g: Geometry,
    x: &[f32],
    weights: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let Scratch {
        planes,
        sums,
        offsets,
    } = scratch;
    let pw = g.phase_w();
    for (channel, planes) in x
        .chunks_exact(g.h * g.w)
        .zip(planes.chunks_exact_mut(g.channel_len()))
    {
        fill_phase_planes(g, channel, planes);
    }
    let run = g.run_len();
    let per_out = offsets.len();
    for (plane, weights) in out
        .chunks_exact_mut(g.out_h * g.out_w)
        .zip(weights.chunks_exact(per_out))
    {
        // BLOCK sums at a time, kept in registers through every tap.
        let mut start = 0;
        while start + BLOCK <= run {
            let mut block = [0f32; BLOCK];
            for (&offset, &weight) in offsets.iter().zip(weights) {
                let source: &[f32; BLOCK] = planes[offset + start..][..BLOCK]
                    .try_into()
                    .expect("BLOCK values");
                for (sum, &v) in block.iter_mut().zip(source) {
                    *sum += weight * v;
                }
            }
            sums[start..start + BLOCK].copy_from_slice(&block);
            start += BLOCK;
        }
        let rest = &mut sums[start..run];
        rest.fill(0.0);
        for (&offset, &weight) in offsets.iter().zip(weights) {
            let source = &planes[offset + start..][..rest.len()];
            rest.iter_mut()
                .zip(source)
                .for_each(|(sum, &v)| *sum += weight * v);
        }
        for (row, sums) in plane.chunks_exact_mut(g.out_w).zip(sums.chunks(pw)) {
            row.copy_from_slice(&sums[..g.out_w]);
        }
    }
}

/// Sums computed together (eight AVX2 registers).
const BLOCK: usize = 64;

/// One input channel as its zero-padded phase planes: plane (q, p) holds the padded image's
/// pixels at rows q, q + sh, … and columns p, p + sw, ….
#[inline(always)]
fn fill_phase_planes(g: Geometry, channel: &[f32], planes: &mut [f32]) {
    let (sh, sw) = g.stride;
    let (ph, pw, len) = (g.phase_h(), g.phase_w(), g.phase_len());
    planes.fill(0.0);
    for (iy, row) in channel.chunks_exact(g.w).enumerate() {
        let y = iy + g.pad.0;
        let (q, r) = (y % sh, y / sh);
        if r >= ph {
            break;
        }
        for p in 0..sw {
            let plane = &mut planes[(q * sw + p) * len + r * pw..][..pw];
            // The padded row's columns p, p + sw, …: input columns ix0, ix0 + sw, … from the
            // plane's column j0 on.
            let ix0 = (p + sw - g.pad.1 % sw) % sw;
            let j0 = (ix0 + g.pad.1) / sw;
            if sw == 1 {
                let n = row.len().min(pw - j0.min(pw));
                plane[j0..j0 + n].copy_from_slice(&row[..n]);
            } else {
                for (j, &v) in (j0..pw).zip(row.iter().skip(ix0).step_by(sw)) {
                    plane[j] = v;
                }
            }
        }
    }
}
