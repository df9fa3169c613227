//! Following an ONNX graph's data flow from value to value and reading the layers (Conv,
//! BatchNormalization, PRelu, and an LResNet-E-IR unit of them) out of it, as our backbone's
//! tensors.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;
use tract_onnx::pb;

use super::proto::{attribute, float_values};
use crate::arcface_torch::move_epsilon;
use crate::model::iresnet::BN_EPS;

/// Ops that carry a value through unchanged at inference.
pub(super) const PASS_THROUGH: [&str; 2] = ["Identity", "Dropout"];

pub(super) struct Walk<'a> {
    nodes: &'a [pb::NodeProto],
    constants: HashMap<&'a str, &'a pb::TensorProto>,
    consumers: HashMap<&'a str, Vec<usize>>,
    producer: HashMap<&'a str, usize>,
    pub tensors: BTreeMap<String, TensorData>,
    pub notes: Vec<String>,
    /// Grouped convolutions and any symmetric padding are read (MobileFaceNet's); otherwise
    /// only LResNet-E-IR's ungrouped "same"-padded ones.
    pub grouped_convolutions: bool,
}

impl<'a> Walk<'a> {
    pub fn new(graph: &'a pb::GraphProto) -> Self {
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
            grouped_convolutions: false,
        }
    }

    pub fn output(node: &pb::NodeProto) -> Result<&str> {
        node.output
            .first()
            .map(String::as_str)
            .with_context(|| format!("{} `{}` has no output", node.op_type, node.name))
    }

    /// The nodes reading `value`, past pass-through ops. A Shape node reads only the value's
    /// shape (MXNet's exporter computes a Reshape's target from it): not a use of its values.
    pub fn next_nodes(&self, value: &str) -> Vec<&'a pb::NodeProto> {
        let mut out = Vec::new();
        for &i in self.consumers.get(value).into_iter().flatten() {
            let node = &self.nodes[i];
            if node.op_type == "Shape" {
                continue;
            }
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
    pub fn next(&self, value: &str, ops: &[&str]) -> Result<&'a pb::NodeProto> {
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

    pub fn constant(
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

    pub fn put(&mut self, path: String, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(path, TensorData::new(values, shape));
    }

    /// An ungrouped Conv with symmetric "same" padding (or, with `grouped_convolutions`, any
    /// group count and equal padding on every side) → (output, [out channels, in channels per
    /// group, kernel, stride], its bias if it has one).
    pub fn conv(&mut self, node: &'a pb::NodeProto, path: &str) -> Result<ConvRead<'a>> {
        let (tensor, values) = self.constant(node, 1)?;
        let dims: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let [out, inp, kh, kw] = dims[..] else {
            bail!(
                "Conv `{}`: weight `{}` has shape {dims:?}, expected 4-D",
                node.name,
                tensor.name
            );
        };
        let bias = if node.input.get(2).is_some_and(|b| !b.is_empty()) {
            let (b, bias) = self.constant(node, 2)?;
            if bias.len() != out {
                bail!(
                    "Conv `{}`: bias `{}` has {} values for {out} output channels",
                    node.name,
                    b.name,
                    bias.len()
                );
            }
            Some(bias)
        } else {
            None
        };
        let ints = |name: &str| attribute(node, name).map(|a| a.ints.clone());
        let strides = ints("strides").unwrap_or(vec![1, 1]);
        let pads = ints("pads").unwrap_or(vec![0; 4]);
        let group = attribute(node, "group").map_or(1, |a| a.i);
        let (ph, pw) = ((kh / 2) as i64, (kw / 2) as i64);
        let padding_ok = if self.grouped_convolutions {
            pads.len() == 4 && pads.iter().all(|&p| p == pads[0])
        } else {
            group == 1 && pads == [ph, pw, ph, pw]
        };
        if kh != kw || strides.len() != 2 || strides[0] != strides[1] || !padding_ok {
            bail!(
                "Conv `{}`: kernel {kh}×{kw}, strides {strides:?}, pads {pads:?}, group {group}: \
                 not {} convolution",
                node.name,
                if self.grouped_convolutions {
                    "a MobileFaceNet"
                } else {
                    "an LResNet-E-IR"
                }
            );
        }
        self.put(format!("{path}.weight"), dims.clone(), values);
        Ok((
            Self::output(node)?,
            [out, inp, kh, strides[0] as usize],
            bias,
        ))
    }

    /// A Conv and the BatchNorm after it → (the BatchNorm's output, the Conv's shape). Where an
    /// exporter folded the BatchNorm into the Conv (torch.onnx.export in eval mode), the Conv
    /// has a bias and no BatchNorm follows: the bias becomes a BatchNorm with γ = 1, β = bias,
    /// mean 0 and variance 1 − ε, which computes exactly the Conv's output.
    pub fn conv_bn(
        &mut self,
        node: &'a pb::NodeProto,
        conv_path: &str,
        bn_path: &str,
    ) -> Result<(&'a str, [usize; 4])> {
        let (y, shape, bias) = self.conv(node, conv_path)?;
        let next = self.next_nodes(y);
        if let [bn] = next.as_slice()
            && bn.op_type == "BatchNormalization"
        {
            let (out, _) = self.batch_norm(bn, bn_path)?;
            if let Some(bias) = bias {
                // BN(Wx + b) with mean μ is BN(Wx) with mean μ − b.
                let key = format!("{bn_path}.running_mean");
                let mean = self.tensors[&key].try_to_vec::<f32>().expect("read as f32");
                let shifted: Vec<f32> = mean.iter().zip(&bias).map(|(m, b)| m - b).collect();
                self.put(key, vec![shifted.len()], shifted);
            }
            return Ok((out, shape));
        }
        let channels = shape[0];
        let beta = bias.unwrap_or_else(|| vec![0.0; channels]);
        let variance = (1.0 - BN_EPS) as f32;
        for (name, values) in [
            ("gamma", vec![1.0; channels]),
            ("beta", beta),
            ("running_mean", vec![0.0; channels]),
            ("running_var", vec![variance; channels]),
        ] {
            self.put(format!("{bn_path}.{name}"), vec![channels], values);
        }
        if !self
            .notes
            .iter()
            .any(|n| n.contains("folded into the convolutions"))
        {
            self.notes.push(
                "BatchNorm folded into the convolutions (a Conv with a bias and no BatchNorm \
                 after it): each bias kept as a BatchNorm with γ = 1, β = bias, mean 0"
                    .into(),
            );
        }
        Ok((y, shape))
    }

    /// BatchNormalization → (output, channels).
    pub fn batch_norm(&mut self, node: &'a pb::NodeProto, path: &str) -> Result<(&'a str, usize)> {
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
            let (head, tail) = parts.split_at_mut(3);
            if move_epsilon(&mut head[0], &mut tail[0], epsilon, BN_EPS) {
                self.notes.push(format!(
                    "BatchNormalization `{}`: running variances below {:.0e}: γ rescaled there \
                     instead",
                    node.name,
                    BN_EPS - epsilon
                ));
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

    pub fn prelu(
        &mut self,
        node: &'a pb::NodeProto,
        path: &str,
        channels: usize,
    ) -> Result<&'a str> {
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

    /// The normalisation between the raw input and the first Conv: a chain of Sub, Mul and Div
    /// by scalars (or by per-channel constants that are all equal), which comes to
    /// (x − mean) × scale → (the Conv's input, mean, scale). Nothing → (x, 0, 1).
    pub fn preprocess(&self, mut value: &'a str) -> Result<(&'a str, f64, f64)> {
        let (mut mean, mut scale) = (0.0f64, 1.0f64);
        loop {
            let next = self.next(value, &["Sub", "Mul", "Div", "Conv"])?;
            if next.op_type == "Conv" {
                return Ok((value, mean, scale));
            }
            if next.input.first().map(String::as_str) != Some(value) {
                bail!(
                    "{} `{}`: the image is its second operand, not a normalisation",
                    next.op_type,
                    next.name
                );
            }
            let (_, c) = self.constant(next, 1)?;
            let Some(&first) = c.first().filter(|&&f| c.iter().all(|&v| v == f)) else {
                bail!(
                    "{} `{}`: a normalisation that differs between channels is not supported \
                     (our backbone normalises all three alike)",
                    next.op_type,
                    next.name
                );
            };
            let c = first as f64;
            match next.op_type.as_str() {
                // (x − m)·s − c = (x − (m + c/s))·s
                "Sub" => mean += c / scale,
                "Mul" => scale *= c,
                _ => scale /= c,
            }
            value = Self::output(next)?;
        }
    }

    /// BN → Conv → BN → PRelu → Conv → BN (+ shortcut) → Add, from the unit input `x`.
    pub fn unit(
        &mut self,
        x: &'a str,
        bn1: &'a pb::NodeProto,
        path: &str,
    ) -> Result<(&'a str, UnitShape)> {
        let (y, _) = self.batch_norm(bn1, &format!("{path}.bn1"))?;
        let (y, [width, _, _, s1]) = self.conv_bn(
            self.next(y, &["Conv"])?,
            &format!("{path}.conv1"),
            &format!("{path}.bn2"),
        )?;
        let c = width;
        let y = self.prelu(self.next(y, &["PRelu"])?, &format!("{path}.prelu"), c)?;
        let (y, [_, _, _, stride]) = self.conv_bn(
            self.next(y, &["Conv"])?,
            &format!("{path}.conv2"),
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
            // Conv → BatchNorm, or the Conv alone where the BatchNorm was folded into it.
            let sc_conv = match self.producer_of(other, "Conv") {
                Ok(conv) => conv,
                Err(_) => {
                    let sc_bn = self.producer_of(other, "BatchNormalization")?;
                    self.producer_of(&sc_bn.input[0], "Conv")?
                }
            };
            if sc_conv.input[0] != x {
                bail!(
                    "Add `{}`: the shortcut does not start at the unit's input",
                    add.name
                );
            }
            self.conv_bn(
                sc_conv,
                &format!("{path}.downsample.conv"),
                &format!("{path}.downsample.bn"),
            )?;
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

    pub fn producer_of(&self, value: &str, op: &str) -> Result<&'a pb::NodeProto> {
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

/// A Conv's output, [out channels, in channels, kernel, stride], and its bias if it has one.
type ConvRead<'a> = (&'a str, [usize; 4], Option<Vec<f32>>);

pub(super) struct UnitShape {
    pub width: usize,
    pub stride: usize,
    pub downsample: bool,
}
