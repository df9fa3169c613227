//! arcface: train face-recognition embedders with the ArcFace loss on burn.
//!
//! Data flows one way: data → model → head/loss → train loop → eval → checkpoint → export/infer.
//! Model code is backend-neutral; the backend and device are chosen only in [`device`].

pub mod arcface_torch;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod embedder;
pub mod eval;
pub mod export;
pub mod fs;
pub mod imported;
pub mod infer;
pub mod model;
pub mod module_path;
pub mod onnx;
pub mod profile;
pub mod progress;
pub mod seed;
pub mod signals;
pub mod train;

pub use config::Config;
