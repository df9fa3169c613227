//! arcface: train face-recognition embedders with the ArcFace loss on burn.
//!
//! docs/ARCHITECTURE.md follows a record to a gradient step and a photo to an embedding.
//! Model code is backend-neutral; the backend and device are chosen only in [`device`].

// The rooms, from the bottom up: each imports only rooms listed before it
// (docs/ARCHITECTURE.md; tests/architecture.rs holds the code to it).
// Foundations, which import nothing of ours.
pub mod device;
pub mod fs;
pub mod module_path;
pub mod picture;
pub mod profile;
pub mod progress;
pub mod seed;
pub mod signals;
// Records, images and verification pairs.
pub mod data;
// Backbones and the margin-softmax head, backend-neutral.
pub mod model;
// A run's settings: the TOML file, checked.
pub mod config;
// Our checkpoint files.
pub mod checkpoint;
// Several processes as one: c10d process groups, launch, DDP.
pub mod distributed;
// Other tools' files: ONNX, arcface_torch's names and .pth, safetensors.
pub mod interop;
// Running ONNX files with tract.
pub mod tract;
// Faces in, embeddings out, from a checkpoint or an ONNX file.
pub mod embedder;
// Photos to aligned faces (MTCNN, similarity transform).
pub mod infer;
// Verification (LFW, CFP, AgeDB) and IJB-B/C.
pub mod eval;
// The training loop and its pieces.
pub mod train;
// Throughput measurements.
pub mod bench;

pub use config::Config;
