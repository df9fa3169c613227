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

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
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

/// Parameters of BatchNorm (gamma/beta) and PReLU (alpha) by their path.
pub(super) fn is_norm_or_prelu(path: &str) -> bool {
    path.ends_with(".gamma") || path.ends_with(".beta") || path.ends_with(".alpha")
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

struct StepMapper<'a> {
    sgd: &'a mut Sgd,
    settings: SgdSettings,
    grads: &'a mut GradientsParams,
    lr: f64,
    grad_scale: f64,
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
        let weight = tensor.inner();
        let mut g = if self.grad_scale != 1.0 {
            grad * self.grad_scale
        } else {
            grad
        };
        let decay = !(self.settings.no_decay_on_norm_and_prelu && is_norm_or_prelu(&path));
        if decay && self.settings.weight_decay != 0.0 {
            g = g + weight.clone() * self.settings.weight_decay;
        }
        let update = if self.settings.momentum != 0.0 {
            let buf = match self.sgd.momentum.remove(&path) {
                Some(flat) => flat.reshape(weight.shape()) * self.settings.momentum + g,
                None => g,
            };
            self.sgd
                .momentum
                .insert(path, buf.clone().flatten(0, D - 1));
            buf
        } else {
            g
        };
        let mut updated = Tensor::from_inner(weight - update * self.lr);
        if require_grad {
            updated = updated.require_grad();
        }
        Param::from_mapped_value(id, updated, mapper)
    }
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
        let mut mapper = StepMapper {
            sgd: self,
            settings,
            grads,
            lr,
            grad_scale,
            prefix,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }
}
