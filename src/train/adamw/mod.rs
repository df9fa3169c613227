//! AdamW as PyTorch's `torch.optim.AdamW` (amsgrad off), the optimiser of arcface_torch's ViT
//! recipes: at step t (1, 2, …) with gradient g,
//!
//!   w ← w·(1 − lr·λ)                          decoupled weight decay
//!   m ← m + (g − m)·(1 − β1)                  (PyTorch's `lerp_`)
//!   v ← v·β2 + (1 − β2)·g²
//!   w ← w − lr/(1 − β1^t) · m / (√v / √(1 − β2^t) + ε)
//!
//! Moments keyed by parameter path as the SGD's momentum is, so that checkpoints hold them and
//! a resumed run, or one on another number of ranks, finds them again (the head's with its
//! centres). t is the global step plus one: every step updates every parameter that has a
//! gradient, as PyTorch's per-parameter `step` counts.

#[cfg(feature = "tch")]
mod fused;

use std::collections::BTreeMap;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::update::{is_norm_or_prelu, update_params};

#[derive(Debug, Clone)]
pub struct AdamWSettings {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// Leave BatchNorm γ/β and PReLU slopes out of weight decay (arcface_torch decays all).
    pub no_decay_on_norm_and_prelu: bool,
}

/// First and second moments by parameter path, flattened, on the parameter's device.
pub struct AdamW {
    pub settings: AdamWSettings,
    pub exp_avg: BTreeMap<String, Tensor<1>>,
    pub exp_avg_sq: BTreeMap<String, Tensor<1>>,
}

impl AdamW {
    pub fn new(settings: AdamWSettings) -> AdamW {
        AdamW {
            settings,
            exp_avg: BTreeMap::new(),
            exp_avg_sq: BTreeMap::new(),
        }
    }

    /// Update number `t` (1 for the first) of `module` with `grads`, gradients multiplied by
    /// `grad_scale` (clipping). `prefix` keeps the state of several modules apart.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &mut GradientsParams,
        lr: f64,
        grad_scale: f64,
        t: usize,
        prefix: &str,
    ) -> M {
        #[cfg(feature = "tch")]
        if fused::step_in_place(
            self,
            &module,
            grads,
            lr,
            grad_scale,
            t.max(1) as u64,
            prefix,
        ) {
            return module;
        }
        let (beta1, beta2) = self.settings.betas;
        let t = t.max(1) as i32;
        let (correction1, correction2_sqrt) = (1.0 - beta1.powi(t), (1.0 - beta2.powi(t)).sqrt());
        let settings = self.settings.clone();
        let (exp_avg, exp_avg_sq) = (&mut self.exp_avg, &mut self.exp_avg_sq);
        update_params(module, grads, prefix, &mut |path, mut weight, grad| {
            let decay = !(settings.no_decay_on_norm_and_prelu && is_norm_or_prelu(path));
            if decay && settings.weight_decay != 0.0 {
                weight = weight * (1.0 - lr * settings.weight_decay);
            }
            let g = if grad_scale != 1.0 {
                grad * grad_scale
            } else {
                grad
            };
            let m = match exp_avg.remove(path) {
                Some(m) => m.clone() + (g.clone() - m) * (1.0 - beta1),
                None => g.clone() * (1.0 - beta1),
            };
            let squared = g.square() * (1.0 - beta2);
            let v = match exp_avg_sq.remove(path) {
                Some(v) => v * beta2 + squared,
                None => squared,
            };
            let denom = v.clone().sqrt() / correction2_sqrt + settings.eps;
            let update = (m.clone() / denom) * (lr / correction1);
            exp_avg.insert(path.to_string(), m);
            exp_avg_sq.insert(path.to_string(), v);
            weight - update
        })
    }
}
