//! Running ONNX embedders on the CPU with tract (pure Rust): the plan over a prepared file
//! (src/interop/onnx/ reads and repairs it), PRelu as tract fuses it, and our convolutions
//! where they beat tract's (Winograd for 3×3, one matrix product for 1×1, direct for
//! depthwise and few-channel groups; docs/HISTORY.md).

#[cfg(test)]
mod conv_tests;
mod eval;
mod fusion;
pub mod grouped;
pub mod op_profile;
pub mod pointwise;
mod pointwise_kernel;
pub mod prelu;
pub mod run;
pub mod winograd;

pub use run::{ConvAlgorithm, OnnxEmbedder, Rewrites, spreads_each_image};
