//! An embedder's signature: the graph's one image input, declared [N,3,112,112] where it is
//! declared at all, and its one output. Reading a file (load.rs), fixing its input convention
//! (input.rs) and importing its weights (import.rs) all start here.

use anyhow::{Result, bail};
use tract_onnx::pb;

use crate::model::iresnet::INPUT_SIZE;

/// The name of the graph's one output.
pub fn embedder_output(graph: &pb::GraphProto) -> Result<String> {
    match graph.output.as_slice() {
        [output] => Ok(output.name.clone()),
        outputs => bail!(
            "the graph has {} outputs ({}); an embedder has one",
            outputs.len(),
            outputs
                .iter()
                .map(|o| format!("`{}`", o.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The name of the graph's image input, checked to be declared [N,3,112,112] where its
/// dimensions are declared at all: what tract and the import both need of an embedder.
pub fn embedder_input(graph: &pb::GraphProto) -> Result<String> {
    let (input, dims) = data_input(graph)?;
    let expected = [3, INPUT_SIZE as i64, INPUT_SIZE as i64];
    if dims.len() != 4
        || dims[1..]
            .iter()
            .zip(expected)
            .any(|(d, e)| d.is_some_and(|d| d != e))
    {
        let shown: Vec<String> = dims
            .iter()
            .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
            .collect();
        bail!(
            "input `{input}` has shape [{}]; a face embedder takes [N,3,112,112]",
            shown.join(",")
        );
    }
    Ok(input)
}

/// The one graph input that is not an initializer, with its declared dims (None for a
/// symbolic or missing dimension).
pub fn data_input(graph: &pb::GraphProto) -> Result<(String, Vec<Option<i64>>)> {
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        bail!(
            "the graph has {} inputs ({}); an embedder has one image input",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let dims = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    Ok((input.name.clone(), dims))
}
