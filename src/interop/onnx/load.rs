//! Reading ONNX files, and repairing the model zoo's known defects so that tract (and any
//! strict runtime) accepts them: `arcfaceresnet100-8.onnx`, converted from MXNet, has
//! BatchNormalization nodes with `spatial=0` but per-channel (C,) parameters, and PRelu slopes
//! of shape (C,) applied to [N,C,H,W] inputs, where ONNX's right-aligned broadcasting needs
//! (C,1,1).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use prost::Message;
use tract_onnx::pb;

use super::input::{Input, InputConvention, to_raw_input};
use super::proto::attribute;
use super::signature::{embedder_input, embedder_output};

/// The parsed protobuf of an ONNX file; the error names the file.
pub fn read_model(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("{}: not an ONNX model ({e})", path.display()))?;
    if model.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        bail!("{}: not an ONNX model (no graph nodes)", path.display());
    }
    Ok(model)
}

/// The graph, which `read_model` has checked is there.
pub fn graph(model: &pb::ModelProto) -> &pb::GraphProto {
    model.graph.as_ref().expect("read_model checked the graph")
}

/// Rank of every value we can tell from the input's rank 4: elementwise ops, Conv and
/// BatchNormalization keep it, Flatten and Gemm make it 2. Unknown ops end the tracking.
fn value_ranks(graph: &pb::GraphProto) -> HashMap<String, usize> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut rank: HashMap<String, usize> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .filter_map(|i| {
            let dims = match i.r#type.as_ref()?.value.as_ref()? {
                pb::type_proto::Value::TensorType(t) => t.shape.as_ref()?.dim.len(),
            };
            Some((i.name.clone(), dims))
        })
        .collect();
    for node in &graph.node {
        let first = node.input.first().and_then(|i| rank.get(i)).copied();
        let out = match (node.op_type.as_str(), first) {
            ("Flatten" | "Gemm", Some(_)) => Some(2),
            (
                "Conv" | "BatchNormalization" | "PRelu" | "Relu" | "Add" | "Sub" | "Mul"
                | "Dropout" | "Identity",
                Some(r),
            ) => Some(r),
            _ => None,
        };
        if let (Some(r), Some(o)) = (out, node.output.first()) {
            rank.insert(o.clone(), r);
        }
    }
    rank
}

/// Rewrites the zoo's defects in place and says what it changed (empty for a clean file).
/// A BatchNormalization with `spatial=0` and parameters of more than one dimension really is
/// per-activation, which we do not run: that is an error naming the node.
pub fn repair_zoo_defects(model: &mut pb::ModelProto) -> Result<Vec<String>> {
    let Some(graph) = model.graph.as_mut() else {
        bail!("no graph");
    };
    let ranks = value_ranks(graph);
    let mut fixes = Vec::new();
    let mut reshape: Vec<(String, Vec<i64>)> = Vec::new();
    let dims_of = |graph: &pb::GraphProto, name: &str| {
        graph
            .initializer
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.dims.clone())
    };
    for i in 0..graph.node.len() {
        let node = &graph.node[i];
        match node.op_type.as_str() {
            "BatchNormalization" => {
                let Some(spatial) = attribute(node, "spatial").map(|a| a.i) else {
                    continue;
                };
                if spatial == 0 {
                    let scale = node.input.get(1).and_then(|n| dims_of(graph, n));
                    if scale.as_ref().is_some_and(|d| d.len() != 1) {
                        bail!(
                            "BatchNormalization `{}`: spatial=0 with parameters of shape {:?} \
                             (per-activation statistics) is not supported",
                            node.name,
                            scale.unwrap_or_default()
                        );
                    }
                    fixes.push(format!(
                        "BatchNormalization `{}`: spatial=0 with per-channel parameters, read as \
                         spatial",
                        node.name
                    ));
                }
                graph.node[i].attribute.retain(|a| a.name != "spatial");
            }
            "PRelu" => {
                let Some(slope) = node.input.get(1) else {
                    continue;
                };
                let input_rank = node.input.first().and_then(|x| ranks.get(x)).copied();
                if let (Some(dims), Some(rank)) = (dims_of(graph, slope), input_rank)
                    && dims.len() == 1
                    && dims[0] > 1
                    && rank > 2
                {
                    let mut new = dims.clone();
                    new.extend(std::iter::repeat_n(1, rank - 2));
                    fixes.push(format!(
                        "PRelu `{}`: slope `{slope}` of shape {dims:?} reshaped to {new:?}",
                        node.name
                    ));
                    reshape.push((slope.clone(), new));
                }
            }
            _ => {}
        }
    }
    for (name, dims) in reshape {
        if let Some(t) = graph.initializer.iter_mut().find(|t| t.name == name) {
            t.dims = dims.clone();
        }
        // IR 3 files list initializers as inputs too; keep their declared shape in step.
        if let Some(pb::type_proto::Value::TensorType(t)) = graph
            .input
            .iter_mut()
            .find(|i| i.name == name)
            .and_then(|i| i.r#type.as_mut())
            .and_then(|t| t.value.as_mut())
            && let Some(shape) = t.shape.as_mut()
        {
            shape.dim = dims
                .iter()
                .map(|&d| pb::tensor_shape_proto::Dimension {
                    denotation: String::new(),
                    value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
                })
                .collect();
        }
    }
    Ok(fixes)
}

/// What loading did to a file before it runs: the zoo's repairs, and the input convention put
/// in front of the graph.
pub struct Prepared {
    pub repairs: Vec<String>,
    pub input: Input,
}

impl Prepared {
    /// What the user should read about the file: the repairs, then its input.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.repairs.clone();
        notes.push(self.input.to_string());
        notes
    }
}

/// Everything between reading a file and running or importing it: the zoo's defects repaired,
/// one image input and one output checked, and the input convention decided and put in front
/// of the graph ([`to_raw_input`]), so that the graph takes raw RGB 0–255.
pub fn prepare(model: &mut pb::ModelProto, input: InputConvention) -> Result<Prepared> {
    let repairs = repair_zoo_defects(model)?;
    embedder_input(graph(model))?;
    embedder_output(graph(model))?;
    let input = to_raw_input(model, input)?;
    Ok(Prepared { repairs, input })
}
