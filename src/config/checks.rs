//! The checks of a parsed config: values that make no sense, and keys written for another
//! backbone or optimiser than the one the file names.

use super::{BadValue, Config, HeadKind, OptimizerKind};
use crate::device::DeviceSpec;
use crate::model::Architecture;

/// A row of the table: an optional probability must be in [0, 1].
fn probability(key: &'static str, value: Option<f64>) -> (&'static str, bool, String) {
    let ok = value.is_none_or(|p| (0.0..=1.0).contains(&p));
    (key, ok, "must be in [0, 1]: a probability".into())
}

/// A row of the table: a range [low, high) drawn from must hold values, be finite and lie
/// in [`min`, `max`].
fn range(
    key: &'static str,
    [low, high]: [f64; 2],
    min: f64,
    max: f64,
) -> (&'static str, bool, String) {
    let why = if !(low.is_finite() && high.is_finite()) {
        format!("[{low}, {high}] must be finite")
    } else if low >= high {
        format!("[{low}, {high}] is empty or inverted: [low, high) needs low < high")
    } else if low < min || high > max {
        format!("[{low}, {high}] must lie within [{min}, {max}]")
    } else {
        String::new()
    };
    (key, why.is_empty(), why)
}

impl Config {
    /// Checks values that parse but make no sense; returns the offending key and why.
    // Long because it is one table, a row per key, in the struct's order: split, the rows
    // would be harder to check against the keys.
    pub fn validate(&self) -> Result<(), BadValue> {
        let [m1, m2, m3] = self.margin_list;
        let checks: [(&'static str, bool, String); 39] = [
            (
                "embedding_size",
                self.embedding_size > 0,
                "must be > 0".into(),
            ),
            (
                "dropout",
                (0.0..1.0).contains(&self.dropout),
                "must be in [0, 1)".into(),
            ),
            (
                "margin_list",
                m1 > 0.0 && (0.0..std::f64::consts::PI).contains(&m2) && m3 >= 0.0,
                format!(
                    "[m1, m2, m3] = {:?}: need m1 > 0, 0 <= m2 < pi, m3 >= 0",
                    self.margin_list
                ),
            ),
            (
                "adaface_m",
                (0.0..std::f64::consts::FRAC_PI_2).contains(&self.adaface_m),
                "must be in [0, pi/2)".into(),
            ),
            (
                "adaface_h",
                self.adaface_h > 0.0 && self.adaface_h.is_finite(),
                "must be > 0".into(),
            ),
            (
                "adaface_t_alpha",
                self.adaface_t_alpha > 0.0 && self.adaface_t_alpha <= 1.0,
                "must be in (0, 1]".into(),
            ),
            (
                "scale",
                self.scale > 0.0 && self.scale.is_finite(),
                "must be > 0".into(),
            ),
            (
                "sample_rate",
                (0.0..=1.0).contains(&self.sample_rate) && self.sample_rate > 0.0,
                "must be in (0, 1]".into(),
            ),
            (
                "num_classes",
                self.num_classes != Some(0),
                "must be > 0".into(),
            ),
            probability("crop_augmentation_prob", self.crop_augmentation_prob),
            probability("low_res_augmentation_prob", self.low_res_augmentation_prob),
            probability(
                "photometric_augmentation_prob",
                self.photometric_augmentation_prob,
            ),
            probability("resize_augmentation_prob", self.resize_augmentation_prob),
            probability("blur_augmentation_prob", self.blur_augmentation_prob),
            probability("hsv_augmentation_prob", self.hsv_augmentation_prob),
            probability("gray_augmentation_prob", self.gray_augmentation_prob),
            range(
                "crop_augmentation_scale",
                self.crop_augmentation_scale,
                0.0,
                1.0,
            ),
            range(
                "low_res_augmentation_range",
                self.low_res_augmentation_range,
                0.0,
                1.0,
            ),
            range(
                "photometric_augmentation_range",
                self.photometric_augmentation_range,
                0.0,
                f64::INFINITY,
            ),
            // Sizes of the 112-pixel face; half-widths whose window fits in it.
            range(
                "resize_augmentation_range",
                self.resize_augmentation_range,
                1.0,
                112.0,
            ),
            range(
                "blur_augmentation_range",
                self.blur_augmentation_range,
                0.5,
                55.0,
            ),
            range(
                "hsv_augmentation_hue",
                self.hsv_augmentation_hue,
                -360.0,
                360.0,
            ),
            range(
                "hsv_augmentation_saturation",
                self.hsv_augmentation_saturation,
                0.0,
                f64::INFINITY,
            ),
            (
                "batch_size",
                self.batch_size >= 2,
                // BatchNorm normalises each channel over the batch: the embedding's BatchNorm
                // sees one value per channel at batch 1 (PyTorch refuses that too).
                "must be at least 2 (BatchNorm trains on batch statistics)".into(),
            ),
            (
                "gradient_acc",
                self.gradient_acc >= 1,
                "must be at least 1 (micro-batches per optimiser step)".into(),
            ),
            (
                "lr",
                self.lr > 0.0 && self.lr.is_finite(),
                "must be > 0".into(),
            ),
            (
                "momentum",
                (0.0..1.0).contains(&self.momentum),
                "must be in [0, 1)".into(),
            ),
            (
                "weight_decay",
                self.weight_decay >= 0.0,
                "must be >= 0".into(),
            ),
            (
                "lr_steps",
                self.lr_steps.windows(2).all(|w| w[0] < w[1]),
                "must be strictly increasing".into(),
            ),
            ("num_epoch", self.num_epoch > 0, "must be > 0".into()),
            (
                "interclass_filtering_threshold",
                (0.0..1.0).contains(&self.interclass_filtering_threshold),
                "must be in [0, 1): 0 turns it off".into(),
            ),
            (
                "poly_power",
                self.poly_power > 0.0 && self.poly_power.is_finite(),
                "must be > 0".into(),
            ),
            (
                "warmup_epoch",
                self.warmup_epoch < self.num_epoch,
                "must be smaller than num_epoch".into(),
            ),
            (
                "clip_grad_norm",
                self.clip_grad_norm.is_none_or(|c| c > 0.0),
                "must be > 0".into(),
            ),
            (
                "frequent",
                self.frequent > 0 && self.verbose > 0,
                "frequent and verbose must be > 0".into(),
            ),
            ("save_every", self.save_every > 0, "must be > 0".into()),
            (
                "keep_checkpoints",
                self.keep_checkpoints > 0,
                "must be > 0".into(),
            ),
            ("dist_timeout", self.dist_timeout > 0, "must be > 0".into()),
            (
                "synthetic",
                self.synthetic.as_ref().is_none_or(|s| {
                    s.identities >= 2 && s.images_per_identity >= 1 && s.val_pairs >= 20
                }),
                "needs identities >= 2, images_per_identity >= 1, val_pairs >= 20".into(),
            ),
        ];
        if let Some((key, _, message)) = checks.into_iter().find(|(_, ok, _)| !ok) {
            return Err(BadValue::new(key, message));
        }
        if let Architecture::Vit {
            width,
            depth,
            heads,
        } = self.network.architecture()
        {
            let (drop_path_rate, mask_ratio) = self.vit_regularisation();
            let vit = crate::model::VitConfig::new(width, depth)
                .with_heads(heads)
                .with_drop_path_rate(drop_path_rate)
                .with_mask_ratio(mask_ratio);
            if let Some((key, message)) = vit.problem() {
                return Err(BadValue::new(key, message));
            }
        }
        if let Err(e) = self.device.parse::<DeviceSpec>() {
            return Err(BadValue::new("device", e.to_string()));
        }
        Ok(())
    }

    /// `dropout` and `embedding_gamma_trainable` shape the iresnets only, `drop_path_rate`,
    /// `mask_ratio` and `using_checkpoint` the ViTs only, `momentum` is SGD's, `margin_list` and `easy_margin` the
    /// combined margin's, `adaface_*` AdaFace's. Written in the file of another backbone
    /// or optimiser with a value it cannot honour, they would be ignored in silence: refused. (Absent keys take the seed's
    /// defaults, dropout 0.4 among them, which only an iresnet uses; only what the user wrote is
    /// checked.)
    pub(super) fn check_written_keys(&self, text: &str) -> Result<(), BadValue> {
        // The text deserialised a moment ago, so it parses as a table too.
        let written = text.parse::<toml::Table>().unwrap_or_default();
        let network = self.network.name();
        let architecture = self.network.architecture();
        if !matches!(architecture, Architecture::Vit { .. }) {
            for key in ["drop_path_rate", "mask_ratio", "using_checkpoint"] {
                if written.contains_key(key) {
                    return Err(BadValue::new(
                        key,
                        format!("{network} is not a Vision Transformer; remove the key"),
                    ));
                }
            }
        }
        let (other, foreign): (&str, &[&str]) = match self.head {
            HeadKind::Margin => ("margin", &["adaface_m", "adaface_h", "adaface_t_alpha"]),
            HeadKind::Adaface => ("adaface", &["margin_list", "easy_margin"]),
        };
        if let Some(key) = foreign.iter().find(|k| written.contains_key(**k)) {
            return Err(BadValue::new(
                key,
                format!("is not a key of head = \"{other}\": remove it or set `head`"),
            ));
        }
        if self.optimizer == OptimizerKind::Adamw && written.contains_key("momentum") {
            return Err(BadValue::new(
                "momentum",
                "is SGD's; AdamW's betas are PyTorch's (0.9, 0.999): remove the key".into(),
            ));
        }
        if matches!(architecture, Architecture::IResNet { .. }) {
            return Ok(());
        }
        let family = match architecture {
            Architecture::Vit { .. } => "ViT",
            _ => "MobileFaceNet",
        };
        if written.contains_key("dropout") && self.dropout != 0.0 {
            return Err(BadValue::new(
                "dropout",
                format!(
                    "{network} has no dropout (arcface_torch's {family} has none); \
                     remove the key or set it to 0"
                ),
            ));
        }
        if written.contains_key("embedding_gamma_trainable") && !self.embedding_gamma_trainable {
            return Err(BadValue::new(
                "embedding_gamma_trainable",
                format!(
                    "{network} trains the embedding BatchNorm's γ, as arcface_torch's \
                     {family} does; a fixed γ is the iresnets' option: remove the key"
                ),
            ));
        }
        Ok(())
    }
}
