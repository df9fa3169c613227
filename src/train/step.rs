//! One optimizer step of one rank, as DDP runs it: forward and backward on this rank's batch,
//! the gradients averaged over the ranks, one identical SGD update everywhere. The head is
//! replicated and data parallel here: its gradient is averaged with the backbone's.

use anyhow::Result;
use burn::optim::GradientsParams;
use burn::tensor::Device;

use super::sgd::global_grad_norm;
use super::state::State;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::dist::Group;
use crate::model::memory_format::channels_last;

/// Seed path of the per-step backend seed (dropout).
const STEP_SEED: u64 = 3;

/// What one step measured.
pub struct StepOutcome {
    /// The mean loss over the ranks.
    pub loss: f64,
    /// The norm of the averaged gradient (before clipping).
    pub grad_norm: f64,
}

/// Why a step did not update the model.
pub enum StepFailure {
    /// The loss (mean over the ranks) or the gradient norm is not finite; every rank sees the
    /// same value and stops together.
    NotFinite {
        what: String,
        advice: &'static str,
    },
    Error(anyhow::Error),
}

impl From<anyhow::Error> for StepFailure {
    fn from(e: anyhow::Error) -> Self {
        StepFailure::Error(e)
    }
}

/// Forward, backward, gradient averaging and the SGD update at learning rate `lr` on `batch`;
/// `device` is this rank's (autodiff). A failed step ends the run, and its state with it.
pub fn one_step(
    mut state: State,
    batch: &Batch,
    config: &Config,
    group: &Group,
    device: &Device,
    lr: f64,
) -> Result<(State, StepOutcome), StepFailure> {
    // Dropout masks from (seed, step, rank): a resumed run draws the same ones.
    let mut path = vec![STEP_SEED, state.step as u64];
    if group.rank() > 0 {
        path.push(group.rank() as u64);
    }
    device.seed(crate::seed::mix(config.seed, &path));
    let images = channels_last(batch.images_tensor(device), config.channels_last);
    let loss = state
        .model
        .loss(images, batch.labels_tensor(device), config.precision);
    let local = loss.clone().into_scalar::<f32>() as f64;
    let mut grads = loss.backward();
    let mut grads = GradientsParams::from_module(&mut grads, &state.model);
    group.average_gradients(&state.model, &mut grads)?;
    let loss = group.mean(&[local], "all-reduce of the loss")?[0];
    if !loss.is_finite() {
        return Err(StepFailure::NotFinite {
            what: format!("loss is {loss}"),
            advice: "a lower lr, warmup_epoch >= 1, clip_grad_norm = 5, or check the data with `arcface inspect --verify`",
        });
    }
    let grad_norm = global_grad_norm(&state.model, &grads);
    if !grad_norm.is_finite() {
        return Err(StepFailure::NotFinite {
            what: format!("gradient norm is {grad_norm}"),
            advice: "a lower lr or clip_grad_norm = 5",
        });
    }
    let scale = config
        .clip_grad_norm
        .map_or(1.0, |c| (c / (grad_norm + 1e-6)).min(1.0));
    state.model = state.sgd.step(state.model, &mut grads, lr, scale, "");
    state.step += 1;
    state.cursor = batch.next;
    Ok((state, StepOutcome { loss, grad_norm }))
}
