//! Validation during training: every target with an inference copy of the backbone.

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Device;

use crate::data::bin::PairSet;
use crate::embedder::{BurnOptions, Embedder};
use crate::eval::embed::{TargetResult, evaluate};
use crate::model::Backbone;

/// Runs validation on every target with an inference copy of the backbone, in fp32 as
/// arcface_torch's `CallBackVerification` (outside autocast), with the training's memory
/// layout (`channels_last`: the same values, the kernels of the training step).
pub fn validate(
    backbone: &Backbone,
    targets: &[(String, PairSet)],
    batch: usize,
    channels_last: bool,
    device: &Device,
) -> Result<Vec<TargetResult>> {
    let options = BurnOptions {
        channels_last,
        ..BurnOptions::default()
    };
    let embedder = Embedder::burn_with(backbone.valid(), device, options);
    targets
        .iter()
        .map(|(name, set)| {
            evaluate(&embedder, set, name, batch).with_context(|| format!("validation {name}"))
        })
        .collect()
}

pub fn mean_accuracy(results: &[TargetResult]) -> Option<f64> {
    (!results.is_empty())
        .then(|| results.iter().map(|r| r.accuracy).sum::<f64>() / results.len() as f64)
}
