//! The 1×1 stride-1 convolutions of an embedder run by tract, as one matrix product per image
//! by the `gemm` crate (the one burn's CPU backend and our training kernels use), with the
//! BatchNorm and the PReLU after each taken into the product's last pass over its output.
//!
//! MobileFaceNet is mostly 1×1 convolutions (0.41 of its 0.44 GMAC), and tract computed them
//! at about half the rate `gemm` reaches on the same shapes, repacking each activation first.
//! On a 2-core Zen 4, one mbf image on both cores spent 12.3 ms of 18.2 in tract's matrix
//! products (the 31 1×1 convolutions, the stem and second layer, the FC layer), where `gemm`
//! computes the 31 in 5.9 ms (8.3 on one core; same shapes, timed apart). tract's BatchNorm
//! after each was one more pass over the activation, and its PReLU another (docs/HISTORY.md).
//!
//! The rewrite runs on tract's typed graph before its decluttering, which would make these
//! convolutions its own matrix products; what they take in is found after it ([`fuse`]).

use std::sync::Arc;

use anyhow::Result;
use arcface_cpu_kernels::matmul::{View, matmul};
use rayon::prelude::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::eval::{plain, plain_mut, spread_over_threads};
pub use super::fusion::Rewritten;
use super::fusion::{After, Epilogue, after, plain_conv};

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
    pointwise.then(|| PointwiseConv {
        n,
        c,
        o: spec.output_channels,
        pixels: h * w,
        weights: Arc::new(plain.weights),
        epilogue: Epilogue::bias(plain.bias),
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
    let op = PointwiseConv {
        weights: Arc::new(weights),
        epilogue,
        ..conv.clone()
    };
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
    epilogue: Epilogue,
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
        // A lone image splits its output channels into one block per thread, each block's product
        // and last pass on one thread. `gemm`'s own threads, called from our pool's worker, did
        // not help (mbf's 31 products: 8.3 ms on one core, 8.7 on two) where the blocks side by
        // side take 5.9 ms (timed apart). Each output value is the same sum either way.
        let blocks = if spread_over_threads() {
            rayon::current_num_threads()
        } else {
            1
        };
        let rows = self.o.div_ceil(blocks).next_multiple_of(16).min(self.o);
        for (x, out) in x
            .chunks_exact(image_in)
            .zip(out.chunks_exact_mut(image_out))
        {
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
            if blocks > 1 {
                out.par_chunks_mut(rows * self.pixels)
                    .enumerate()
                    .for_each(block);
            } else {
                block((0, out));
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}
