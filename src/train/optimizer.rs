//! The optimiser a config names (`optimizer = "sgd" | "adamw"`), one type for the loop, the
//! checkpoint and resume. Its state travels under the checkpoint's names: `momentum.<path>`
//! (SGD), `exp_avg.<path>` and `exp_avg_sq.<path>` (AdamW), where `<path>` is a backbone
//! parameter's ("backbone.layer1.0.conv1.weight") or the head's centres ("head.weight", cut
//! by rows with them when the ranks change).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use super::adamw::{AdamW, AdamWSettings};
use super::sgd::{Sgd, SgdSettings};
use crate::checkpoint::shards;
use crate::config::{Config, OptimizerKind};

/// PyTorch's AdamW defaults, which arcface_torch keeps.
pub const ADAMW_BETAS: (f64, f64) = (0.9, 0.999);
pub const ADAMW_EPS: f64 = 1e-8;

pub enum Optimizer {
    Sgd(Sgd),
    AdamW(AdamW),
}

/// `name` ("exp_avg.backbone.fc.weight") as (buffer, parameter path), if it names optimiser
/// state.
pub fn buffer_of(name: &str) -> Option<(&str, &str)> {
    name.split_once('.')
        .filter(|(buffer, _)| ["momentum", "exp_avg", "exp_avg_sq"].contains(buffer))
}

impl Optimizer {
    pub fn of(config: &Config) -> Optimizer {
        let no_decay_on_norm_and_prelu = !config.decay_norm_and_prelu;
        match config.optimizer {
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(SgdSettings {
                momentum: config.momentum,
                weight_decay: config.weight_decay,
                no_decay_on_norm_and_prelu,
            })),
            OptimizerKind::Adamw => Optimizer::AdamW(AdamW::new(AdamWSettings {
                betas: ADAMW_BETAS,
                eps: ADAMW_EPS,
                weight_decay: config.weight_decay,
                no_decay_on_norm_and_prelu,
            })),
        }
    }

    /// Global step `step`'s update (0 for a run's first) of `module` with `grads`, gradients
    /// multiplied by `grad_scale` (clipping); `prefix` keeps the state of several modules apart.
    pub fn step<M: Module>(
        &mut self,
        module: M,
        grads: &mut GradientsParams,
        lr: f64,
        grad_scale: f64,
        step: usize,
        prefix: &str,
    ) -> M {
        match self {
            Optimizer::Sgd(sgd) => sgd.step(module, grads, lr, grad_scale, prefix),
            Optimizer::AdamW(adamw) => adamw.step(module, grads, lr, grad_scale, step + 1, prefix),
        }
    }

    /// The state as host data under the checkpoint's names.
    pub fn state(&self) -> BTreeMap<String, TensorData> {
        let named = |buffer: &str, map: &BTreeMap<String, Tensor<1>>| {
            map.iter()
                .map(|(k, v)| (format!("{buffer}.{k}"), v.to_data()))
                .collect::<Vec<_>>()
        };
        match self {
            Optimizer::Sgd(sgd) => named("momentum", &sgd.momentum).into_iter().collect(),
            Optimizer::AdamW(adamw) => named("exp_avg", &adamw.exp_avg)
                .into_iter()
                .chain(named("exp_avg_sq", &adamw.exp_avg_sq))
                .collect(),
        }
    }

    /// Restores what [`Optimizer::state`] gave onto `device`; names of another optimiser's
    /// buffers are left out (a resumed run is checked to use the checkpoint's optimiser).
    pub fn load_state(&mut self, state: BTreeMap<String, TensorData>, device: &Device) {
        let mut maps: Vec<(&str, &mut BTreeMap<String, Tensor<1>>)> = match self {
            Optimizer::Sgd(sgd) => vec![("momentum", &mut sgd.momentum)],
            Optimizer::AdamW(adamw) => vec![
                ("exp_avg", &mut adamw.exp_avg),
                ("exp_avg_sq", &mut adamw.exp_avg_sq),
            ],
        };
        for (_, map) in maps.iter_mut() {
            map.clear();
        }
        for (name, data) in state {
            let Some((buffer, path)) = buffer_of(&name) else {
                continue;
            };
            if let Some((_, map)) = maps.iter_mut().find(|(b, _)| *b == buffer) {
                map.insert(path.to_string(), Tensor::from_data(data, device));
            }
        }
    }

    /// The checkpoint names of the head centres' buffers this optimiser keeps (once it has
    /// stepped; SGD without momentum keeps none).
    pub fn head_buffers(&self) -> Vec<String> {
        let buffers: &[&str] = match self {
            Optimizer::Sgd(sgd) if sgd.settings.as_ref().is_some_and(|s| s.momentum == 0.0) => &[],
            Optimizer::Sgd(_) => &["momentum"],
            Optimizer::AdamW(_) => &["exp_avg", "exp_avg_sq"],
        };
        buffers
            .iter()
            .map(|b| format!("{b}.{}", shards::WEIGHT))
            .collect()
    }
}
