//! Datasets in insightface's on-disk formats.

pub mod property;
