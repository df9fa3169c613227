//! A MobileFaceNet ONNX file (torch2onnx.py's export of arcface_torch's mbf, or ours) as our
//! backbone's tensors. Its layers form one chain: Conv, then BatchNormalization (or a bias
//! where the exporter folded it), then PRelu except after a projection, with an Add closing
//! each residual bottleneck; the GDC head's Conv is followed by Flatten (or Reshape), the FC
//! layer (Gemm, or MatMul where it has no bias) and the embedding's BatchNormalization.
//!
//! The chain is read in data-flow order and laid onto our MobileFaceNet's layers in forward
//! order: the network is the one whose convolutions have the file's weight shapes, one for one,
//! with a PReLU exactly where ours have one and an Add after exactly our residual bottlenecks.
//! Strides and paddings are not compared here: `compare_outputs` runs the file against the
//! import, which any difference there would fail.

use anyhow::{Context, Result, bail};

use super::graph_walk::Walk;
use super::proto::attribute;
use crate::interop::arcface_torch::backbone_shapes;
use crate::interop::imported::Imported;
use crate::model::{Architecture, Network};

/// One Conv of the chain, as read: its weight shape, whether a PRelu follows, whether an Add
/// after it closes a residual bottleneck.
struct Layer {
    shape: Vec<usize>,
    prelu: bool,
    residual: bool,
}

/// Reads the chain from `x`, the stem convolution's input (after the normalisation).
// Long because the chain is read in one pass, each layer's checks next to where it is read.
pub(super) fn import(mut walk: Walk<'_>, x: &str) -> Result<Imported> {
    walk.grouped_convolutions = true;
    let mut layers: Vec<Layer> = Vec::new();
    // The value each layer reads: where a residual Add's shortcut must come from.
    let mut inputs: Vec<String> = Vec::new();
    let mut x = x.to_string();
    while let Some(conv) = walk
        .next_nodes(&x)
        .into_iter()
        .find(|n| n.op_type == "Conv")
    {
        let i = layers.len();
        inputs.push(x.clone());
        let (y, [out, ..]) =
            walk.conv_bn(conv, &format!("conv{i}.conv"), &format!("conv{i}.bn"))?;
        let shape = walk.tensors[&format!("conv{i}.conv.weight")]
            .shape()
            .to_vec();
        let mut y = y;
        let mut prelu = false;
        if let [node] = walk.next_nodes(y).as_slice()
            && node.op_type == "PRelu"
        {
            y = walk.prelu(node, &format!("conv{i}.prelu"), out)?;
            prelu = true;
        }
        let mut residual = false;
        if let [add] = walk.next_nodes(y).as_slice()
            && add.op_type == "Add"
        {
            // A bottleneck is three convolutions: its input is the first one's.
            let shortcut = i.checked_sub(2).map(|k| inputs[k].as_str());
            let other = add.input.iter().find(|v| v.as_str() != y);
            if other.map(String::as_str) != shortcut || shortcut.is_none() {
                bail!(
                    "Add `{}` does not close a bottleneck of three convolutions (its other \
                     input is {other:?})",
                    add.name
                );
            }
            y = Walk::output(add)?;
            residual = true;
        }
        layers.push(Layer {
            shape,
            prelu,
            residual,
        });
        x = y.to_string();
    }
    let mut x: &str = &x;
    while let Ok(node) = walk.next(x, &["Flatten", "Reshape"]) {
        x = Walk::output(node)?;
    }
    let fc = walk.next(x, &["Gemm", "MatMul"])?;
    let (inputs, outputs) = read_fc(&mut walk, fc)?;
    let y = Walk::output(fc)?;
    let (_, embedding_size) =
        walk.batch_norm(walk.next(y, &["BatchNormalization"])?, "features")?;
    if embedding_size != outputs || inputs != crate::model::mobilefacenet::HEAD_CHANNELS {
        bail!(
            "the FC layer `{}` maps {inputs} to {outputs} values, its BatchNorm has \
             {embedding_size}; a MobileFaceNet's maps 512 to the embedding",
            fc.name
        );
    }
    let (network, paths) = match_network(&layers, embedding_size)?;
    let renamed = std::mem::take(&mut walk.tensors)
        .into_iter()
        .map(|(name, value)| {
            let Some((layer, rest)) = name
                .strip_prefix("conv")
                .and_then(|n| n.split_once('.'))
                .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)))
            else {
                return (name, value);
            };
            let prefix = paths[layer]
                .strip_suffix(".conv.weight")
                .expect("conv paths end in .conv.weight");
            (format!("{prefix}.{rest}"), value)
        })
        .collect();
    walk.tensors = renamed;
    Ok(Imported {
        network,
        embedding_size,
        tensors: walk.tensors,
        notes: walk.notes,
    })
}

/// The FC layer's weight as burn's Linear stores it ([in, out]) at `fc.weight`, and its bias
/// (there must be none, or zeros: arcface_torch's has none) → (inputs, outputs).
fn read_fc(walk: &mut Walk<'_>, fc: &tract_onnx::pb::NodeProto) -> Result<(usize, usize)> {
    let (w, values) = walk.constant(fc, 1)?;
    let [a, b] = w.dims[..] else {
        bail!(
            "{} `{}`: weight `{}` has shape {:?}",
            fc.op_type,
            fc.name,
            w.name,
            w.dims
        );
    };
    let (a, b) = (a as usize, b as usize);
    let gemm = fc.op_type == "Gemm";
    let get = |name: &str, default: f32| attribute(fc, name).map_or(default, |a| a.f);
    let trans = |name: &str| attribute(fc, name).map_or(0, |a| a.i);
    if gemm && (get("alpha", 1.0) != 1.0 || trans("transA") != 0) {
        bail!(
            "Gemm `{}`: alpha or transA differ from a plain fully connected layer",
            fc.name
        );
    }
    // MatMul and Gemm without transB multiply by [in, out], as burn stores it.
    let (inputs, outputs, weight) = if gemm && trans("transB") == 1 {
        let transposed = crate::interop::arcface_torch::transpose(&values, a, b);
        (b, a, transposed)
    } else {
        (a, b, values)
    };
    if gemm && fc.input.get(2).is_some_and(|c| !c.is_empty()) {
        let (_, bias) = walk.constant(fc, 2)?;
        let beta = get("beta", 1.0);
        if bias.iter().any(|&v| v * beta != 0.0) {
            bail!(
                "Gemm `{}` adds a bias; a MobileFaceNet's FC layer has none",
                fc.name
            );
        }
    }
    walk.put("fc.weight".into(), vec![inputs, outputs], weight);
    Ok((inputs, outputs))
}

/// The MobileFaceNet whose convolutions, in forward order, are the file's: its network and
/// our path of each convolution's weight.
fn match_network(layers: &[Layer], embedding_size: usize) -> Result<(Network, Vec<String>)> {
    let mobilefacenets = Network::ALL
        .into_iter()
        .filter(|n| matches!(n.architecture(), Architecture::MobileFaceNet { .. }));
    for network in mobilefacenets {
        let shapes = backbone_shapes(network, embedding_size);
        let convs: Vec<&(String, Vec<usize>)> = shapes
            .iter()
            .filter(|(path, _)| path.ends_with(".conv.weight"))
            .collect();
        let has = |path: &str| shapes.iter().any(|(p, _)| p == path);
        let fits = convs.len() == layers.len()
            && convs.iter().zip(layers).all(|((path, shape), layer)| {
                let prefix = path.strip_suffix(".conv.weight").unwrap_or(path);
                let residual = prefix.ends_with(".project") && prefix.starts_with("stage");
                *shape == layer.shape
                    && has(&format!("{prefix}.prelu.alpha")) == layer.prelu
                    && residual == layer.residual
            });
        if fits {
            return Ok((network, convs.into_iter().map(|(p, _)| p.clone()).collect()));
        }
    }
    let shapes: Vec<String> = layers
        .iter()
        .take(4)
        .map(|l| format!("{:?}", l.shape))
        .collect();
    Err(anyhow::anyhow!(
        "a MobileFaceNet-like chain of {} convolutions (first {}) that is neither of ours; {}",
        layers.len(),
        shapes.join(", "),
        crate::model::NETWORKS_WE_BUILD
    ))
    .context("reading the graph as a MobileFaceNet (it has grouped convolutions)")
}
