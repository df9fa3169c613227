//! Datasets in insightface's on-disk formats.

pub mod augment;
pub mod bin;
pub mod dataset;
pub mod grid;
pub mod image;
pub mod inspect;
pub mod irheader;
pub mod loader;
pub mod pack;
pub mod pickle;
pub mod property;
pub mod recordio;
pub mod synth;
