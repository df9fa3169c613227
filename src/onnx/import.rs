//! An LResNet-E-IR ONNX file's weights as our backbone's tensors, found by following the data
//! flow (not by names, which differ between exporters: MXNet's `stage1_unit1_conv1_weight`, our
//! `layer1.0.conv1.weight`): stem Conv → BN → PRelu; units BN → Conv → BN → PRelu → Conv → BN
//! plus a shortcut (identity, or Conv 1×1 → BN) → Add; then BN → Flatten → Gemm → BN. The depth
//! (r18/r34/r50/r100/tiny) and embedding size are read off the graph.
//!
//! Run `load::repair_zoo_defects` first. A BatchNorm epsilon other than ours (2e-5; arcface_torch
//! uses 1e-5) is absorbed into the running variance, so inference is unchanged.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;
use tract_onnx::pb;

use burn::module::Module;
use burn::tensor::Device;

use super::OnnxEmbedder;
use super::load::data_input;
use super::proto::{attribute, float_values};
use crate::config::Config;
use crate::data::loader::Cursor;
use crate::embedder::{Embedder, IMAGE_VALUES};
use crate::model::iresnet::{BN_EPS, INPUT_MEAN, INPUT_SCALE, INPUT_SIZE};
use crate::model::{IResNet, Network, backbone_config};
use crate::train::checkpoint::{Checkpoint, Meta, load_named};

pub struct Imported {
    pub network: Network,
    pub embedding_size: usize,
    /// Our backbone paths (`layer1.0.conv1.weight`, `bn1.gamma`, …) → values.
    pub tensors: BTreeMap<String, TensorData>,
    /// What the user should know about the conversion.
    pub notes: Vec<String>,
}

/// Ops that carry a value through unchanged at inference.
const PASS_THROUGH: [&str; 2] = ["Identity", "Dropout"];

struct Walk<'a> {
    nodes: &'a [pb::NodeProto],
    constants: HashMap<&'a str, &'a pb::TensorProto>,
    consumers: HashMap<&'a str, Vec<usize>>,
    producer: HashMap<&'a str, usize>,
    tensors: BTreeMap<String, TensorData>,
    notes: Vec<String>,
}

impl<'a> Walk<'a> {
    fn new(graph: &'a pb::GraphProto) -> Self {
        let mut constants: HashMap<&str, &pb::TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut producer = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            if node.op_type == "Constant"
                && let (Some(out), Some(t)) = (
                    node.output.first(),
                    attribute(node, "value").and_then(|a| a.t.as_ref()),
                )
            {
                constants.insert(out.as_str(), t);
            }
            for input in &node.input {
                consumers.entry(input.as_str()).or_default().push(i);
            }
            for output in &node.output {
                producer.insert(output.as_str(), i);
            }
        }
        Walk {
            nodes: &graph.node,
            constants,
            consumers,
            producer,
            tensors: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    fn output(node: &pb::NodeProto) -> Result<&str> {
        node.output
            .first()
            .map(String::as_str)
            .with_context(|| format!("{} `{}` has no output", node.op_type, node.name))
    }

    /// The nodes reading `value`, past pass-through ops.
    fn next_nodes(&self, value: &str) -> Vec<&'a pb::NodeProto> {
        let mut out = Vec::new();
        for &i in self.consumers.get(value).into_iter().flatten() {
            let node = &self.nodes[i];
            if PASS_THROUGH.contains(&node.op_type.as_str()) {
                if let Some(o) = node.output.first() {
                    out.extend(self.next_nodes(o));
                }
            } else {
                out.push(node);
            }
        }
        out
    }

    /// The single node reading `value`, which must be one of `ops`.
    fn next(&self, value: &str, ops: &[&str]) -> Result<&'a pb::NodeProto> {
        let next = self.next_nodes(value);
        match next.as_slice() {
            [node] if ops.contains(&node.op_type.as_str()) => Ok(node),
            [node] => bail!(
                "value `{value}` goes into {} `{}`, expected {} (not an LResNet-E-IR graph, or \
                 BatchNorm folded into the convolutions)",
                node.op_type,
                node.name,
                ops.join(" or ")
            ),
            _ => bail!(
                "value `{value}` goes into {} nodes, expected one {}",
                next.len(),
                ops.join(" or ")
            ),
        }
    }

    fn constant(
        &self,
        node: &pb::NodeProto,
        index: usize,
    ) -> Result<(&'a pb::TensorProto, Vec<f32>)> {
        let name = node
            .input
            .get(index)
            .filter(|n| !n.is_empty())
            .with_context(|| format!("{} `{}` lacks input {index}", node.op_type, node.name))?;
        let tensor = self.constants.get(name.as_str()).with_context(|| {
            format!(
                "{} `{}`: input `{name}` is not a constant (weights must be initializers)",
                node.op_type, node.name
            )
        })?;
        let values = float_values(tensor).map_err(anyhow::Error::msg)?;
        Ok((tensor, values))
    }

    fn put(&mut self, path: String, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(path, TensorData::new(values, shape));
    }

    /// A bias-free, ungrouped Conv with symmetric "same" padding → (output, out channels, in
    /// channels, kernel, stride).
    fn conv(&mut self, node: &'a pb::NodeProto, path: &str) -> Result<(&'a str, [usize; 4])> {
        let (tensor, values) = self.constant(node, 1)?;
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let [out, inp, kh, kw] = dims[..] else {
            bail!(
                "Conv `{}`: weight `{}` has shape {dims:?}, expected 4-D",
                node.name,
                tensor.name
            );
        };
        if node.input.get(2).is_some_and(|b| !b.is_empty()) {
            let (_, bias) = self.constant(node, 2)?;
            if bias.iter().any(|&b| b != 0.0) {
                bail!(
                    "Conv `{}` has a bias; LResNet-E-IR convolutions have none (BatchNorm folded \
                     into the convolutions? export with BatchNorm kept)",
                    node.name
                );
            }
        }
        let ints = |name: &str| attribute(node, name).map(|a| a.ints.clone());
        let strides = ints("strides").unwrap_or(vec![1, 1]);
        let pads = ints("pads").unwrap_or(vec![0; 4]);
        let group = attribute(node, "group").map_or(1, |a| a.i);
        let (ph, pw) = ((kh / 2) as i64, (kw / 2) as i64);
        if kh != kw
            || strides.len() != 2
            || strides[0] != strides[1]
            || group != 1
            || pads != [ph, pw, ph, pw]
        {
            bail!(
                "Conv `{}`: kernel {kh}×{kw}, strides {strides:?}, pads {pads:?}, group {group}: \
                 not an LResNet-E-IR convolution",
                node.name
            );
        }
        self.put(format!("{path}.weight"), dims.clone(), values);
        Ok((Self::output(node)?, [out, inp, kh, strides[0] as usize]))
    }

    /// BatchNormalization → (output, channels).
    fn batch_norm(&mut self, node: &'a pb::NodeProto, path: &str) -> Result<(&'a str, usize)> {
        let mut parts = Vec::new();
        for i in 1..=4 {
            let (tensor, values) = self.constant(node, i)?;
            if tensor.dims.len() != 1 {
                bail!(
                    "BatchNormalization `{}`: `{}` has shape {:?}, expected (C,)",
                    node.name,
                    tensor.name,
                    tensor.dims
                );
            }
            parts.push(values);
        }
        let channels = parts[0].len();
        if parts.iter().any(|p| p.len() != channels) {
            bail!(
                "BatchNormalization `{}`: parameters of different lengths",
                node.name
            );
        }
        let stored = attribute(node, "epsilon").map_or(1e-5, |a| a.f);
        let epsilon = stored as f64;
        if (epsilon - BN_EPS).abs() > 1e-9 {
            // sqrt(var' + ours) = sqrt(var + theirs).
            for v in parts[3].iter_mut() {
                *v = (*v as f64 + epsilon - BN_EPS) as f32;
                if *v < 0.0 {
                    bail!(
                        "BatchNormalization `{}`: epsilon {stored} with a running variance below \
                         {BN_EPS} cannot be expressed with our epsilon",
                        node.name
                    );
                }
            }
            if !self.notes.iter().any(|n| n.contains("epsilon")) {
                self.notes.push(format!(
                    "BatchNorm epsilon {stored} in the file; folded into the running variances \
                     (ours is {BN_EPS})"
                ));
            }
        }
        let [gamma, beta, mean, var]: [Vec<f32>; 4] = parts.try_into().expect("four parts");
        for (name, values) in [
            ("gamma", gamma),
            ("beta", beta),
            ("running_mean", mean),
            ("running_var", var),
        ] {
            self.put(format!("{path}.{name}"), vec![channels], values);
        }
        Ok((Self::output(node)?, channels))
    }

    fn prelu(&mut self, node: &'a pb::NodeProto, path: &str, channels: usize) -> Result<&'a str> {
        let (tensor, values) = self.constant(node, 1)?;
        if values.len() != channels {
            bail!(
                "PRelu `{}`: slope `{}` has {} values for {channels} channels",
                node.name,
                tensor.name,
                values.len()
            );
        }
        self.put(format!("{path}.alpha"), vec![channels], values);
        Self::output(node)
    }

    /// Sub/Mul by constants between the input and the first Conv: must be the zoo's
    /// normalisation, which our model does itself.
    fn skip_preprocess(&mut self, mut value: &'a str) -> Result<&'a str> {
        let mut found = Vec::new();
        loop {
            let next = self.next(value, &["Sub", "Mul", "Conv"])?;
            if next.op_type == "Conv" {
                break;
            }
            let (_, c) = self.constant(next, 1)?;
            let [c] = c[..] else {
                bail!(
                    "{} `{}`: a per-channel normalisation is not supported",
                    next.op_type,
                    next.name
                );
            };
            found.push((next.op_type.clone(), c));
            value = Self::output(next)?;
        }
        let ours = [
            ("Sub".to_string(), INPUT_MEAN),
            ("Mul".to_string(), INPUT_SCALE),
        ];
        let close = found.len() == 2
            && found
                .iter()
                .zip(&ours)
                .all(|((a, x), (b, y))| a == b && (x - y).abs() < 1e-6);
        if found.is_empty() {
            self.notes.push(format!(
                "the graph does not normalise its input; the imported model takes RGB 0–255 \
                 and normalises as (x − {INPUT_MEAN}) × {INPUT_SCALE} like the zoo's"
            ));
        } else if !close {
            bail!(
                "the graph normalises its input as {found:?}; our models use (x − {INPUT_MEAN}) × \
                 {INPUT_SCALE}"
            );
        }
        Ok(value)
    }

    /// BN → Conv → BN → PRelu → Conv → BN (+ shortcut) → Add, from the unit input `x`.
    fn unit(
        &mut self,
        x: &'a str,
        bn1: &'a pb::NodeProto,
        path: &str,
    ) -> Result<(&'a str, UnitShape)> {
        let (y, _) = self.batch_norm(bn1, &format!("{path}.bn1"))?;
        let (y, [width, _, _, s1]) =
            self.conv(self.next(y, &["Conv"])?, &format!("{path}.conv1"))?;
        let (y, c) = self.batch_norm(
            self.next(y, &["BatchNormalization"])?,
            &format!("{path}.bn2"),
        )?;
        let y = self.prelu(self.next(y, &["PRelu"])?, &format!("{path}.prelu"), c)?;
        let (y, [_, _, _, stride]) =
            self.conv(self.next(y, &["Conv"])?, &format!("{path}.conv2"))?;
        let (y, _) = self.batch_norm(
            self.next(y, &["BatchNormalization"])?,
            &format!("{path}.bn3"),
        )?;
        let add = self.next(y, &["Add"])?;
        let other = add
            .input
            .iter()
            .find(|i| i.as_str() != y)
            .with_context(|| format!("Add `{}` has no second input", add.name))?;
        let downsample = if other == x {
            false
        } else {
            let sc_bn = self.producer_of(other, "BatchNormalization")?;
            let sc_conv = self.producer_of(&sc_bn.input[0], "Conv")?;
            if sc_conv.input[0] != x {
                bail!(
                    "Add `{}`: the shortcut does not start at the unit's input",
                    add.name
                );
            }
            self.conv(sc_conv, &format!("{path}.downsample.conv"))?;
            self.batch_norm(sc_bn, &format!("{path}.downsample.bn"))?;
            true
        };
        if s1 != 1 {
            bail!("unit `{path}`: its first convolution has stride {s1}, expected 1");
        }
        Ok((
            Self::output(add)?,
            UnitShape {
                width,
                stride,
                downsample,
            },
        ))
    }

    fn producer_of(&self, value: &str, op: &str) -> Result<&'a pb::NodeProto> {
        let node = self
            .producer
            .get(value)
            .map(|&i| &self.nodes[i])
            .with_context(|| format!("value `{value}` has no producer"))?;
        if node.op_type != op {
            bail!(
                "value `{value}` comes from {} `{}`, expected {op}",
                node.op_type,
                node.name
            );
        }
        Ok(node)
    }
}

struct UnitShape {
    width: usize,
    stride: usize,
    downsample: bool,
}

/// Reads the backbone out of a (repaired) LResNet-E-IR graph.
pub fn import(model: &pb::ModelProto) -> Result<Imported> {
    let graph = model.graph.as_ref().context("no graph")?;
    let mut walk = Walk::new(graph);
    let (input, _) = data_input(graph)?;
    let input: &str = graph
        .input
        .iter()
        .find(|i| i.name == input)
        .map(|i| i.name.as_str())
        .expect("data_input found it");
    let x = walk.skip_preprocess(input)?;
    let (x, [stem, in_channels, _, stride]) = walk.conv(walk.next(x, &["Conv"])?, "conv1")?;
    if in_channels != 3 || stride != 1 {
        bail!("the first Conv takes {in_channels} channels with stride {stride}; expected 3, 1");
    }
    let (x, c) = walk.batch_norm(walk.next(x, &["BatchNormalization"])?, "bn1")?;
    let mut x = walk.prelu(walk.next(x, &["PRelu"])?, "prelu", c)?;

    // Units until a BatchNorm whose output does not go into a Conv: the output block's.
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
    // A unit with a downsampling shortcut opens a stage.
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
    let (x, last) = walk.batch_norm(bn2, "bn2")?;
    let mut x = x;
    for op in ["Flatten", "Reshape"] {
        if let Ok(node) = walk.next(x, &[op]) {
            x = Walk::output(node)?;
        }
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
    let (_, embedding_size) = walk.batch_norm(
        walk.next(Walk::output(gemm)?, &["BatchNormalization"])?,
        "features",
    )?;

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
    let network = [
        Network::R18,
        Network::R34,
        Network::R50,
        Network::R100,
        Network::Tiny,
    ]
    .into_iter()
    .find(|n| n.units()[..] == units[..] && n.widths()[..] == widths[..] && stem == widths[0])
    .with_context(|| {
        format!(
            "the graph has units {units:?} with widths {widths:?} (stem {stem}); we build r18 \
                 [2,2,2,2], r34 [3,4,6,3], r50 [3,4,14,3], r100 [3,13,30,3] at widths \
                 [64,128,256,512], and tiny [1,1,1,1] at [8,16,32,64]"
        )
    })?;
    let side = INPUT_SIZE >> 4;
    if inputs != last * side * side {
        bail!(
            "Gemm `{}` takes {inputs} inputs; the last stage gives {last}×{side}×{side}",
            gemm.name
        );
    }
    Ok(Imported {
        network,
        embedding_size,
        tensors: walk.tensors,
        notes: walk.notes,
    })
}

impl Imported {
    /// The seed's config with the imported network's shape.
    pub fn config(&self) -> Config {
        Config {
            network: self.network,
            embedding_size: self.embedding_size,
            ..Config::default()
        }
    }

    /// Our backbone with the imported weights, in inference mode.
    pub fn backbone(&self, device: &Device) -> Result<IResNet> {
        let model = backbone_config(&self.config()).init(device);
        load_named(model, "", &self.tensors)
            .map(|m| m.valid())
            .map_err(anyhow::Error::msg)
    }

    /// A checkpoint holding the backbone only (step 0, no head): for `eval`, `export`, `infer`.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            meta: Meta {
                config: self.config(),
                num_classes: 0,
                step: 0,
                cursor: Cursor::default(),
                accuracy: None,
                tensors: Vec::new(),
            },
            tensors: self
                .tensors
                .iter()
                .map(|(k, v)| (format!("backbone.{k}"), v.clone()))
                .collect(),
        }
    }
}

/// Runs the file with tract and `model` on two test images (a colour ramp and a mid grey) and
/// returns the largest relative difference of their embeddings.
pub fn compare_outputs(proto: pb::ModelProto, model: &IResNet, device: &Device) -> Result<f64> {
    let mut images = Vec::with_capacity(2 * IMAGE_VALUES);
    for c in 0..3 {
        for y in 0..INPUT_SIZE {
            for x in 0..INPUT_SIZE {
                images.push(((x * 2 + y + c * 40) % 256) as f32);
            }
        }
    }
    images.extend(std::iter::repeat_n(128.0, IMAGE_VALUES));
    let file = OnnxEmbedder::from_proto(proto)?.embed(&images)?;
    let ours = Embedder::Burn {
        model: model.clone(),
        device: device.clone(),
    }
    .embed(&images)?;
    let e = file.len() / 2;
    if ours.len() != file.len() {
        bail!(
            "the file gives {e}-d embeddings, the imported model {}",
            ours.len() / 2
        );
    }
    Ok(file
        .chunks(e)
        .zip(ours.chunks(e))
        .map(|(a, b)| {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>();
            let norm = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
            (diff / norm.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max))
}
