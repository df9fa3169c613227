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

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use prost::Message;
use tract_onnx::pb;

use super::proto::{
    Dim, attr_float, attr_int, attr_ints, attr_tensor, float_tensor, float_value_info,
    int64_tensor, node, value_info,
};
use crate::checkpoint::named_tensors;
use crate::interop::arcface_torch::{Family, torch_layout};
use crate::model::layers::{BN_EPS, INPUT_MEAN, INPUT_SCALE, INPUT_SIZE};
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

pub(super) struct Graph {
    /// arcface_torch name → (PyTorch-layout shape, values).
    pub(super) weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

impl Graph {
    /// Moves the weight `name` into the initializers; its name is the value name.
    pub(super) fn weight(&mut self, name: &str, shape: Option<Vec<usize>>) -> Result<String> {
        let (stored, values) = self
            .weights
            .remove(name)
            .with_context(|| format!("the model has no tensor `{name}`"))?;
        let shape = shape.unwrap_or(stored);
        self.initializers.push(float_tensor(name, &shape, &values));
        Ok(name.to_string())
    }

    pub(super) fn add(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(node(op, name, inputs, name, attrs));
        name.to_string()
    }

    pub(super) fn constant(&mut self, name: &str, value: f32) -> String {
        let tensor = float_tensor(name, &[1], &[value]);
        self.add("Constant", name, &[], vec![attr_tensor("value", tensor)])
    }

    /// An int64 initializer (a Reshape's shape, a Gather's index): opset 8's Constant node
    /// holds floats only.
    pub(super) fn int64_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        values: &[i64],
    ) -> String {
        self.initializers.push(int64_tensor(name, dims, values));
        name.to_string()
    }

    pub(super) fn conv(&mut self, module: &str, conv: &Conv2d, x: &str) -> Result<String> {
        let pads = match conv.padding {
            PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
            PaddingConfig2d::Valid => [0; 4],
            _ => bail!("{module}: only explicit or no paddings are exported"),
        };
        if conv.dilation != [1, 1] {
            bail!("{module}: only undilated convolutions are exported");
        }
        let [kh, kw] = conv.kernel_size;
        let mut inputs = vec![
            x.to_string(),
            self.weight(&format!("{module}.weight"), None)?,
        ];
        if conv.bias.is_some() {
            inputs.push(self.weight(&format!("{module}.bias"), None)?);
        }
        let attrs = vec![
            attr_ints("kernel_shape", &[kh as i64, kw as i64]),
            attr_ints("strides", &conv.stride.map(|s| s as i64)),
            attr_ints("pads", &pads.map(|p| p as i64)),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", conv.groups as i64),
        ];
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Ok(self.add("Conv", module, &inputs, attrs))
    }

    /// A fully connected layer on [N, in] as Gemm (B transposed: PyTorch's [out, in] weight);
    /// a bias-free one gets a zero bias `{module}.zero_bias`, which opset 8's Gemm requires.
    pub(super) fn gemm(&mut self, module: &str, x: &str, bias: bool) -> Result<String> {
        let name = format!("{module}.weight");
        let out_features = self.weights.get(&name).map(|(s, _)| s[0]).unwrap_or(0);
        let weight = self.weight(&name, None)?;
        let bias = if bias {
            self.weight(&format!("{module}.bias"), None)?
        } else {
            let zero = format!("{module}.zero_bias");
            let zeros = vec![0.0; out_features];
            self.initializers
                .push(float_tensor(&zero, &[out_features], &zeros));
            zero
        };
        Ok(self.add("Gemm", module, &[x, &weight, &bias], gemm_attributes()))
    }

    pub(super) fn batch_norm(&mut self, module: &str, bn: &BatchNorm, x: &str) -> Result<String> {
        if (bn.epsilon - BN_EPS).abs() > 1e-12 {
            bail!(
                "{module}: BatchNorm epsilon {} (the model's is {BN_EPS})",
                bn.epsilon
            );
        }
        let inputs = ["weight", "bias", "running_mean", "running_var"]
            .map(|p| self.weight(&format!("{module}.{p}"), None))
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let attrs = vec![
            attr_float("epsilon", bn.epsilon as f32),
            // ONNX's momentum is MXNet's (the kept share of the running statistics).
            attr_float("momentum", (1.0 - bn.momentum) as f32),
        ];
        let mut all = vec![x];
        all.extend(inputs.iter().map(String::as_str));
        Ok(self.add("BatchNormalization", module, &all, attrs))
    }

    fn prelu(&mut self, module: &str, x: &str) -> Result<String> {
        let name = format!("{module}.weight");
        let channels = self.weights.get(&name).map(|(s, _)| s[0]).unwrap_or(0);
        // (C,1,1) broadcasts over [N,C,H,W] by ONNX's right-aligned rule; (C,) would not.
        let slope = self.weight(&name, Some(vec![channels, 1, 1]))?;
        Ok(self.add("PRelu", module, &[x, &slope], vec![]))
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

fn gemm_attributes() -> Vec<pb::AttributeProto> {
    vec![
        attr_float("alpha", 1.0),
        attr_float("beta", 1.0),
        attr_int("transB", 1),
    ]
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
