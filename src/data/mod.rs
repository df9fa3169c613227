//! Datasets in insightface's on-disk formats.

pub mod bin;
pub mod dataset;
pub mod irheader;
pub mod property;
pub mod recordio;
