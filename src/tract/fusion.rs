//! What our convolution rewrites read from tract's typed graph: the convolutions they can take
//! ([`plain_conv`]), and the nodes around one that they take into their own passes, so that
//! those nodes' full passes over the activations go. A Winograd convolution
//! (src/tract/winograd/) applies the per-channel affine before it (each LResNet-E-IR unit opens
//! with a BatchNorm, which tract turns into a Mul and an Add) as its input transform copies the
//! image into its padded plane, and the PReLU after it as its output transform writes the
//! result: the same operations in the same order as the nodes they replace, so the values are
//! unchanged bit for bit. A pointwise convolution (src/tract/pointwise.rs) takes the affine
//! after it (MobileFaceNet's BatchNorm after each convolution) and the PReLU after that.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::tract::eval::with_avx2_copy;
use crate::tract::prelu::PRelu;

/// A 2-D f32 convolution as tract types an ONNX Conv, in the form our rewrites take: NCHW,
/// unquantised, undilated, with a concrete input shape and constant OIHW weights and bias.
pub(crate) struct PlainConv<'a> {
    pub(crate) conv: &'a Conv,
    /// [n, c, h, w].
    pub(crate) input: [usize; 4],
    /// [o, c / group, kh, kw], row-major.
    pub(crate) weights: Vec<f32>,
    /// One per output channel.
    pub(crate) bias: Vec<f32>,
}

pub(crate) fn plain_conv<'a>(model: &TypedModel, node: &'a TypedNode) -> Option<PlainConv<'a>> {
    let conv = node.op_as::<Conv>()?;
    let spec = &conv.pool_spec;
    let plain = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && spec.data_format == DataFormat::NCHW
        && spec.kernel_shape.len() == 2
        && spec.dilations().iter().all(|d| *d == 1)
        && node.inputs.len() == 3;
    if !plain {
        return None;
    }
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    let input: [usize; 4] = x.shape.as_concrete()?.try_into().ok()?;
    let (c, o, group) = (spec.input_channels, spec.output_channels, conv.group);
    if x.datum_type != f32::datum_type() || input[1] != c || c % group != 0 || o % group != 0 {
        return None;
    }
    let kernel = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    let shape = [o, c / group, spec.kernel_shape[0], spec.kernel_shape[1]];
    if kernel.datum_type() != f32::datum_type() || kernel.shape() != shape {
        return None;
    }
    let weights = kernel
        .try_as_plain_ram()
        .ok()?
        .as_slice::<f32>()
        .ok()?
        .to_vec();
    let bias = constant_bias(model, node.inputs[2], o)?;
    Some(PlainConv {
        conv,
        input,
        weights,
        bias,
    })
}

/// How many convolutions a rewrite replaced, and what they took in from the nodes after them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub convolutions: usize,
    /// Per-channel affines (BatchNorms) after them, in their weights and shifts.
    pub affines_fused: usize,
    /// PReLUs after those, in their last pass.
    pub prelus_fused: usize,
}

impl Rewritten {
    /// Counts what one convolution took in.
    pub(crate) fn took(&mut self, after: &After) {
        self.affines_fused += after.affine.is_some() as usize;
        self.prelus_fused += after.slopes.is_some() as usize;
    }
}

/// x·scale + shift per channel, read from `source`.
pub(crate) struct Affine {
    pub(crate) source: OutletId,
    pub(crate) scale: Vec<f32>,
    pub(crate) shift: Vec<f32>,
}

/// The affine that feeds `input` and nothing else: an Add of a per-channel constant, a Mul by
/// one, or a Mul followed by an Add (a BatchNorm), each node read by the next one only.
pub(crate) fn affine_before(
    model: &TypedModel,
    input: OutletId,
    channels: usize,
) -> Option<Affine> {
    let mut affine = Affine {
        source: input,
        scale: vec![1.0; channels],
        shift: vec![0.0; channels],
    };
    if let Some((x, shift)) = sole_input_bin_op(model, affine.source, "Add", channels) {
        affine.source = x;
        affine.shift = shift;
    }
    if let Some((x, scale)) = sole_input_bin_op(model, affine.source, "Mul", channels) {
        affine.source = x;
        affine.scale = scale;
    }
    (affine.source != input).then_some(affine)
}

/// The per-channel affine that reads `output` and is its only reader: a Mul by a per-channel
/// constant, an Add of one, or a Mul then an Add (a BatchNorm after a convolution), each node
/// the only reader of the one before. The last node of it, and its values.
pub(crate) fn affine_after(
    model: &TypedModel,
    output: OutletId,
    channels: usize,
) -> Option<(usize, Affine)> {
    let mut affine = Affine {
        source: output,
        scale: vec![1.0; channels],
        shift: vec![0.0; channels],
    };
    let mut last = None;
    let mut outlet = output;
    for (name, values) in [("Mul", &mut affine.scale), ("Add", &mut affine.shift)] {
        let Some(reader) = sole_reader(model, outlet).map(|inlet| inlet.node) else {
            break;
        };
        if let Some((x, constant)) = per_channel_bin_op(model, reader, name, channels)
            && x == outlet
        {
            *values = constant;
            last = Some(reader);
            outlet = OutletId::new(reader, 0);
        }
    }
    last.map(|last| (last, affine))
}

/// The one input reading `outlet`, when `outlet` is not also a model output.
fn sole_reader(model: &TypedModel, outlet: OutletId) -> Option<InletId> {
    let [reader] = model.outlet_successors(outlet) else {
        return None;
    };
    (!model.output_outlets().ok()?.contains(&outlet)).then_some(*reader)
}

/// The PReLU with one slope per channel (or one for all) that reads `output` and is its only
/// reader: its node and its slopes.
pub(crate) fn prelu_after(
    model: &TypedModel,
    output: OutletId,
    channels: usize,
) -> Option<(usize, Vec<f32>)> {
    let reader = sole_reader(model, output)?;
    let node = model.node(reader.node);
    if node.op_as::<PRelu>().is_none() || reader.slot != 0 {
        return None;
    }
    let slopes = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    Some((node.id, per_channel(&slopes, channels)?))
}

/// When `outlet` is `x op constant` (either order) for a per-channel constant, and is read by one
/// node only: x and the constant's values, one per channel.
fn sole_input_bin_op(
    model: &TypedModel,
    outlet: OutletId,
    name: &str,
    channels: usize,
) -> Option<(OutletId, Vec<f32>)> {
    sole_reader(model, outlet)?;
    per_channel_bin_op(model, outlet.node, name, channels)
}

/// When node `id` is `x op constant` (either order) for a per-channel constant: x and the
/// constant's values, one per channel.
fn per_channel_bin_op(
    model: &TypedModel,
    id: usize,
    name: &str,
    channels: usize,
) -> Option<(OutletId, Vec<f32>)> {
    let node = model.node(id);
    let outlet = OutletId::new(id, 0);
    let op = node.op_as::<TypedBinOp>()?;
    if op.0.name() != name || op.1.is_some() || node.inputs.len() != 2 {
        return None;
    }
    let fact = |i: usize| model.outlet_fact(node.inputs[i]).ok();
    let (x, constant) = match (fact(0)?.konst.clone(), fact(1)?.konst.clone()) {
        (None, Some(k)) => (node.inputs[0], k),
        (Some(k), None) => (node.inputs[1], k),
        _ => return None,
    };
    // x itself is not broadcast: same shape and type in as out.
    let (x_fact, out_fact) = (model.outlet_fact(x).ok()?, model.outlet_fact(outlet).ok()?);
    if x_fact.shape != out_fact.shape || x_fact.datum_type != f32::datum_type() {
        return None;
    }
    Some((x, per_channel(&constant, channels)?))
}

/// A constant's values as one per channel of an [n, c, h, w] tensor it broadcasts against
/// (right-aligned, as ONNX and tract broadcast): every axis 1 but, at most, the channel axis.
fn per_channel(constant: &Tensor, channels: usize) -> Option<Vec<f32>> {
    let shape = constant.shape();
    if constant.datum_type() != f32::datum_type() || shape.len() > 4 {
        return None;
    }
    let channel_axis = (4 - shape.len()..4).position(|axis| axis == 1);
    let fits = shape
        .iter()
        .enumerate()
        .all(|(k, &d)| d == 1 || (Some(k) == channel_axis && d == channels));
    if !fits {
        return None;
    }
    one_per_channel(constant, channels)
}

/// A constant of one value or of `channels` as `channels` f32 values.
fn one_per_channel(constant: &Tensor, channels: usize) -> Option<Vec<f32>> {
    let values = constant.cast_to::<f32>().ok()?;
    let values = values.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
    match values.len() {
        1 => Some(vec![values[0]; channels]),
        n if n == channels => Some(values.to_vec()),
        _ => None,
    }
}

/// A convolution's bias input as one value per output channel, when it is a constant of one
/// value or of `channels`.
fn constant_bias(model: &TypedModel, bias: OutletId, channels: usize) -> Option<Vec<f32>> {
    let bias = model.outlet_fact(bias).ok()?.konst.clone()?;
    one_per_channel(&bias, channels)
}

/// What a convolution takes in from the nodes after it: the per-channel affine (a BatchNorm)
/// that reads it alone, and the PReLU that reads that alone.
pub(crate) struct After {
    /// The node whose output the convolution computes once it has taken them in (its own id
    /// when there is nothing to take).
    pub(crate) last: usize,
    pub(crate) affine: Option<Affine>,
    pub(crate) slopes: Option<Vec<f32>>,
}

pub(crate) fn after(model: &TypedModel, id: usize, channels: usize) -> After {
    let affine = affine_after(model, OutletId::new(id, 0), channels);
    let last = affine.as_ref().map_or(id, |(last, _)| *last);
    let prelu = prelu_after(model, OutletId::new(last, 0), channels);
    After {
        last: prelu.as_ref().map_or(last, |(node, _)| *node),
        affine: affine.map(|(_, affine)| affine),
        slopes: prelu.map(|(_, slopes)| slopes),
    }
}

impl After {
    pub(crate) fn takes_anything(&self) -> bool {
        self.affine.is_some() || self.slopes.is_some()
    }

    /// The affine folded into a convolution's weights (one row of `weights` per output
    /// channel) and bias: (W·x + b)·scale + shift = (scale·W)·x + (scale·b + shift), one rounding
    /// per weight more than the nodes apart, well inside what the engines differ by
    /// (tests/onnx.rs). Then the epilogue with the PReLU's slopes.
    pub(crate) fn fold(&self, weights: &mut [f32], bias: Vec<f32>) -> Epilogue {
        let mut shift = bias;
        if let Some(affine) = &self.affine {
            let per_row = weights.len() / shift.len();
            for (row, (&scale, (shift, &add))) in weights
                .chunks_exact_mut(per_row)
                .zip(affine.scale.iter().zip(shift.iter_mut().zip(&affine.shift)))
            {
                row.iter_mut().for_each(|w| *w *= scale);
                *shift = *shift * scale + add;
            }
        }
        Epilogue {
            shift: Arc::new(shift),
            slopes: self.slopes.clone().map(Arc::new),
        }
    }
}

/// The last pass of our convolutions over each output channel's plane: its shift (bias and
/// BatchNorm), then the PReLU where one was taken in.
#[derive(Debug, Clone)]
pub(crate) struct Epilogue {
    shift: Arc<Vec<f32>>,
    slopes: Option<Arc<Vec<f32>>>,
}

impl Epilogue {
    /// The bias alone.
    pub(crate) fn bias(bias: Vec<f32>) -> Epilogue {
        Epilogue {
            shift: Arc::new(bias),
            slopes: None,
        }
    }

    pub(crate) fn shift(&self) -> &[f32] {
        &self.shift
    }

    /// Channel `channel`'s PReLU slope, if a PReLU was taken in.
    pub(crate) fn slope(&self, channel: usize) -> Option<f32> {
        self.slopes.as_ref().map(|slopes| slopes[channel])
    }

    pub(crate) fn apply(&self, channel: usize, plane: &mut [f32]) {
        shift_and_prelu(plane, self.shift[channel], self.slope(channel));
    }
}

with_avx2_copy!(fn shift_and_prelu, shift_and_prelu_avx2<>(
    plane: &mut [f32],
    shift: f32,
    slope: Option<f32>,
) => shift_and_prelu_here);

#[inline(always)]
fn shift_and_prelu_here(plane: &mut [f32], shift: f32, slope: Option<f32>) {
    match slope {
        // A select rather than a branch, so that the loop vectorises.
        Some(a) => plane.iter_mut().for_each(|v| {
            let s = *v + shift;
            *v = if s > 0.0 { s } else { s * a };
        }),
        None => plane.iter_mut().for_each(|v| *v += shift),
    }
}

// Equal when built by the same fusion (the values are shared, not copied).
impl PartialEq for Epilogue {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shift, &other.shift)
            && match (&self.slopes, &other.slopes) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
    }
}

impl Eq for Epilogue {}
