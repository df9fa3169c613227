//! What an ONNX embedder expects of its pixels, and putting that in front of the graph so that
//! every embedder we run takes raw RGB 0–255 (what our checkpoints take).
//!
//! There are two conventions in the wild and the file does not say which it follows.
//! insightface's model zoo (`ArcFaceONNX` in model_zoo/arcface_onnx.py) tells them apart by
//! looking for Sub and Mul among the graph's first eight nodes: there, the graph normalises its
//! input itself and takes raw 0–255 (the ONNX model zoo's arcfaceresnet100-8.onnx, our export);
//! absent, the caller feeds (x − 127.5) / 127.5 (arcface_torch's torch2onnx.py, buffalo_l's
//! w600k_r50.onnx, antelopev2's glintr100.onnx). We decide the same way (by op type, where
//! insightface reads node names, which exporters choose freely), say what we decided, and let
//! `--onnx-input` override it. Channels are RGB either way, as insightface feeds them.

use std::fmt;

use anyhow::Result;
use tract_onnx::pb;

use super::proto::float_tensor;
use super::signature::embedder_input;

/// insightface's normalisation of an input that does not normalise itself: (x − 127.5) / 127.5.
pub const ZOO_MEAN: f32 = 127.5;
pub const ZOO_STD: f32 = 127.5;

/// How many of the first nodes insightface's ArcFaceONNX inspects.
const NODES_INSPECTED: usize = 8;

/// `--onnx-input`: what the pixels going into an ONNX embedder are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputConvention {
    /// As insightface decides: Sub and Mul among the graph's first nodes → raw, else
    /// normalised.
    #[default]
    Auto,
    /// RGB 0–255 goes into the graph as it is.
    Raw,
    /// RGB as (x − 127.5) / 127.5 goes into the graph (arcface_torch's exports, the
    /// insightface model zoo's recognition models).
    Normalized,
}

/// The convention a file is run with, and whether it was found or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Input {
    pub normalized: bool,
    pub detected: bool,
}

impl Input {
    /// For `--json`: "raw" or "normalized".
    pub fn name(&self) -> &'static str {
        if self.normalized { "normalized" } else { "raw" }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.normalized, self.detected) {
            (false, true) => write!(
                f,
                "input RGB 0–255 (the graph normalises it itself: Sub and Mul among its first \
                 nodes; --onnx-input overrides)"
            ),
            (true, true) => write!(
                f,
                "input RGB as (x − {ZOO_MEAN}) / {ZOO_STD} (no Sub and Mul among the graph's \
                 first nodes: insightface's convention for such files; --onnx-input overrides)"
            ),
            (false, false) => write!(f, "input RGB 0–255 (--onnx-input raw)"),
            (true, false) => write!(
                f,
                "input RGB as (x − {ZOO_MEAN}) / {ZOO_STD} (--onnx-input normalized)"
            ),
        }
    }
}

/// Whether the graph normalises its own input, as insightface's ArcFaceONNX tells.
pub fn normalises_itself(graph: &pb::GraphProto) -> bool {
    let first = &graph.node[..graph.node.len().min(NODES_INSPECTED)];
    let has = |ops: &[&str]| first.iter().any(|n| ops.contains(&n.op_type.as_str()));
    has(&["Sub"]) && has(&["Mul", "Div"])
}

/// Decides the convention and, for a normalised one, puts (x − 127.5) / 127.5 in front of the
/// graph, which then takes raw 0–255 like every embedder we run.
pub fn to_raw_input(model: &mut pb::ModelProto, choice: InputConvention) -> Result<Input> {
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no graph"))?;
    let input = match choice {
        InputConvention::Auto => Input {
            normalized: !normalises_itself(graph),
            detected: true,
        },
        InputConvention::Raw => Input {
            normalized: false,
            detected: false,
        },
        InputConvention::Normalized => Input {
            normalized: true,
            detected: false,
        },
    };
    if input.normalized {
        let data = embedder_input(graph)?;
        let (mean, std) = ("arcface_input_mean", "arcface_input_std");
        let (centred, normalised) = ("arcface_input_centred", "arcface_input_normalised");
        for node in graph.node.iter_mut() {
            for i in node.input.iter_mut().filter(|i| **i == data) {
                *i = normalised.to_string();
            }
        }
        let op = |op: &str, inputs: [&str; 2], output: &str| pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        };
        graph.node.splice(
            0..0,
            [
                op("Sub", [&data, mean], centred),
                op("Div", [centred, std], normalised),
            ],
        );
        graph.initializer.push(float_tensor(mean, &[], &[ZOO_MEAN]));
        graph.initializer.push(float_tensor(std, &[], &[ZOO_STD]));
    }
    Ok(input)
}
