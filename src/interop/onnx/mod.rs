//! ONNX files: reading an embedder's file and repairing the model zoo's known defects (load),
//! its input convention (input), its signature, our opset-8 writer (export, export_vit, over
//! graph_builder), and importing an LResNet-E-IR, MobileFaceNet or ViT file's weights into our
//! backbone (import, import_mobilefacenet, import_vit). tract runs the files (src/tract/).
//!
//! burn-onnx cannot write the file users expect (opset 18 only, no PRelu, automatic names), so
//! the writer is ours, over tract-onnx's protobuf types.

pub mod export;
mod export_vit;
mod graph_builder;
mod graph_walk;
pub mod import;
mod import_mobilefacenet;
mod import_vit;
pub mod input;
pub mod load;
pub mod proto;
pub mod signature;

pub use export::{Batch, backbone_to_onnx};
pub use input::InputConvention;
