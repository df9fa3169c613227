//! Winograd F(2×2, 3×3) and F(4×4, 3×3) for the 3×3 stride-1 convolutions of an embedder run
//! by tract.
//!
//! Convolutions are 95 % of an r100 image in tract, and tract computes them as im2col matrix
//! products. Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2015; what cuDNN, NNPACK and oneDNN offer) computes each m×m output tile
//! from an α×α input tile (α = m + 2) with α² multiplications per input channel instead of
//! 9m²: 16 instead of 36 for F(2×2), 36 instead of 144 for F(4×4). The input tiles and the
//! kernels are transformed, multiplied as α² independent matrix products (our AVX2 kernel,
//! kernel.rs, else tract's own through `EinSum`s: products.rs), and the products transformed
//! back. The arithmetic is exact
//! in real numbers; in f32 it differs from im2col by rounding: little for F(2×2), whose
//! transforms' coefficients are 0, ±1 and ±½, more for F(4×4) (coefficients up to 8; its
//! kernel transform divides by 6 and 24), which the tests bound against a direct f64
//! convolution, onnxruntime and burn.
//!
//! The rewrite runs on tract's typed graph, before its optimiser, and replaces only the
//! convolutions where it pays on a CPU, with the tile size that pays (measured; `tile_edge`).
//! tract does not have it.

#[cfg(target_arch = "x86_64")]
mod kernel;
mod products;
#[cfg(test)]
mod tests;
mod transforms;

use anyhow::Result;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use products::Products;
use transforms::{InputTransform, OutputTransform};

/// How many convolutions a rewrite replaced, by tile size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// By F(2×2, 3×3).
    pub f2x2: usize,
    /// By F(4×4, 3×3).
    pub f4x4: usize,
    /// Per-channel affines (BatchNorms) before them, taken into their input transforms.
    pub affines_fused: usize,
    /// PReLUs after them, taken into their output transforms.
    pub prelus_fused: usize,
}

impl Rewritten {
    pub fn total(&self) -> usize {
        self.f2x2 + self.f4x4
    }
}

/// Replaces every convolution of `model` where Winograd pays.
pub fn rewrite(model: &mut TypedModel) -> Result<Rewritten> {
    rewrite_by(model, tile_edge)
}

/// Replaces every 3×3 stride-1 convolution for which `choose` gives a tile edge (2 or 4).
fn rewrite_by(model: &mut TypedModel, choose: fn(&Geometry) -> Option<usize>) -> Result<Rewritten> {
    let candidates: Vec<(usize, Plan)> = model
        .nodes()
        .iter()
        .filter_map(|node| plan_for(model, node, choose).map(|plan| (node.id, plan)))
        .collect();
    let mut rewritten = Rewritten::default();
    for (id, plan) in &candidates {
        let fused = replace(model, *id, plan).map_err(|e| {
            anyhow::anyhow!("Winograd rewrite of `{}`: {e:#}", model.node(*id).name)
        })?;
        match plan.geometry.m {
            2 => rewritten.f2x2 += 1,
            _ => rewritten.f4x4 += 1,
        }
        rewritten.affines_fused += fused.affine as usize;
        rewritten.prelus_fused += fused.prelu as usize;
    }
    Ok(rewritten)
}

/// What replacing one convolution takes.
#[derive(Debug, Clone)]
struct Plan {
    geometry: Geometry,
    /// OIHW kernel, row-major.
    kernel: Vec<f32>,
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
    /// Output tile edge: F(2×2,3×3) or F(4×4,3×3).
    pub(super) m: usize,
}

impl Geometry {
    /// Input tile edge.
    pub(super) fn alpha(&self) -> usize {
        self.m + 2
    }
    /// Positions in a transformed tile, one matrix product each.
    pub(super) fn positions(&self) -> usize {
        self.alpha() * self.alpha()
    }
    /// Positions per half of the products (src/tract/winograd/products.rs).
    pub(super) fn half(&self) -> usize {
        self.positions() / 2
    }
    pub(super) fn tiles_h(&self) -> usize {
        self.out_h.div_ceil(self.m)
    }
    pub(super) fn tiles_w(&self) -> usize {
        self.out_w.div_ceil(self.m)
    }
    /// Output tiles of one image.
    pub(super) fn tiles(&self) -> usize {
        self.tiles_h() * self.tiles_w()
    }
}

/// The output tile edge for a convolution where Winograd pays on a CPU, or None. Measured
/// with tract 0.23.9 on a 2-core Zen 4, one image, r100's shapes (docs/HISTORY.md):
/// F(4×4) beats F(2×2) from 28×28 outputs up (7×7 tiles and more: 28² 128→128 2.08 → 1.60 ms,
/// 112² 64→64 13.2 → 8.6), and loses at 14×14, where its 4×4 tiles cover 16×16 outputs
/// (31 % wasted) and its products are too narrow (1.46 → 1.82 ms). F(2×2) beats im2col down
/// to 6×6 tiles; below (r100's 7×7 stage: 16 tiles) the transformed kernels, 16/9 the size of
/// the plain ones, are streamed for too little work. With few channels the transforms dominate.
fn tile_edge(g: &Geometry) -> Option<usize> {
    if g.c < 16 || g.o < 16 {
        return None;
    }
    let tiles = |m| g.n * Geometry { m, ..*g }.tiles();
    if tiles(4) >= 49 {
        Some(4)
    } else if tiles(2) >= 36 {
        Some(2)
    } else {
        None
    }
}

fn plan_for(
    model: &TypedModel,
    node: &TypedNode,
    choose: fn(&Geometry) -> Option<usize>,
) -> Option<Plan> {
    let plain = crate::tract::fusion::plain_conv(model, node)?;
    let spec = &plain.conv.pool_spec;
    let fits = plain.conv.group == 1
        && spec.kernel_shape.as_slice() == [3, 3]
        && spec.strides().iter().all(|s| *s == 1);
    if !fits {
        return None;
    }
    let (shape, o, c) = (plain.input, spec.output_channels, spec.input_channels);
    let padding = spec.computed_padding(&shape[2..]);
    let mut geometry = Geometry {
        n: shape[0],
        c: shape[1],
        h: shape[2],
        w: shape[3],
        o,
        out_h: padding[0].convoluted,
        out_w: padding[1].convoluted,
        pad_top: padding[0].pad_before,
        pad_left: padding[1].pad_before,
        m: 2,
    };
    geometry.m = choose(&geometry)?;
    (geometry.c == c).then_some(Plan {
        geometry,
        kernel: plain.weights,
        bias: plain.bias,
    })
}

fn replace(model: &mut TypedModel, id: usize, plan: &Plan) -> TractResult<Fused> {
    // Matched on the model as it is now: earlier replacements may have rewired the nodes.
    let node = model.node(id).clone();
    let g = plan.geometry;
    let affine = crate::tract::fusion::affine_before(model, node.inputs[0], g.c);
    let prelu = crate::tract::fusion::prelu_after(model, OutletId::new(id, 0), g.o);
    let mut patch = TypedModelPatch::default();
    let mut input =
        vec![patch.tap_model(model, affine.as_ref().map_or(node.inputs[0], |a| a.source))?];
    if let Some(affine) = &affine {
        let name = &node.name;
        input.push(patch.add_const(format!("{name}.winograd_scale"), tensor1(&affine.scale))?);
        input.push(patch.add_const(format!("{name}.winograd_shift"), tensor1(&affine.shift))?);
    }
    let tiles = patch.wire_node(
        format!("{}.winograd_input", node.name),
        InputTransform {
            geometry: g,
            affine: affine.is_some(),
        },
        &input,
    )?;
    let products = patch.wire_node(
        format!("{}.winograd_products", node.name),
        Products::new(g, &transformed_kernel(&plan.kernel, g))?,
        &tiles,
    )?;
    let bias = patch.add_const(format!("{}.winograd_bias", node.name), tensor1(&plan.bias))?;
    let mut output = vec![products[0], products[1], bias];
    if let Some((_, slopes)) = &prelu {
        output.push(patch.add_const(format!("{}.winograd_slopes", node.name), tensor1(slopes))?);
    }
    let y = patch.wire_node(
        format!("{}.winograd_output", node.name),
        OutputTransform {
            geometry: g,
            prelu: prelu.is_some(),
        },
        &output,
    )?;
    // The convolution's output, or the PReLU's that it now computes.
    let replaced = prelu.as_ref().map_or(id, |(node, _)| *node);
    patch.shunt_outside(model, OutletId::new(replaced, 0), y[0])?;
    patch.apply(model)?;
    Ok(Fused {
        affine: affine.is_some(),
        prelu: prelu.is_some(),
    })
}

/// What one replacement took in from its neighbours (src/tract/fusion.rs).
struct Fused {
    affine: bool,
    prelu: bool,
}

/// Winograd's G for F(m×m, 3×3), α = m + 2 rows. F(2×2): interpolation points 0, ±1, ∞;
/// F(4×4): 0, ±1, ±2, ∞ (Lavin & Gray's matrices).
fn kernel_matrix(m: usize) -> &'static [[f64; 3]] {
    const F2: [[f64; 3]; 4] = [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ];
    const F4: [[f64; 3]; 6] = [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    if m == 2 { &F2 } else { &F4 }
}

/// U = G·g·Gᵀ for every (output, input) channel pair, as [α², o, c]; computed in f64 so that
/// each value rounds once.
fn transformed_kernel(k: &[f32], g: Geometry) -> Vec<f32> {
    let big_g = kernel_matrix(g.m);
    let alpha = g.alpha();
    let mut u = vec![0f32; g.positions() * g.o * g.c];
    for o in 0..g.o {
        for c in 0..g.c {
            let tap = |a: usize, b: usize| k[(o * g.c + c) * 9 + 3 * a + b] as f64;
            // G·g: α rows of 3.
            let gg: Vec<[f64; 3]> = big_g
                .iter()
                .map(|row| std::array::from_fn(|b| (0..3).map(|a| row[a] * tap(a, b)).sum()))
                .collect();
            // (G·g)·Gᵀ.
            for (r, gg_row) in gg.iter().enumerate() {
                for (s, g_row) in big_g.iter().enumerate() {
                    let v: f64 = (0..3).map(|b| gg_row[b] * g_row[b]).sum();
                    u[((alpha * r + s) * g.o + o) * g.c + c] = v as f32;
                }
            }
        }
    }
    u
}
