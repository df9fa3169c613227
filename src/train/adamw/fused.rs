//! [`AdamW::step`] on LibTorch: the whole model in a few launches of libtorch's fused AdamW
//! kernel (`torch.optim.AdamW(fused=True)`), in place, as PyTorch updates a module's parameters.
//! The generic path costs a dozen elementwise kernels per parameter (the decay, two moments,
//! the square root, the bias corrections, the division), each a launch on a GPU. Same
//! arithmetic, same moments (flat, by path), so checkpoints and resume are unchanged.
#![allow(deprecated)] // burn-tch is deprecated upstream; see device.rs.

use burn::backend::LibTorch;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn_tch::TchTensor;
use burn_tch::fused::{AdamWStep, adamw_in_place};

use super::super::in_place::{Entry, libtorch_parameters, refused, weights_and_grads};
use super::super::update::is_norm_or_prelu;
use super::AdamW;

/// The moment of `entry` in `moments` as a libtorch tensor (zeros where there is none yet:
/// the first update from zeros is the first update from none).
fn moment(
    moments: &mut std::collections::BTreeMap<String, Tensor<1>>,
    entry: &Entry,
) -> Result<TchTensor, String> {
    let buffer = moments
        .entry(entry.path.clone())
        .or_insert_with(|| Tensor::<1>::zeros([entry.numel], &entry.device));
    buffer
        .clone()
        .try_into_primitive::<LibTorch>()
        .map_err(|error| format!("a moment of {} off LibTorch: {error:?}", entry.path))
}

/// Steps `module` in place on LibTorch; false (and nothing changed) where a parameter is not a
/// LibTorch tensor or libtorch's kernels are off.
pub(super) fn step_in_place<M: Module>(
    adamw: &mut AdamW,
    module: &M,
    grads: &GradientsParams,
    lr: f64,
    grad_scale: f64,
    t: u64,
    prefix: &str,
) -> bool {
    let Some(entries) = libtorch_parameters(module, grads, prefix) else {
        return false;
    };
    let settings = adamw.settings.clone();
    // One fused call per weight decay: [none, the settings'].
    let mut groups: [Vec<&Entry>; 2] = Default::default();
    for e in &entries {
        let decay = !(settings.no_decay_on_norm_and_prelu && is_norm_or_prelu(&e.path));
        groups[decay as usize].push(e);
    }
    let mut written = false;
    for (decay, group) in groups.iter().enumerate() {
        if group.is_empty() {
            continue;
        }
        let moments: Result<Vec<_>, String> = group
            .iter()
            .map(|e| {
                Ok((
                    moment(&mut adamw.exp_avg, e)?,
                    moment(&mut adamw.exp_avg_sq, e)?,
                ))
            })
            .collect();
        let step = AdamWStep {
            lr,
            betas: settings.betas,
            weight_decay: if decay == 1 {
                settings.weight_decay
            } else {
                0.0
            },
            eps: settings.eps,
            step: t,
            grad_scale,
        };
        let outcome = moments.and_then(|moments| {
            let (exp_avgs, exp_avg_sqs): (Vec<_>, Vec<_>) = moments.into_iter().unzip();
            let (params, grads_of) = weights_and_grads(group);
            adamw_in_place(&params, &grads_of, &exp_avgs, &exp_avg_sqs, &step)
        });
        if let Err(message) = outcome {
            // The zero moments just added are the same as none for the generic step.
            return refused(written, "AdamW", &message);
        }
        written = true;
    }
    true
}
