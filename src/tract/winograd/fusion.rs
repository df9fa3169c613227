//! What a Winograd convolution takes into its own passes from the nodes around it, so that
//! those nodes' full passes over the activations go: the per-channel affine before it (each
//! LResNet-E-IR unit opens with a BatchNorm, which tract turns into a Mul and an Add) is applied
//! as the input transform copies the image into its padded plane, and the PReLU after it as the
//! output transform writes the result. The zero padding stays zero, as it does when the affine
//! runs first; both are the same operations in the same order as the nodes they replace, so the
//! values are unchanged bit for bit.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

use crate::tract::prelu::PRelu;

/// x·scale + shift per channel, read from `source`.
pub(super) struct Affine {
    pub(super) source: OutletId,
    pub(super) scale: Vec<f32>,
    pub(super) shift: Vec<f32>,
}

/// The affine that feeds `input` and nothing else: an Add of a per-channel constant, a Mul by
/// one, or a Mul followed by an Add (a BatchNorm), each node read by the next one only.
pub(super) fn affine_before(
    model: &TypedModel,
    input: OutletId,
    channels: usize,
) -> Option<Affine> {
    let mut affine = Affine {
        source: input,
        scale: vec![1.0; channels],
        shift: vec![0.0; channels],
    };
    if let Some((x, shift)) = per_channel_bin_op(model, affine.source, "Add", channels) {
        affine.source = x;
        affine.shift = shift;
    }
    if let Some((x, scale)) = per_channel_bin_op(model, affine.source, "Mul", channels) {
        affine.source = x;
        affine.scale = scale;
    }
    (affine.source != input).then_some(affine)
}

/// The PReLU with one slope per channel (or one for all) that reads `output` and is its only
/// reader: its node and its slopes.
pub(super) fn prelu_after(
    model: &TypedModel,
    output: OutletId,
    channels: usize,
) -> Option<(usize, Vec<f32>)> {
    let [reader] = model.outlet_successors(output) else {
        return None;
    };
    let node = model.node(reader.node);
    if model.output_outlets().ok()?.contains(&output)
        || node.op_as::<PRelu>().is_none()
        || reader.slot != 0
    {
        return None;
    }
    let slopes = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    Some((node.id, per_channel(&slopes, channels)?))
}

/// When `outlet` is `x op constant` (either order) for a per-channel constant, and is read by one
/// node only: x and the constant's values, one per channel.
fn per_channel_bin_op(
    model: &TypedModel,
    outlet: OutletId,
    name: &str,
    channels: usize,
) -> Option<(OutletId, Vec<f32>)> {
    let node = model.node(outlet.node);
    let op = node.op_as::<TypedBinOp>()?;
    if op.0.name() != name
        || op.1.is_some()
        || node.inputs.len() != 2
        || model.outlet_successors(outlet).len() != 1
        || model.output_outlets().ok()?.contains(&outlet)
    {
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
    let values = constant.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?;
    match values.len() {
        1 => Some(vec![values[0]; channels]),
        n if n == channels => Some(values.to_vec()),
        _ => None,
    }
}
