//! Margin softmax: logits s·cos θ_j between the normalised embedding and the normalised class
//! centres; the target class gets insightface's combined margin s·(cos(m1·θ + m2) − m3) —
//! ArcFace is (1, 0.5, 0), CosFace (1, 0, 0.35), SphereFace-like (m1 > 1, 0, 0) — or AdaFace's
//! (`adaface.rs`), which the norms of the embeddings set.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Distribution, Int, Tensor};

use super::adaface::{AdaFaceMargin, NormStatistics};

/// Keeps divisions by a norm finite for an all-zero vector.
const NORM_EPS: f32 = 1e-12;
/// Lower bound of sin²θ: at cos θ = ±1 the derivative of √(1 − cos²θ) is infinite; clamping
/// below makes that branch's gradient exactly 0 there instead of NaN.
const SIN2_EPS: f32 = 1e-12;
/// arccos is only evaluated inside [−1 + δ, 1 − δ] (SphereFace-style m1 ≠ 1) for the same reason.
const ACOS_EDGE: f32 = 1e-6;

#[derive(Config, Debug)]
pub struct MarginSoftmaxConfig {
    pub num_classes: usize,
    pub embedding_size: usize,
    /// (m1, m2, m3).
    #[config(default = "[1.0, 0.5, 0.0]")]
    pub margins: [f64; 3],
    #[config(default = 64.0)]
    pub scale: f64,
    #[config(default = false)]
    pub easy_margin: bool,
    /// arcface_torch's `interclass_filtering_threshold`: non-target cosines above it are set to
    /// 0 ([`MarginSoftmax::filter_interclass`]); 0 turns it off.
    #[config(default = 0.0)]
    pub interclass_filtering_threshold: f64,
    /// AdaFace's margin instead of the combined one (`margins` and `easy_margin` unused then).
    #[config(default = "None")]
    pub adaface: Option<AdaFaceMargin>,
}

/// The class-centre matrix [num_classes, embedding_size] (row per identity, as insightface's
/// fc7 / partial_fc weight) and the margin parameters.
#[derive(Module, Debug)]
pub struct MarginSoftmax {
    pub weight: Param<Tensor<2>>,
    pub m1: f64,
    pub m2: f64,
    pub m3: f64,
    pub scale: f64,
    pub easy_margin: bool,
    pub interclass_filtering_threshold: f64,
    #[module(skip)]
    pub adaface: Option<AdaFaceMargin>,
}

impl MarginSoftmaxConfig {
    pub fn init(&self, device: &Device) -> MarginSoftmax {
        let [m1, m2, m3] = self.margins;
        // insightface initialises fc7 / partial_fc with N(0, 0.01).
        let weight = Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        }
        .init([self.num_classes, self.embedding_size], device);
        MarginSoftmax {
            weight,
            m1,
            m2,
            m3,
            scale: self.scale,
            easy_margin: self.easy_margin,
            interclass_filtering_threshold: self.interclass_filtering_threshold,
            adaface: self.adaface,
        }
    }
}

/// Rows of the centre matrix are drawn in blocks of this many identities, each block from its
/// own seed, so a rank's range of rows is the same numbers at any world size.
const INIT_BLOCK: usize = 4096;
/// Seed path of the centres' blocks: (seed, CENTRES_SEED, block).
const CENTRES_SEED: u64 = 5;

impl MarginSoftmaxConfig {
    /// Rows `start..start + len` of the `num_classes` × `embedding_size` centre matrix that
    /// `seed` gives (N(0, 0.01), as insightface): a rank's shard of the model-parallel head,
    /// or the whole head for `0..num_classes`. Reseeds `device` block by block.
    pub fn init_rows(&self, start: usize, len: usize, seed: u64, device: &Device) -> MarginSoftmax {
        assert!(
            start + len <= self.num_classes,
            "rows {start}..{} of {}",
            start + len,
            self.num_classes
        );
        let mut blocks = Vec::new();
        let mut row = start;
        while row < start + len {
            let block = row / INIT_BLOCK;
            device.seed(crate::seed::mix(seed, &[CENTRES_SEED, block as u64]));
            let drawn = Tensor::<2>::random(
                [INIT_BLOCK, self.embedding_size],
                Distribution::Normal(0.0, 0.01),
                device,
            );
            let end = ((block + 1) * INIT_BLOCK).min(start + len);
            blocks.push(drawn.narrow(0, row - block * INIT_BLOCK, end - row));
            row = end;
        }
        let weight = match blocks.len() {
            0 => Tensor::<2>::zeros([0, self.embedding_size], device),
            _ => Tensor::cat(blocks, 0),
        };
        let [m1, m2, m3] = self.margins;
        MarginSoftmax {
            weight: Param::from_tensor(weight),
            m1,
            m2,
            m3,
            scale: self.scale,
            easy_margin: self.easy_margin,
            interclass_filtering_threshold: self.interclass_filtering_threshold,
            adaface: self.adaface,
        }
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(NORM_EPS);
    x / norm
}

impl MarginSoftmax {
    /// How far from ±1 the cosines are clamped: 0, or AdaFace's ε (head.py's "for stability").
    pub fn cosine_bound(&self) -> f64 {
        match self.adaface {
            Some(_) => 1.0 - super::adaface::EPS,
            None => 1.0,
        }
    }

    /// cos θ between every embedding and every class centre: [B, E] → [B, C].
    pub fn cosine(&self, embeddings: Tensor<2>) -> Tensor<2> {
        let e = l2_normalize(embeddings);
        let w = l2_normalize(self.weight.val());
        let bound = self.cosine_bound();
        e.matmul(w.transpose()).clamp(-bound, bound)
    }

    /// The targets' margin cosines [N, 1] from their cosines `cos` [N, 1]: the combined
    /// margin's, or AdaFace's from the norms of `embeddings` [N, E] (the rows before
    /// normalisation; read, not differentiated), which first go into `statistics`.
    pub fn margin_targets(
        &self,
        cos: Tensor<2>,
        embeddings: &Tensor<2>,
        statistics: &mut NormStatistics,
    ) -> Tensor<2> {
        match &self.adaface {
            None => self.target_cosine(cos),
            Some(adaface) => {
                let scaler = adaface.scaler_column(embeddings.clone(), statistics, &cos.device());
                adaface.target_cosine(cos, scaler)
            }
        }
    }

    /// arcface_torch's interclass filtering (CombinedMarginLoss with
    /// `interclass_filtering_threshold` > 0): every cosine above the threshold that is not its
    /// row's target is set to 0, by a constant mask as its `no_grad` block makes it, so that a
    /// centre too close to the embedding (the same person under two identities, in web-crawled
    /// data) stops pushing it away. `target` [B, 1] is each row's target column and `here`
    /// [B, 1] 1.0 where the row has one among these columns, else 0.0 (Partial FC: another
    /// rank holds it; then every cosine above the threshold is zeroed). Off at 0.
    pub fn filter_interclass(
        &self,
        cos: Tensor<2>,
        target: Tensor<2, Int>,
        here: Tensor<2>,
    ) -> Tensor<2> {
        let threshold = self.interclass_filtering_threshold;
        if threshold <= 0.0 {
            return cos;
        }
        let plain = cos.clone().inner();
        let dirty = plain.clone().greater_elem(threshold).float();
        let is_target = plain.zeros_like().scatter(
            1,
            target.inner(),
            here.inner(),
            burn::tensor::IndexingUpdateOp::Add,
        );
        let filtered = dirty * (is_target.neg() + 1.0);
        cos * (filtered.neg() + 1.0)
    }

    /// The target's margin-adjusted cosine from its plain cosine (any shape).
    pub fn target_cosine<const D: usize>(&self, cos: Tensor<D>) -> Tensor<D> {
        let (m1, m2, m3) = (self.m1, self.m2, self.m3);
        let adjusted = if m1 == 1.0 && m2 == 0.0 {
            cos
        } else if m1 == 1.0 {
            // cos(θ + m) = cos θ·cos m − sin θ·sin m: exact, and no arccos to blow up at ±1.
            let sin = (cos.clone().square().neg() + 1.0)
                .clamp_min(SIN2_EPS)
                .sqrt();
            let phi = cos.clone() * m2.cos() - sin * m2.sin();
            if self.easy_margin {
                // insightface: margin only where cos θ > 0.
                phi.mask_where(cos.clone().lower_equal_elem(0.0), cos)
            } else {
                // The seed: where θ + m > π, cos(θ + m) would rise again with θ; use the
                // monotone cos θ − m·sin(m) instead (th = cos(π − m), mm = sin(π − m)·m).
                let th = (std::f64::consts::PI - m2).cos();
                let mm = (std::f64::consts::PI - m2).sin() * m2;
                phi.mask_where(cos.clone().lower_equal_elem(th), cos - mm)
            }
        } else {
            // General m1: θ from arccos, the angle capped at π so the logit stays monotone.
            let theta = cos.clamp(-1.0 + ACOS_EDGE, 1.0 - ACOS_EDGE).acos();
            (theta * m1 + m2).clamp_max(std::f64::consts::PI).cos()
        };
        if m3 != 0.0 { adjusted - m3 } else { adjusted }
    }

    /// Scaled logits with the margin on each row's target class: [B, E], [B] → [B, C]; AdaFace
    /// folds this batch into `statistics`.
    pub fn logits_with(
        &self,
        embeddings: Tensor<2>,
        labels: Tensor<1, Int>,
        statistics: &mut NormStatistics,
    ) -> Tensor<2> {
        let index = labels.unsqueeze_dim::<2>(1);
        let mut cos = self.cosine(embeddings.clone());
        if self.interclass_filtering_threshold > 0.0 {
            let every_row = Tensor::<2>::ones([cos.dims()[0], 1], &cos.device());
            cos = self.filter_interclass(cos, index.clone(), every_row);
        }
        let cos_target = cos.clone().gather(1, index.clone());
        let delta = self.margin_targets(cos_target.clone(), &embeddings, statistics) - cos_target;
        // Add (target' − target) at the label: one scatter instead of a [B, C] mask.
        let with_margin = cos.scatter(1, index, delta, burn::tensor::IndexingUpdateOp::Add);
        with_margin * self.scale
    }

    /// [`MarginSoftmax::logits_with`] from AdaFace's initial statistics (one batch's use).
    pub fn logits(&self, embeddings: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<2> {
        self.logits_with(embeddings, labels, &mut NormStatistics::default())
    }

    /// Mean softmax cross-entropy over the margin logits: [B, E], [B] → scalar [1].
    pub fn forward(&self, embeddings: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
        let logits = self.logits(embeddings, labels.clone());
        let log_probs = log_softmax(logits, 1);
        let picked = log_probs.gather(1, labels.unsqueeze_dim::<2>(1));
        picked.mean().neg()
    }
}
