//! The 1×1 stride-1 convolutions of an embedder run by tract, as one matrix product per image
//! with the BatchNorm and the PReLU after each taken in: on AVX2 + FMA our own product
//! (`pointwise_kernel.rs`: weights packed once, the epilogue applied on the registers), else
//! the `gemm` crate's (the one burn's CPU backend and our training kernels use) and a last pass.
//!
//! MobileFaceNet is mostly 1×1 convolutions (0.41 of its 0.44 GMAC), and tract computed them
//! at about half the rate `gemm` reaches on the same shapes, repacking each activation first.
//! On a 2-core Zen 4, one mbf image on both cores spent 12.3 ms of 18.2 in tract's matrix
//! products (the 31 1×1 convolutions, the stem and second layer, the FC layer), where `gemm`
//! computes the 31 in 5.9 ms (8.3 on one core; same shapes, timed apart). tract's BatchNorm
//! after each was one more pass over the activation, and its PReLU another (docs/HISTORY.md).
//! Our product then took the 31 from 5.1 to 4.7 ms (`bench infer --tract-ops`).
//!
//! The rewrite runs on tract's typed graph before its decluttering, which would make these
//! convolutions its own matrix products; what they take in is found after it ([`fuse`]).

#[cfg(target_arch = "x86_64")]
use std::ops::Range;
use std::sync::Arc;

use anyhow::Result;
use arcface_cpu_kernels::matmul::{View, matmul};
use rayon::prelude::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

#[cfg(target_arch = "x86_64")]
use super::eval::has_avx2;
use super::eval::{plain, plain_mut, spread_over_threads};
pub use super::fusion::Rewritten;
use super::fusion::{After, Epilogue, after, plain_conv};
use super::pointwise_kernel::pack_weights;
#[cfg(target_arch = "x86_64")]
use super::pointwise_kernel::{COLS, Output, ROWS, product};

/// Replaces every 1×1 stride-1 convolution of `model` (unpadded, ungrouped, NCHW, f32, with
/// constant weights). Run before tract's decluttering, which turns these convolutions into its
/// own matrix products; then [`fuse`] after it.
pub fn rewrite(model: &mut TypedModel) -> Result<()> {
    let candidates: Vec<(usize, PointwiseConv)> = model
        .nodes()
        .iter()
        .filter_map(|node| op_for(model, node).map(|op| (node.id, op)))
        .collect();
    for (id, op) in candidates {
        let node = model.node(id).clone();
        let replaced = TypedModelPatch::replace_single_op(model, &node, &node.inputs[..1], op)
            .and_then(|patch| patch.apply(model));
        replaced.map_err(|e| anyhow::anyhow!("pointwise rewrite of `{}`: {e:#}", node.name))?;
    }
    Ok(())
}

/// Takes into each pointwise convolution of a decluttered `model` the per-channel affine after
/// it (a BatchNorm, which decluttering has made a Mul and an Add) and the PReLU after that;
/// counts them and what they took in.
pub fn fuse(model: &mut TypedModel) -> Result<Rewritten> {
    let ids: Vec<usize> = model
        .nodes()
        .iter()
        .filter(|node| node.op_is::<PointwiseConv>())
        .map(|node| node.id)
        .collect();
    let mut rewritten = Rewritten {
        convolutions: ids.len(),
        ..Default::default()
    };
    for id in ids {
        let name = model.node(id).name.clone();
        let after = fuse_one(model, id)
            .map_err(|e| anyhow::anyhow!("pointwise fusion after `{name}`: {e:#}"))?;
        rewritten.took(&after);
    }
    Ok(rewritten)
}

/// Our operation for `node` when it is a convolution we compute.
fn op_for(model: &TypedModel, node: &TypedNode) -> Option<PointwiseConv> {
    let plain = plain_conv(model, node)?;
    let spec = &plain.conv.pool_spec;
    let [n, c, h, w] = plain.input;
    // Unpadded: the output plane is the input plane.
    let unpadded = spec
        .computed_padding(&plain.input[2..])
        .iter()
        .zip(&plain.input[2..])
        .all(|(p, d)| p.convoluted == *d);
    let pointwise = plain.conv.group == 1
        && spec.kernel_shape.as_slice() == [1, 1]
        && spec.strides().iter().all(|s| *s == 1)
        && unpadded;
    pointwise.then(|| {
        PointwiseConv::new(
            [n, c, spec.output_channels, h * w],
            plain.weights,
            Epilogue::bias(plain.bias),
        )
    })
}

/// Takes into convolution `id` what it can take after it; says what that was.
fn fuse_one(model: &mut TypedModel, id: usize) -> TractResult<After> {
    let node = model.node(id).clone();
    let conv = node
        .op_as::<PointwiseConv>()
        .context("not a pointwise convolution")?;
    let after = after(model, id, conv.o);
    if !after.takes_anything() {
        return Ok(after);
    }
    let mut weights = conv.weights.to_vec();
    let epilogue = after.fold(&mut weights, conv.epilogue.shift().to_vec());
    let op = PointwiseConv::new([conv.n, conv.c, conv.o, conv.pixels], weights, epilogue);
    let mut patch = TypedModelPatch::default();
    let input = patch.tap_model(model, node.inputs[0])?;
    let y = patch.wire_node(format!("{}.fused", node.name), op, &[input])?;
    patch.shunt_outside(model, OutletId::new(after.last, 0), y[0])?;
    patch.apply(model)?;
    Ok(after)
}

/// [n, c, h, w] → [n, o, h, w]: per image, `weights`·x, then the epilogue per output channel
/// (shift, PReLU).
#[derive(Debug, Clone)]
pub struct PointwiseConv {
    n: usize,
    c: usize,
    o: usize,
    pixels: usize,
    /// [o, c], row-major.
    weights: Arc<Vec<f32>>,
    /// The same, in tiles for our AVX2 product (`pointwise_kernel`).
    packed: Arc<Vec<f32>>,
    epilogue: Epilogue,
}

impl PointwiseConv {
    /// One image through our AVX2 product (`pointwise_kernel`), the epilogue taken on the
    /// registers. A lone image splits its pixels (tiles of 16) among the threads, each thread
    /// all output channels, where there are 4 tiles a thread or more; its output channels
    /// (tiles of 6) otherwise (the 7×7 planes). Each value is the same sum either way.
    #[cfg(target_arch = "x86_64")]
    fn ours(&self, out: &mut [f32], x: &[f32], threads: usize) {
        let tiles = self.pixels.div_ceil(COLS);
        let (output, shape) = (Output::new(out), (self.c, self.pixels));
        let packed = (self.packed.as_slice(), &self.epilogue);
        // SAFETY (each call): the CPU has AVX2 and FMA (the caller checked); the threads'
        // parts of `out` are disjoint, and `out` is borrowed mutably for all of them.
        let run = |rows: Range<usize>, pixel_tiles: Range<usize>| unsafe {
            product(output, packed, x, shape, rows, pixel_tiles)
        };
        if threads == 1 {
            run(0..self.o, 0..tiles);
        } else if tiles >= 4 * threads {
            let per = tiles.div_ceil(threads);
            (0..threads)
                .into_par_iter()
                .for_each(|k| run(0..self.o, k * per..((k + 1) * per).min(tiles)));
        } else {
            let per = self.o.div_ceil(ROWS).div_ceil(threads) * ROWS;
            (0..threads).into_par_iter().for_each(|k| {
                run(k * per..((k + 1) * per).min(self.o), 0..tiles);
            });
        }
    }

    /// One image through `gemm` (CPUs without AVX2), then the epilogue as a pass of its own. A
    /// lone image splits its output channels into one block per thread. `gemm`'s own threads,
    /// called from our pool's worker, did not help (mbf's 31 products: 8.3 ms on one core,
    /// 8.7 on two) where the blocks side by side took 5.9 ms.
    fn gemm(&self, out: &mut [f32], x: &[f32], threads: usize) {
        let rows = self.o.div_ceil(threads).next_multiple_of(16).min(self.o);
        let block = |(k, out): (usize, &mut [f32])| {
            let first = k * rows;
            let m = out.len() / self.pixels;
            matmul(
                out,
                View::rows(&self.weights[first * self.c..], self.c),
                View::rows(x, self.pixels),
                (m, self.c, self.pixels),
                false,
                false,
            );
            for (row, plane) in out.chunks_exact_mut(self.pixels).enumerate() {
                self.epilogue.apply(first + row, plane);
            }
        };
        if threads == 1 {
            block((0, out));
        } else {
            let blocks = out.par_chunks_mut(rows * self.pixels).enumerate();
            blocks.for_each(block);
        }
    }

    fn new([n, c, o, pixels]: [usize; 4], weights: Vec<f32>, epilogue: Epilogue) -> Self {
        let packed = pack_weights(&weights, o, c);
        Self {
            n,
            c,
            o,
            pixels,
            weights: Arc::new(weights),
            packed: Arc::new(packed),
            epilogue,
        }
    }
}

// Equal when built by the same replacement (the weights are shared, not copied).
impl PartialEq for PointwiseConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights) && self.epilogue == other.epilogue
    }
}

impl Eq for PointwiseConv {}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "PointwiseConv".into()
    }
    op_as_typed_op!();
}

impl TypedOp for PointwiseConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let shape = x
            .shape
            .as_concrete()
            .context("PointwiseConv: unknown input shape")?;
        ensure!(
            x.datum_type == f32::datum_type()
                && shape.len() == 4
                && shape[0] == self.n
                && shape[1] == self.c
                && shape[2] * shape[3] == self.pixels,
            "PointwiseConv: input {:?} {shape:?}, built for [{}, {}, {} pixels]",
            x.datum_type,
            self.n,
            self.c,
            self.pixels
        );
        Ok(tvec!(f32::fact([shape[0], self.o, shape[2], shape[3]])))
    }
}

impl EvalOp for PointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape: TVec<usize> = x.shape().into();
        let x = plain(x)?;
        let (image_in, image_out) = (self.c * self.pixels, self.o * self.pixels);
        // Every value is written by the products below.
        let mut y =
            unsafe { Tensor::uninitialized::<f32>(&[shape[0], self.o, shape[2], shape[3]])? };
        let out = plain_mut(&mut y)?;
        let threads = if spread_over_threads() {
            rayon::current_num_threads()
        } else {
            1
        };
        for (x, out) in x
            .chunks_exact(image_in)
            .zip(out.chunks_exact_mut(image_out))
        {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                self.ours(out, x, threads);
                continue;
            }
            self.gemm(out, x, threads);
        }
        Ok(tvec!(y.into_tvalue()))
    }
}
