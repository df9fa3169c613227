//! Evaluation: insightface's verification protocol.

pub mod verify;
