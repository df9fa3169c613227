//! Following an ONNX graph's data flow from value to value and reading the layers (Conv,
//! BatchNormalization, PRelu, and an LResNet-E-IR unit of them) out of it, as our backbone's
//! tensors.

mod layers;

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;
use tract_onnx::pb;

use super::proto::{attribute, float_values};

/// Ops that carry a value through unchanged at inference.
pub(super) const PASS_THROUGH: [&str; 2] = ["Identity", "Dropout"];

pub(super) struct Walk<'a> {
    pub(super) nodes: &'a [pb::NodeProto],
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
            // PyTorch's exporter shares equal initializers (a fresh model's LayerNorm γs) and
            // hands each use its own Identity of the one.
            if PASS_THROUGH.contains(&node.op_type.as_str())
                && let (Some(input), Some(out)) = (node.input.first(), node.output.first())
                && let Some(&t) = constants.get(input.as_str())
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

    /// The constant (initializer, Constant node, or an Identity of one) named `value`.
    pub fn constant_named(&self, value: &str) -> Option<&'a pb::TensorProto> {
        self.constants.get(value).copied()
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
        let values = float_values(tensor)?;
        Ok((tensor, values))
    }

    pub fn put(&mut self, path: String, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(path, TensorData::new(values, shape));
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
