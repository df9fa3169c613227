//! Other tools' files, read and written: ONNX (the model zoo's, arcface_torch's torch2onnx, our
//! opset-8 export), arcface_torch's names and .pth checkpoints, safetensors. Everything here is
//! about formats and name mappings; running an ONNX file is tract's (src/tract/), and turning
//! any model into embeddings is the embedder's (src/embedder.rs).

pub mod arcface_torch;
pub mod imported;
pub mod onnx;
pub mod safetensors;

pub use imported::Imported;
