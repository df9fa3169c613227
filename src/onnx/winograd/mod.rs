//! Winograd F(2×2, 3×3) for the 3×3 stride-1 convolutions of an embedder run by tract.
//!
//! Convolutions are 95 % of an r100 image in tract, and tract computes them as im2col matrix
//! products. Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2015; what cuDNN, NNPACK and oneDNN offer) computes each 2×2 output tile
//! from a 4×4 input tile with 16 multiplications per input channel instead of 36: the input
//! tiles and the kernels are transformed, multiplied as 16 independent matrix products (tract's
//! own kernels, through `EinSum`s: products.rs), and the products transformed back. The arithmetic is
//! exact in real numbers; in f32 it differs from im2col by rounding only (the transforms'
//! coefficients are 0, ±1 and ±½), which tests/onnx.rs bounds against onnxruntime and burn.
//!
//! The rewrite runs on tract's typed graph, before its optimiser, and replaces only the
//! convolutions where it pays on a CPU (measured; `pays_off`). tract does not have it.

mod products;
#[cfg(test)]
mod tests;
mod transforms;

use anyhow::Result;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_hir::internal::*;

use products::Products;
use transforms::{InputTransform, OutputTransform, plain};

/// Elements of a transformed tile (4×4).
const TILE: usize = 16;
/// Tile positions per half of the products (src/onnx/winograd/products.rs).
const HALF: usize = TILE / 2;

/// Replaces every eligible convolution of `model`; returns how many were replaced.
pub fn rewrite(model: &mut TypedModel) -> Result<usize> {
    let candidates: Vec<(usize, Plan)> = model
        .nodes()
        .iter()
        .filter_map(|node| plan_for(model, node).map(|plan| (node.id, plan)))
        .collect();
    for (id, plan) in &candidates {
        replace(model, *id, plan).map_err(|e| {
            anyhow::anyhow!("Winograd rewrite of `{}`: {e:#}", model.node(*id).name)
        })?;
    }
    Ok(candidates.len())
}

/// What replacing one convolution takes.
#[derive(Debug, Clone)]
struct Plan {
    geometry: Geometry,
    /// OIHW kernel.
    kernel: Arc<Tensor>,
    /// One bias per output channel (zeros without one).
    bias: Vec<f32>,
}

/// Shapes of one convolution: input [n, c, h, w] → output [n, o, out_h, out_w].
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) out_h: usize,
    pub(super) out_w: usize,
    pub(super) pad_top: usize,
    pub(super) pad_left: usize,
}

impl Geometry {
    pub(super) fn tiles_h(&self) -> usize {
        self.out_h.div_ceil(2)
    }
    pub(super) fn tiles_w(&self) -> usize {
        self.out_w.div_ceil(2)
    }
    /// Output tiles of one image.
    pub(super) fn tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }
}

/// When the 16 products beat one im2col product on a CPU. Measured with tract 0.23.9 on a
/// 2-core Zen 4 (docs/PERFORMANCE.md): Winograd cuts the products of r100's 14×14 stage from
/// 140 to 77 ms and of its 28×28 stage from 66 to 43. With few tiles (7×7 outputs: 16 tiles) the transformed kernels, 16/9 the size of the
/// plain ones, are streamed for too little work and it loses; with few channels the transforms
/// dominate.
fn pays_off(g: &Geometry) -> bool {
    g.c >= 16 && g.o >= 16 && g.n * g.tiles() >= 36
}

fn plan_for(model: &TypedModel, node: &TypedNode) -> Option<Plan> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    let plain = conv.q_params.is_none()
        && conv.group == 1
        && conv.kernel_fmt == KernelFormat::OIHW
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape.as_slice() == [3, 3]
        && spec.strides().iter().all(|s| *s == 1)
        && spec.dilations().iter().all(|d| *d == 1)
        && node.inputs.len() == 3;
    if !plain {
        return None;
    }
    let input = model.outlet_fact(node.inputs[0]).ok()?;
    let shape = input.shape.as_concrete()?;
    if input.datum_type != f32::datum_type() || shape.len() != 4 {
        return None;
    }
    let kernel = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    let bias = model.outlet_fact(node.inputs[2]).ok()?.konst.clone()?;
    let (o, c) = (spec.output_channels, spec.input_channels);
    if kernel.datum_type() != f32::datum_type() || kernel.shape() != [o, c, 3, 3] {
        return None;
    }
    let bias: Vec<f32> = bias
        .cast_to::<f32>()
        .ok()?
        .to_plain_array_view::<f32>()
        .ok()?
        .iter()
        .copied()
        .collect();
    let bias = match bias.len() {
        1 => vec![bias[0]; o],
        len if len == o => bias,
        _ => return None,
    };
    let padding = spec.computed_padding(&shape[2..]);
    let geometry = Geometry {
        n: shape[0],
        c: shape[1],
        h: shape[2],
        w: shape[3],
        o,
        out_h: padding[0].convoluted,
        out_w: padding[1].convoluted,
        pad_top: padding[0].pad_before,
        pad_left: padding[1].pad_before,
    };
    (geometry.c == c && pays_off(&geometry)).then_some(Plan {
        geometry,
        kernel,
        bias,
    })
}

fn replace(model: &mut TypedModel, id: usize, plan: &Plan) -> TractResult<()> {
    let node = model.node(id).clone();
    let g = plan.geometry;
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, node.inputs[0])?;
    let tiles = patch.wire_node(
        format!("{}.winograd_input", node.name),
        InputTransform(g),
        &[x],
    )?;
    let products = patch.wire_node(
        format!("{}.winograd_products", node.name),
        Products::new(g, transformed_kernel(&plan.kernel, g)?)?,
        &tiles,
    )?;
    let bias = patch.add_const(format!("{}.winograd_bias", node.name), tensor1(&plan.bias))?;
    let y = patch.wire_node(
        format!("{}.winograd_output", node.name),
        OutputTransform(g),
        &[products[0], products[1], bias],
    )?;
    patch.shunt_outside(model, OutletId::new(id, 0), y[0])?;
    patch.apply(model)
}

/// U = G·g·Gᵀ for every (output, input) channel pair, as [16, o, c] in two halves [8, o, c];
/// computed in f64 so that the halves and sums of the kernel round once.
fn transformed_kernel(kernel: &Tensor, g: Geometry) -> TractResult<[Tensor; 2]> {
    let k = plain(kernel)?;
    let mut u = vec![0f32; TILE * g.o * g.c];
    for o in 0..g.o {
        for c in 0..g.c {
            let base = (o * g.c + c) * 9;
            let tap = |r: usize, s: usize| k[base + 3 * r + s] as f64;
            // G·g: 4 rows of 3.
            let mut gg = [[0f64; 3]; 4];
            #[allow(clippy::needless_range_loop)] // s: the kernel's column, as written
            for s in 0..3 {
                let (a, b, d) = (tap(0, s), tap(1, s), tap(2, s));
                gg[0][s] = a;
                gg[1][s] = (a + b + d) / 2.0;
                gg[2][s] = (a - b + d) / 2.0;
                gg[3][s] = d;
            }
            // (G·g)·Gᵀ: 4 columns per row.
            for (r, row) in gg.iter().enumerate() {
                let [a, b, d] = *row;
                let cols = [a, (a + b + d) / 2.0, (a - b + d) / 2.0, d];
                for (s, v) in cols.into_iter().enumerate() {
                    u[((4 * r + s) * g.o + o) * g.c + c] = v as f32;
                }
            }
        }
    }
    let (low, high) = u.split_at(HALF * g.o * g.c);
    Ok([
        Tensor::from_shape(&[HALF, g.o, g.c], low)?,
        Tensor::from_shape(&[HALF, g.o, g.c], high)?,
    ])
}
