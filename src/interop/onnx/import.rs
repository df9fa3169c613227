//! An LResNet-E-IR ONNX file's weights as our backbone's tensors, found by following the data
//! flow (not by names, which differ between exporters: MXNet's `stage1_unit1_conv1_weight`, our
//! `layer1.0.conv1.weight`): stem Conv → BN → PRelu; units BN → Conv → BN → PRelu → Conv → BN
//! plus a shortcut (identity, or Conv 1×1 → BN) → Add; then BN → Flatten → Gemm → BN. The depth
//! (r18/r34/r50/r100/r200/tiny) and embedding size are read off the graph. A graph with grouped
//! convolutions is read as a MobileFaceNet instead (`import_mobilefacenet.rs`), one with attention
//! (a Softmax) as a Vision Transformer (`import_vit.rs`).
//!
//! Run `load::prepare` first (the zoo's repairs, the input convention). What exporters change is
//! read for what it computes: a BatchNorm folded into its Conv (a bias, no BatchNorm), the
//! normalisation's scale (folded into the stem), another BatchNorm epsilon (absorbed into the
//! running variance), shape bookkeeping around the FC layer; inference is unchanged, and
//! `embedder::compare_outputs` checks it against the file run by tract.

use anyhow::{Context, Result, bail};
use tract_onnx::pb;

use super::graph_walk::{UnitShape, Walk};
use super::input::InputConvention;
use super::load::Prepared;
use super::proto::attribute;
use super::signature::embedder_input;
pub use crate::interop::imported::Imported;
use crate::model::Network;
use crate::model::iresnet::{BN_EPS, INPUT_MEAN, INPUT_SCALE, INPUT_SIZE};

/// Reads an ONNX file, repairs the zoo's defects, puts its input convention in front
/// ([`prepare`](super::load::prepare)) and imports it: the prepared graph, what preparing did,
/// and the backbone. Errors name the file.
pub fn read_file(
    path: &std::path::Path,
    input: InputConvention,
) -> Result<(pb::ModelProto, Prepared, Imported)> {
    let mut proto = super::load::read_model(path)?;
    let context = || path.display().to_string();
    let prepared = super::load::prepare(&mut proto, input).with_context(context)?;
    let imported = import(&proto).with_context(context)?;
    Ok((proto, prepared, imported))
}

/// Reads the backbone out of a prepared LResNet-E-IR, MobileFaceNet or ViT graph (raw 0–255
/// input).
pub fn import(model: &pb::ModelProto) -> Result<Imported> {
    let graph = model.graph.as_ref().context("no graph")?;
    let mut walk = Walk::new(graph);
    let input = embedder_input(graph)?;
    // The name as the graph holds it: the walk's values borrow from the graph.
    let input: &str = graph
        .input
        .iter()
        .find(|i| i.name == input)
        .map(|i| i.name.as_str())
        .expect("embedder_input found it");
    let (x, mean, scale) = walk.preprocess(input)?;
    let stem_scale = stem_scale(mean, scale)?;
    let grouped = graph
        .node
        .iter()
        .any(|n| n.op_type == "Conv" && attribute(n, "group").is_some_and(|a| a.i != 1));
    if graph.node.iter().any(|n| n.op_type == "Softmax") {
        let mut imported = super::import_vit::import(walk, x)?;
        scale_stem(&mut imported, "patch_embed.proj.weight", stem_scale, scale)?;
        return Ok(imported);
    }
    if grouped {
        let mut imported = super::import_mobilefacenet::import(walk, x)?;
        scale_stem(&mut imported, "stem.conv.weight", stem_scale, scale)?;
        return Ok(imported);
    }
    let conv1 = walk.next(x, &["Conv"])?;
    let (x, [stem, in_channels, _, stride]) = walk.conv_bn(conv1, "conv1", "bn1")?;
    if in_channels != 3 || stride != 1 {
        bail!("the first Conv takes {in_channels} channels with stride {stride}; expected 3, 1");
    }
    let x = walk.prelu(walk.next(x, &["PRelu"])?, "prelu", stem)?;
    let (units, bn2) = read_units(&mut walk, x)?;
    let stages = name_stages(&mut walk, &units)?;
    let (x, last) = walk.batch_norm(bn2, "bn2")?;
    let fc = read_fc(&mut walk, x)?;
    let embedding_size = read_embedding_norm(&mut walk, fc.gemm, fc.outputs)?;
    let widths: Vec<usize> = stages.iter().map(|s| units[s[0]].width).collect();
    if units
        .iter()
        .any(|u| u.stride != if u.downsample { 2 } else { 1 })
    {
        bail!(
            "the units' strides are not LResNet-E-IR's (2 on each stage's first unit, 1 elsewhere)"
        );
    }
    let units: Vec<usize> = stages.iter().map(Vec::len).collect();
    let network = Network::with_shape(&units, &widths)
        .filter(|_| stem == widths[0])
        .with_context(|| {
            format!(
                "the graph has units {units:?} with widths {widths:?} (stem {stem}); {}",
                crate::model::NETWORKS_WE_BUILD
            )
        })?;
    let side = INPUT_SIZE >> 4;
    if fc.inputs != last * side * side {
        bail!(
            "Gemm `{}` takes {} inputs; the last stage gives {last}×{side}×{side}",
            fc.gemm.name,
            fc.inputs
        );
    }
    let mut imported = Imported {
        network,
        embedding_size,
        tensors: walk.tensors,
        notes: walk.notes,
    };
    scale_stem(&mut imported, "conv1.weight", stem_scale, scale)?;
    Ok(imported)
}

/// The residual units from value `x` on, until a BatchNorm whose output goes into no Conv (the
/// output block's), which is returned with the units' shapes. Their tensors are named
/// `unit<k>.` until the stages are known.
fn read_units<'g>(
    walk: &mut Walk<'g>,
    mut x: &'g str,
) -> Result<(Vec<UnitShape>, &'g pb::NodeProto)> {
    let mut units: Vec<UnitShape> = Vec::new();
    let bn2 = loop {
        let bn = walk
            .next_nodes(x)
            .into_iter()
            .find(|n| n.op_type == "BatchNormalization")
            .with_context(|| format!("value `{x}` goes into no BatchNormalization"))?;
        let starts_unit = walk
            .next_nodes(Walk::output(bn)?)
            .iter()
            .any(|n| n.op_type == "Conv");
        if !starts_unit {
            break bn;
        }
        let (out, shape) = walk.unit(x, bn, &format!("unit{}", units.len()))?;
        units.push(shape);
        x = out;
    };
    Ok((units, bn2))
}

/// The units grouped into stages (a unit with a downsampling shortcut opens one), their
/// tensors renamed from `unit<k>.` to arcface_torch's `layer<s>.<u>.`.
fn name_stages(walk: &mut Walk, units: &[UnitShape]) -> Result<Vec<Vec<usize>>> {
    let mut stages: Vec<Vec<usize>> = Vec::new();
    for (k, unit) in units.iter().enumerate() {
        match stages.last_mut() {
            Some(stage) if !unit.downsample => stage.push(k),
            None if !unit.downsample => bail!("the first unit has no downsampling shortcut"),
            _ => stages.push(vec![k]),
        }
    }
    for (s, stage) in stages.iter().enumerate() {
        for (u, &k) in stage.iter().enumerate() {
            let (from, to) = (format!("unit{k}."), format!("layer{}.{u}.", s + 1));
            let moved: Vec<String> = walk
                .tensors
                .keys()
                .filter(|n| n.starts_with(&from))
                .cloned()
                .collect();
            for name in moved {
                let value = walk.tensors.remove(&name).expect("listed");
                walk.tensors.insert(name.replacen(&from, &to, 1), value);
            }
        }
    }
    Ok(stages)
}

/// The FC layer's Gemm and its sizes.
struct Fc<'g> {
    gemm: &'g pb::NodeProto,
    inputs: usize,
    outputs: usize,
}

/// The FC layer after value `x` (past any Flatten or Reshape), its weight in burn's [in, out]
/// and its bias put as `fc.weight`, `fc.bias`.
fn read_fc<'g>(walk: &mut Walk<'g>, x: &'g str) -> Result<Fc<'g>> {
    // Flatten, and shape bookkeeping around it (MXNet's exporter: a Reshape to a shape
    // computed by Shape → Slice → Concat), between the last BatchNorm and the FC layer. That a
    // Reshape here keeps [N, C·7·7] is checked by running the file against the import.
    let mut x = x;
    while let Ok(node) = walk.next(x, &["Flatten", "Reshape"]) {
        x = Walk::output(node)?;
    }
    let gemm = walk.next(x, &["Gemm"])?;
    let get = |name: &str, default: f32| attribute(gemm, name).map_or(default, |a| a.f);
    let trans = |name: &str| attribute(gemm, name).map_or(0, |a| a.i);
    if get("alpha", 1.0) != 1.0 || get("beta", 1.0) != 1.0 || trans("transA") != 0 {
        bail!(
            "Gemm `{}`: alpha, beta or transA differ from a plain fully connected layer",
            gemm.name
        );
    }
    let (w, values) = walk.constant(gemm, 1)?;
    let [a, b] = w.dims[..] else {
        bail!(
            "Gemm `{}`: weight `{}` has shape {:?}",
            gemm.name,
            w.name,
            w.dims
        );
    };
    let (outputs, inputs) = if trans("transB") == 1 {
        (a as usize, b as usize)
    } else {
        (b as usize, a as usize)
    };
    // burn's Linear stores [in, out].
    let weight: Vec<f32> = if trans("transB") == 1 {
        (0..inputs)
            .flat_map(|i| (0..outputs).map(move |o| (i, o)))
            .map(|(i, o)| values[o * inputs + i])
            .collect()
    } else {
        values
    };
    walk.put("fc.weight".into(), vec![inputs, outputs], weight);
    let (_, bias) = walk.constant(gemm, 2)?;
    if bias.len() != outputs {
        bail!(
            "Gemm `{}`: bias has {} values for {outputs} outputs",
            gemm.name,
            bias.len()
        );
    }
    walk.put("fc.bias".into(), vec![outputs], bias);
    Ok(Fc {
        gemm,
        inputs,
        outputs,
    })
}

/// The embedding's BatchNorm after the FC layer (past any Reshape or Flatten) as `features.`,
/// or the identity where an exporter folded it into the FC layer; the embedding size.
fn read_embedding_norm<'g>(
    walk: &mut Walk<'g>,
    gemm: &'g pb::NodeProto,
    outputs: usize,
) -> Result<usize> {
    let mut y = Walk::output(gemm)?;
    while let Ok(node) = walk.next(y, &["Reshape", "Flatten"]) {
        y = Walk::output(node)?;
    }
    if !walk.next_nodes(y).is_empty() {
        return Ok(walk
            .batch_norm(walk.next(y, &["BatchNormalization"])?, "features")?
            .1);
    }
    // The embedding BatchNorm folded into the FC layer: kept as the identity.
    let variance = (1.0 - BN_EPS) as f32;
    for (name, value) in [("gamma", 1.0), ("beta", 0.0), ("running_mean", 0.0)]
        .into_iter()
        .chain([("running_var", variance)])
    {
        walk.put(
            format!("features.{name}"),
            vec![outputs],
            vec![value; outputs],
        );
    }
    walk.notes
        .push("no BatchNorm after the FC layer: the embedding's kept as the identity".into());
    Ok(outputs)
}

/// The stem convolution's weights (at our path `key`) × `stem_scale`, the file's input
/// `scale` told in a note.
fn scale_stem(imported: &mut Imported, key: &str, stem_scale: f64, scale: f64) -> Result<()> {
    if (stem_scale - 1.0).abs() <= 1e-9 {
        return Ok(());
    }
    // conv(W, (x − 127.5)·s) = conv(W·s/INPUT_SCALE, (x − 127.5)·INPUT_SCALE)
    let weight = imported
        .tensors
        .get(key)
        .with_context(|| format!("no stem convolution `{key}` read"))?;
    let shape = weight.shape().to_vec();
    let scaled: Vec<f32> = weight
        .clone()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{key}: {e:?}"))?
        .iter()
        .map(|&w| (w as f64 * stem_scale) as f32)
        .collect();
    imported.tensors.insert(
        key.to_string(),
        burn::tensor::TensorData::new(scaled, shape),
    );
    imported.notes.push(format!(
        "the input scale {scale:.7} folded into the stem convolution (ours is {INPUT_SCALE})"
    ));
    Ok(())
}

/// What the stem convolution's weights are multiplied by so that our backbone, which takes raw
/// RGB and computes (x − 127.5) × 1/128 inside, gives what the file computes from its
/// normalisation (x − `mean`) × `scale`. Only the mean can't move: the convolution pads with
/// zeros after the normalisation, so a different mean changes the border.
fn stem_scale(mean: f64, scale: f64) -> Result<f64> {
    if !(scale.is_finite() && scale > 0.0) || (mean - INPUT_MEAN as f64).abs() > 1e-3 {
        let how = if mean == 0.0 && scale == 1.0 {
            "takes its pixels unnormalised (with --onnx-input raw, or a graph of another \
             convention)"
                .to_string()
        } else {
            format!("normalises its input as (x − {mean}) × {scale}")
        };
        bail!(
            "the graph {how}; our backbone computes (x − {INPUT_MEAN}) × scale before its first \
             convolution, and the convolution's zero padding makes any other mean inexact"
        );
    }
    Ok(scale / INPUT_SCALE as f64)
}
