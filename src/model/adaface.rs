//! AdaFace's quality-adaptive margin (Kim et al., CVPR 2022; mk-minchul/AdaFace head.py): an
//! image's feature norm, a proxy of its quality, sets its margin. The norms (before the
//! embedding is normalised, clipped to [0.001, 100], detached) are standardised by their
//! running batch mean and std (an EMA at rate t_alpha, from 20 and 100; this batch's own
//! statistics first go into it, as head.py updates its buffers before using them), times h,
//! clipped to [−1, 1]: that is ĝ. The target's logit is then
//! s·(cos(clip(θ − m·ĝ, ε, π − ε)) − m − m·ĝ) with θ = arccos(clamp(cos, −1 + ε, 1 − ε)),
//! ε = 1e-3, and every other logit s·clamp(cos, −1 + ε, 1 − ε): at ĝ = −1 an angular margin m
//! (ArcFace's form), at ĝ = 1 an additive 2m with the angle eased by m, at ĝ = 0 CosFace's m.
//! The margins are functions of detached norms: gradients flow through the cosines only, as
//! head.py's autograd computes them.
//!
//! head.py runs on one GPU's batch; with several ranks the statistics here are over the global
//! batch (every rank's rows are gathered for the head), where AdaFace's DDP training updates
//! each rank's buffers from its own rows and keeps rank 0's. A batch of one image has no
//! standard deviation: configs refuse batch sizes below 2.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// head.py's `eps`: the cosines' bound away from ±1, the angles' from 0 and π, and the std's
/// floor in the z-score.
pub const EPS: f64 = 1e-3;
/// head.py's clip of the norms.
const NORM_RANGE: (f64, f64) = (0.001, 100.0);

/// AdaFace's m, h and t_alpha (`adaface_m`, `adaface_h`, `adaface_t_alpha` in a config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaFaceMargin {
    pub m: f64,
    pub h: f64,
    pub t_alpha: f64,
}

/// The running mean and std of the feature norms (head.py's `batch_mean` and `batch_std`
/// buffers), kept in checkpoints so that a resumed run continues them exactly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormStatistics {
    pub mean: f64,
    pub std: f64,
}

impl Default for NormStatistics {
    /// head.py's initial buffers.
    fn default() -> Self {
        NormStatistics {
            mean: 20.0,
            std: 100.0,
        }
    }
}

impl AdaFaceMargin {
    /// Folds this batch's `norms` into `statistics` (head.py's update) and returns each row's
    /// ĝ. `norms` are the rows' L2 norms before normalisation.
    pub fn scalers(&self, norms: &[f32], statistics: &mut NormStatistics) -> Vec<f32> {
        let safe: Vec<f64> = norms
            .iter()
            .map(|&n| (n as f64).clamp(NORM_RANGE.0, NORM_RANGE.1))
            .collect();
        let n = safe.len() as f64;
        let mean = safe.iter().sum::<f64>() / n;
        // torch.std: the unbiased estimate.
        let std = (safe.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let a = self.t_alpha;
        statistics.mean = mean * a + (1.0 - a) * statistics.mean;
        statistics.std = std * a + (1.0 - a) * statistics.std;
        safe.iter()
            .map(|x| {
                let z = (x - statistics.mean) / (statistics.std + EPS);
                (z * self.h).clamp(-1.0, 1.0) as f32
            })
            .collect()
    }

    /// The targets' margin cosines from their clamped cosines `cos` [N, 1] and ĝ [N, 1]:
    /// cos(clip(θ − m·ĝ, ε, π − ε)) − (m + m·ĝ), before the scale.
    pub fn target_cosine(&self, cos: Tensor<2>, scaler: Tensor<2>) -> Tensor<2> {
        let angular = scaler.clone() * -self.m;
        let theta = (cos.acos() + angular).clamp(EPS, std::f64::consts::PI - EPS);
        theta.cos() - (scaler * self.m + self.m)
    }

    /// ĝ of `embeddings` [N, E] (before normalisation, any device) as a column [N, 1] on
    /// `device`, `statistics` updated.
    pub fn scaler_column(
        &self,
        embeddings: Tensor<2>,
        statistics: &mut NormStatistics,
        device: &Device,
    ) -> Tensor<2> {
        let rows = embeddings.dims()[0];
        let norms = embeddings.square().sum_dim(1).sqrt().into_data();
        let norms: Vec<f32> = norms.iter::<f32>().collect();
        let scalers = self.scalers(&norms, statistics);
        Tensor::from_data(TensorData::new(scalers, [rows, 1]), device)
    }
}
