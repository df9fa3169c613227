//! Exporting trained weights for other tools.

pub mod safetensors;
