//! Inference on photos: MTCNN detection, 5-point alignment onto the 112×112 template, then an
//! embedder (checkpoint or ONNX).

pub mod align;
pub mod mtcnn;
pub mod pipeline;
pub mod resize;

pub use align::{TEMPLATE, align_face};
pub use mtcnn::{Face, Mtcnn, MtcnnConfig};
pub use pipeline::{FaceResult, ImageResult, Pipeline, cosine, read_image};
