//! Running ONNX embedders on the CPU with tract (pure Rust): the plan over a prepared file
//! (src/interop/onnx/ reads and repairs it), PRelu as tract fuses it, and our Winograd
//! convolutions where they beat tract's im2col (docs/HISTORY.md).

pub mod op_profile;
pub mod prelu;
pub mod run;
pub mod winograd;

pub use run::{ConvAlgorithm, OnnxEmbedder, spreads_each_image};
