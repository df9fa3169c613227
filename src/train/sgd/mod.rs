//! SGD with momentum and weight decay as PyTorch's `torch.optim.SGD` (dampening 0, no
//! Nesterov): buf = μ·buf + (g + λ·w); w −= lr·buf. Gradient clipping by the global L2 norm
//! over all parameters, as `clip_grad_norm_`.
//!
//! Ours rather than burn's `Sgd`: burn clips per tensor, applies weight decay to every
//! parameter of a module, and keys its state by parameter ids that change between runs. Here
//! momentum buffers are keyed by parameter path ("layer1.0.conv1.weight"), which a checkpoint
//! stores and a resumed run finds again.

#[cfg(feature = "tch")]
mod fused;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};

use super::update::{is_norm_or_prelu, update_params};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};

#[derive(Debug, Clone)]
pub struct SgdSettings {
    pub momentum: f64,
    pub weight_decay: f64,
    /// Leave BatchNorm γ/β and PReLU slopes out of weight decay (arcface_torch decays all).
    pub no_decay_on_norm_and_prelu: bool,
}

/// Momentum buffers by parameter path, flattened, on the parameter's device.
#[derive(Default)]
pub struct Sgd {
    pub settings: Option<SgdSettings>,
    pub momentum: BTreeMap<String, Tensor<1>>,
}

struct NormVisitor<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for NormVisitor<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.sum = Some(match self.sum.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
    }
}

/// The global L2 norm of all gradients of `module` found in `grads` (NaN/Inf propagate).
pub fn global_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = NormVisitor { grads, sum: None };
    module.visit(&mut v);
    v.sum
        .map_or(0.0, |s| (s.into_scalar::<f32>() as f64).sqrt())
}

impl Sgd {
    pub fn new(settings: SgdSettings) -> Sgd {
        Sgd {
            settings: Some(settings),
            momentum: BTreeMap::new(),
        }
    }

    /// The momentum buffers as host data (for checkpoints).
    pub fn state(&self) -> BTreeMap<String, TensorData> {
        self.momentum
            .iter()
            .map(|(k, v)| (k.clone(), v.to_data()))
            .collect()
    }

    /// Restores buffers saved by [`Sgd::state`] onto `device`.
    pub fn load_state(
        &mut self,
        state: BTreeMap<String, TensorData>,
        device: &burn::tensor::Device,
    ) {
        self.momentum = state
            .into_iter()
            .map(|(k, v)| (k, Tensor::from_data(v, device)))
            .collect();
    }

    /// One update of `module` with `grads`, gradients multiplied by `grad_scale` (clipping).
    /// `prefix` keeps the state of several modules apart ("backbone.", "head.").
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &mut GradientsParams,
        lr: f64,
        grad_scale: f64,
        prefix: &str,
    ) -> M {
        let settings = self.settings.clone().expect("Sgd::new sets the settings");
        #[cfg(feature = "tch")]
        if fused::step_in_place(self, &settings, &module, grads, lr, grad_scale, prefix) {
            return module;
        }
        let sgd = self;
        update_params(module, grads, prefix, &mut |path, weight, grad| {
            let mut g = if grad_scale != 1.0 {
                grad * grad_scale
            } else {
                grad
            };
            let decay = !(settings.no_decay_on_norm_and_prelu && is_norm_or_prelu(path));
            if decay && settings.weight_decay != 0.0 {
                g = g + weight.clone() * settings.weight_decay;
            }
            let update = if settings.momentum != 0.0 {
                let buf = match sgd.momentum.remove(path) {
                    Some(buf) => buf * settings.momentum + g,
                    None => g,
                };
                sgd.momentum.insert(path.to_string(), buf.clone());
                buf
            } else {
                g
            };
            weight - update * lr
        })
    }
}
