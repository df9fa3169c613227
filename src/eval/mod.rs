//! Evaluation: insightface's verification protocol on embeddings of a model.

pub mod embed;
pub mod ijb;
pub mod roc;
pub mod verify;
