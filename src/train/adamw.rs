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

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::sgd::is_norm_or_prelu;

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

struct StepMapper<'a> {
    adamw: &'a mut AdamW,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
    /// 1 − β1^t and √(1 − β2^t).
    corrections: (f64, f64),
    prefix: &'a str,
    path: Vec<String>,
}

impl ModuleMapper for StepMapper<'_> {
    crate::module_path::track_module_path!();

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = format!("{}{}", self.prefix, self.path.join("."));
        let require_grad = tensor.is_require_grad();
        let settings = &self.adamw.settings;
        let (beta1, beta2) = settings.betas;
        let shape = tensor.shape();
        let mut weight = tensor.inner();
        let decay = !(settings.no_decay_on_norm_and_prelu && is_norm_or_prelu(&path));
        if decay && settings.weight_decay != 0.0 {
            weight = weight * (1.0 - self.lr * settings.weight_decay);
        }
        let mut g = grad.flatten::<1>(0, D - 1);
        if self.grad_scale != 1.0 {
            g = g * self.grad_scale;
        }
        let m = match self.adamw.exp_avg.remove(&path) {
            Some(m) => m.clone() + (g.clone() - m) * (1.0 - beta1),
            None => g.clone() * (1.0 - beta1),
        };
        let squared = g.square() * (1.0 - beta2);
        let v = match self.adamw.exp_avg_sq.remove(&path) {
            Some(v) => v * beta2 + squared,
            None => squared,
        };
        let (correction1, correction2_sqrt) = self.corrections;
        let denom = v.clone().sqrt() / correction2_sqrt + settings.eps;
        let update = (m.clone() / denom) * (self.lr / correction1);
        self.adamw.exp_avg.insert(path.clone(), m);
        self.adamw.exp_avg_sq.insert(path, v);
        let mut updated = Tensor::from_inner(weight - update.reshape(shape));
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
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
        let (beta1, beta2) = self.settings.betas;
        let t = t.max(1) as i32;
        let corrections = (1.0 - beta1.powi(t), (1.0 - beta2.powi(t)).sqrt());
        let mut mapper = StepMapper {
            adamw: self,
            grads,
            lr,
            grad_scale,
            corrections,
            prefix,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }
}
