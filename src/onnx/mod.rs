//! ONNX: our opset-8 embedder writer, the zoo-tolerant reader, tract inference, and import of
//! an LResNet-E-IR or MobileFaceNet file's weights into our model.
//!
//! burn-onnx cannot write the file users expect (opset 18 only, no PRelu, automatic names), so
//! the writer is ours, over tract-onnx's protobuf types; tract runs the files.

pub mod export;
pub mod import;
mod import_mbf;
pub mod input;
pub mod load;
pub mod op_profile;
pub mod prelu;
pub mod proto;
pub mod run;
mod walk;
pub mod winograd;

pub use export::{Batch, backbone_to_onnx};
pub use input::InputConvention;
pub use run::{ConvAlgorithm, OnnxEmbedder, spreads_each_image};
