//! Our backbone as an opset-8 ONNX graph in the model zoo's interface: input `data` float32
//! [N,3,112,112] raw RGB 0–255, normalised inside by Sub/Mul, output `fc1` float32 [N,E] (not
//! L2-normalised). Conv (grouped for MobileFaceNet's depthwise layers, which opset 8 allows),
//! BatchNormalization (spatial, 1-D parameters), PRelu with (C,1,1) slopes, Add, Flatten, Gemm
//! (bias-free FCs with a zero bias: opset 8's Gemm requires one); no Dropout. A Vision
//! Transformer adds the ops of its blocks (`export_vit.rs`). Initializers carry arcface_torch's
//! names and layouts (the names of our safetensors export), so they are readable and stable
//! across exports.
//!
//! IR version 3 is the one ONNX released with opset 8 (as the zoo's file); it requires every
//! initializer to be listed among the graph inputs too, which old runtimes rely on.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use prost::Message;
use tract_onnx::pb;

use super::graph_builder::Graph;
use super::proto::{Dim, attr_int, float_value_info, value_info};
use crate::checkpoint::named_tensors;
use crate::interop::arcface_torch::{Family, torch_layout};
use crate::model::layers::{INPUT_MEAN, INPUT_SCALE, INPUT_SIZE};
use crate::model::mobilefacenet::{Bottleneck, ConvBlock, LinearBlock};
use crate::model::{Backbone, IResNet, MobileFaceNet};

pub const OPSET: i64 = 8;
pub const IR_VERSION: i64 = 3;
pub const INPUT: &str = "data";
pub const OUTPUT: &str = "fc1";

/// The batch dimension of the exported graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// A symbolic `N`: any batch size.
    Dynamic,
    Fixed(usize),
}

impl std::str::FromStr for Batch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "dynamic" => Ok(Batch::Dynamic),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Batch::Fixed(n)),
                _ => anyhow::bail!("`{s}`: expected a batch size > 0 or `dynamic`"),
            },
        }
    }
}

/// The ONNX model of `model`'s backbone (inference mode: BatchNorm uses running statistics).
pub fn backbone_to_onnx(model: &Backbone, batch: Batch) -> Result<pb::ModelProto> {
    let family = Family::of_backbone(model);
    let weights = torch_layout(family, &named_tensors(model, ""))?
        .into_iter()
        .map(|(name, shape, values)| (name, (shape, values)))
        .collect();
    let mut g = Graph {
        weights,
        nodes: Vec::new(),
        initializers: Vec::new(),
    };
    let mean = g.constant("preprocess.mean", INPUT_MEAN);
    let scale = g.constant("preprocess.scale", INPUT_SCALE);
    let x = g.add("Sub", "preprocess.sub", &[INPUT, &mean], vec![]);
    let x = g.add("Mul", "preprocess.mul", &[&x, &scale], vec![]);
    let (description, features) = match model {
        Backbone::IResNet(m) => ("LResNet-E-IR", iresnet(&mut g, m, x)?),
        Backbone::MobileFaceNet(m) => ("MobileFaceNet", mobilefacenet(&mut g, m, x)?),
        Backbone::Vit(m) => ("Vision Transformer", super::export_vit::vit(&mut g, m, x)?),
    };
    // The zoo's output name.
    let last = g.nodes.last_mut().expect("features node");
    debug_assert_eq!(last.output, [features]);
    last.output = vec![OUTPUT.to_string()];
    if let Some(left) = g.weights.keys().next() {
        bail!("tensor `{left}` of the model has no place in the graph");
    }
    let embedding_size = model.embedding_size();

    let n = match batch {
        Batch::Dynamic => Dim::Symbol("N"),
        Batch::Fixed(n) => Dim::Fixed(n),
    };
    let side = Dim::Fixed(INPUT_SIZE);
    let mut input = vec![float_value_info(
        INPUT,
        &[n, Dim::Fixed(3), side, Dim::Fixed(INPUT_SIZE)],
    )];
    input.extend(g.initializers.iter().map(|t| {
        let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Fixed(d as usize)).collect();
        value_info(&t.name, &dims, t.data_type)
    }));
    let graph = pb::GraphProto {
        node: g.nodes,
        name: "arcface".into(),
        initializer: g.initializers,
        input,
        output: vec![float_value_info(OUTPUT, &[n, Dim::Fixed(embedding_size)])],
        ..Default::default()
    };
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "arcface".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{description} face embedder: data = RGB 0-255 [N,3,112,112], fc1 = embedding \
             (L2-normalise before comparing)"
        ),
        graph: Some(graph),
        ..Default::default()
    })
}

/// Writes `model` to `path` atomically (temporary file, fsync, rename).
pub fn write(model: &pb::ModelProto, path: &Path) -> Result<()> {
    let bytes = model.encode_to_vec();
    crate::fs::write_atomically(path, |out| out.write_all(&bytes))
        .with_context(|| format!("writing {}", path.display()))
}

/// An iresnet's nodes after the normalisation `x`; returns the output's value name.
fn iresnet(g: &mut Graph, model: &IResNet, x: String) -> Result<String> {
    let x = g.conv("conv1", &model.conv1, &x)?;
    let x = g.batch_norm("bn1", &model.bn1, &x)?;
    let mut x = g.prelu("prelu", &x)?;
    for (s, stage) in model.stages().into_iter().enumerate() {
        for (u, unit) in stage.iter().enumerate() {
            let p = format!("layer{}.{u}", s + 1);
            let y = g.batch_norm(&format!("{p}.bn1"), &unit.bn1, &x)?;
            let y = g.conv(&format!("{p}.conv1"), &unit.conv1, &y)?;
            let y = g.batch_norm(&format!("{p}.bn2"), &unit.bn2, &y)?;
            let y = g.prelu(&format!("{p}.prelu"), &y)?;
            let y = g.conv(&format!("{p}.conv2"), &unit.conv2, &y)?;
            let y = g.batch_norm(&format!("{p}.bn3"), &unit.bn3, &y)?;
            let shortcut = match &unit.downsample {
                Some(down) => {
                    let s = g.conv(&format!("{p}.downsample.0"), &down.conv, &x)?;
                    g.batch_norm(&format!("{p}.downsample.1"), &down.bn, &s)?
                }
                None => x.clone(),
            };
            x = g.add("Add", &format!("{p}.add"), &[&y, &shortcut], vec![]);
        }
    }
    let x = g.batch_norm("bn2", &model.bn2, &x)?;
    let x = g.add("Flatten", "flatten", &[&x], vec![attr_int("axis", 1)]);
    let x = g.gemm("fc", &x, true)?;
    g.batch_norm("features", &model.features, &x)
}

/// Nodes are named by arcface_torch's module paths (`layers.3.layers.0.layers.1`), as its
/// weights are.
fn conv_block(g: &mut Graph, module: &str, block: &ConvBlock, x: &str) -> Result<String> {
    let y = g.conv(&format!("{module}.layers.0"), &block.conv, x)?;
    let y = g.batch_norm(&format!("{module}.layers.1"), &block.bn, &y)?;
    g.prelu(&format!("{module}.layers.2"), &y)
}

fn linear_block(g: &mut Graph, module: &str, block: &LinearBlock, x: &str) -> Result<String> {
    let y = g.conv(&format!("{module}.layers.0"), &block.conv, x)?;
    g.batch_norm(&format!("{module}.layers.1"), &block.bn, &y)
}

fn bottleneck(g: &mut Graph, module: &str, block: &Bottleneck, x: &str) -> Result<String> {
    let y = conv_block(g, &format!("{module}.layers.0"), &block.expand, x)?;
    let y = conv_block(g, &format!("{module}.layers.1"), &block.depthwise, &y)?;
    let y = linear_block(g, &format!("{module}.layers.2"), &block.project, &y)?;
    Ok(if block.residual {
        g.add("Add", &format!("{module}.add"), &[&y, x], vec![])
    } else {
        y
    })
}

/// A MobileFaceNet's nodes after the normalisation `x`; returns the output's value name.
fn mobilefacenet(g: &mut Graph, model: &MobileFaceNet, x: String) -> Result<String> {
    let mut x = conv_block(g, "layers.0", &model.stem, &x)?;
    if let Some(block) = &model.stem_grouped {
        x = conv_block(g, "layers.1", block, &x)?;
    }
    let stages: [(&str, Option<&Bottleneck>, &[Bottleneck]); 4] = [
        ("layers.1", None, &model.stage1),
        ("layers.3", Some(&model.down2), &model.stage2),
        ("layers.5", Some(&model.down3), &model.stage3),
        ("layers.7", Some(&model.down4), &model.stage4),
    ];
    for (index, (module, down, stage)) in stages.into_iter().enumerate() {
        if let Some(down) = down {
            // The stride-2 bottleneck sits just before its stage in `self.layers`.
            x = bottleneck(g, &format!("layers.{}", 2 * index), down, &x)?;
        }
        for (u, block) in stage.iter().enumerate() {
            x = bottleneck(g, &format!("{module}.layers.{u}"), block, &x)?;
        }
    }
    let x = conv_block(g, "conv_sep", &model.conv_sep, &x)?;
    let x = linear_block(g, "features.layers.0", &model.gdc, &x)?;
    let x = g.add(
        "Flatten",
        "features.layers.1",
        &[&x],
        vec![attr_int("axis", 1)],
    );
    let x = g.gemm("features.layers.2", &x, false)?;
    g.batch_norm("features.layers.3", &model.features, &x)
}
