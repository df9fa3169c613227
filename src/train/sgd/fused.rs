//! [`Sgd::step`] on LibTorch: the whole model in a few launches of libtorch's fused SGD kernel
//! (`torch.optim.SGD(fused=True)`), in place, as PyTorch updates a module's parameters. The
//! generic path costs six elementwise kernels per parameter: ~2,800 launches per r100 step,
//! which left the GPU idle while the CPU queued them (docs/HISTORY.md). Same arithmetic,
//! same momentum buffers (flat, by path), so checkpoints and resume are unchanged.
#![allow(deprecated)] // burn-tch is deprecated upstream; see device.rs.

use burn::backend::LibTorch;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn_tch::fused::{SgdStep, sgd_in_place};

use super::super::in_place::{Entry, libtorch_parameters, refused, weights_and_grads};
use super::super::update::is_norm_or_prelu;
use super::{Sgd, SgdSettings};

/// Steps `module` in place on LibTorch; false (and nothing changed) where a parameter is not a
/// LibTorch tensor or libtorch's kernels are off.
pub(super) fn step_in_place<M: Module>(
    sgd: &mut Sgd,
    settings: &SgdSettings,
    module: &M,
    grads: &GradientsParams,
    lr: f64,
    grad_scale: f64,
    prefix: &str,
) -> bool {
    let Some(entries) = libtorch_parameters(module, grads, prefix) else {
        return false;
    };
    // One fused call per (weight decay, first step) group.
    let mut groups: [[Vec<&Entry>; 2]; 2] = Default::default();
    for e in &entries {
        let decay = !(settings.no_decay_on_norm_and_prelu && is_norm_or_prelu(&e.path));
        let first = settings.momentum != 0.0 && !sgd.momentum.contains_key(&e.path);
        groups[decay as usize][first as usize].push(e);
    }
    let mut written = false;
    for (decay, by_first) in groups.iter().enumerate() {
        for (first, group) in by_first.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let mut buffers = Vec::new();
            let mut refused_buffer = None;
            if settings.momentum != 0.0 {
                for e in group {
                    let buffer = sgd.momentum.entry(e.path.clone()).or_insert_with(|| {
                        // Written, not read, on a first step.
                        Tensor::<1>::zeros([e.numel], &e.device)
                    });
                    match buffer.clone().try_into_primitive::<LibTorch>() {
                        Ok(b) => buffers.push(b),
                        Err(error) => {
                            refused_buffer =
                                Some(format!("momentum of {} off LibTorch: {error:?}", e.path))
                        }
                    }
                }
            }
            let step = SgdStep {
                weight_decay: if decay == 1 {
                    settings.weight_decay
                } else {
                    0.0
                },
                momentum: settings.momentum,
                lr,
                grad_scale,
                is_first_step: first == 1,
            };
            let (params, grads_of) = weights_and_grads(group);
            let outcome = match refused_buffer {
                Some(message) => Err(message),
                None => sgd_in_place(&params, &grads_of, &buffers, &step),
            };
            if let Err(message) = outcome {
                return refused(written, "SGD", &message);
            }
            written = true;
        }
    }
    true
}
