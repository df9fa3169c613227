//! Our backbone as an opset-8 ONNX graph in the model zoo's interface: input `data` float32
//! [N,3,112,112] raw RGB 0–255, normalised inside by Sub/Mul, output `fc1` float32 [N,E] (not
//! L2-normalised). Conv, BatchNormalization (spatial, 1-D parameters), PRelu with (C,1,1) slopes,
//! Add, Flatten, Gemm; no Dropout. Initializers carry arcface_torch's names and layouts (the
//! names of our safetensors export), so they are readable and stable across exports.
//!
//! IR version 3 is the one ONNX released with opset 8 (as the zoo's file); it requires every
//! initializer to be listed among the graph inputs too, which old runtimes rely on.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use prost::Message;
use tract_onnx::pb;

use super::proto::{
    Dim, attr_float, attr_int, attr_ints, attr_tensor, float_tensor, float_value_info, node,
};
use crate::arcface_torch::torch_layout;
use crate::checkpoint::named_tensors;
use crate::model::IResNet;
use crate::model::iresnet::{BN_EPS, INPUT_MEAN, INPUT_SCALE, INPUT_SIZE};

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "dynamic" => Ok(Batch::Dynamic),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Batch::Fixed(n)),
                _ => Err(format!("`{s}`: expected a batch size > 0 or `dynamic`")),
            },
        }
    }
}

struct Graph {
    /// arcface_torch name → (PyTorch-layout shape, values).
    weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

impl Graph {
    /// Moves the weight `name` into the initializers; its name is the value name.
    fn weight(&mut self, name: &str, shape: Option<Vec<usize>>) -> Result<String> {
        let (stored, values) = self
            .weights
            .remove(name)
            .with_context(|| format!("the model has no tensor `{name}`"))?;
        let shape = shape.unwrap_or(stored);
        self.initializers.push(float_tensor(name, &shape, &values));
        Ok(name.to_string())
    }

    fn add(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(node(op, name, inputs, name, attrs));
        name.to_string()
    }

    fn constant(&mut self, name: &str, value: f32) -> String {
        let tensor = float_tensor(name, &[1], &[value]);
        self.add("Constant", name, &[], vec![attr_tensor("value", tensor)])
    }

    fn conv(&mut self, module: &str, conv: &Conv2d, x: &str) -> Result<String> {
        if conv.bias.is_some() || conv.groups != 1 || conv.dilation != [1, 1] {
            bail!("{module}: only bias-free, ungrouped, undilated convolutions are exported");
        }
        let [kh, kw] = conv.kernel_size;
        let weight = self.weight(&format!("{module}.weight"), None)?;
        let (ph, pw) = (kh as i64 / 2, kw as i64 / 2);
        let attrs = vec![
            attr_ints("kernel_shape", &[kh as i64, kw as i64]),
            attr_ints("strides", &conv.stride.map(|s| s as i64)),
            attr_ints("pads", &[ph, pw, ph, pw]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ];
        Ok(self.add("Conv", module, &[x, &weight], attrs))
    }

    fn batch_norm(&mut self, module: &str, bn: &BatchNorm, x: &str) -> Result<String> {
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
pub fn backbone_to_onnx(model: &IResNet, batch: Batch) -> Result<pb::ModelProto> {
    let weights = torch_layout(&named_tensors(model, ""))?
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
    let weight = g.weight("fc.weight", None)?;
    let bias = g.weight("fc.bias", None)?;
    let embedding_size = model.features.gamma.dims()[0];
    let attrs = vec![
        attr_float("alpha", 1.0),
        attr_float("beta", 1.0),
        attr_int("transB", 1),
    ];
    let x = g.add("Gemm", "fc", &[&x, &weight, &bias], attrs);
    let features = g.batch_norm("features", &model.features, &x)?;
    // The zoo's output name.
    g.nodes.last_mut().expect("features node").output = vec![OUTPUT.to_string()];
    debug_assert_eq!(features, "features");
    if let Some(left) = g.weights.keys().next() {
        bail!("tensor `{left}` of the model has no place in the graph");
    }

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
        float_value_info(&t.name, &dims)
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
        doc_string: "LResNet-E-IR face embedder: data = RGB 0-255 [N,3,112,112], fc1 = embedding \
                     (L2-normalise before comparing)"
            .into(),
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
