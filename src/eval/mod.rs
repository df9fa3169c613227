//! Evaluation: insightface's verification protocol on embeddings of a model.

pub mod embed;
pub mod roc;
pub mod verify;
pub mod ijb;
