//! The training configuration: one TOML file, keys named as in insightface's `arcface_torch`
//! configs where one exists. Unknown keys are rejected and every error names the file and the key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{Network, Precision};

mod build;
mod checks;

/// Everything a run needs. Absent keys take the seed recipe's value (LResNet100E-IR, ArcFace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    // --- backbone ---
    /// Backbone: r18, r34, r50, r100, r200 or tiny (iresnets), mbf or mbf_large
    /// (MobileFaceNets), vit_t, vit_s, vit_b, vit_l, their WebFace variants as arcface_torch
    /// names them, or vit_tiny (Vision Transformers).
    pub network: Network,
    /// Width of the embedding (the zoo model: 512).
    pub embedding_size: usize,
    /// Dropout before the embedding FC layer (seed: 0.4; arcface_torch: 0). Iresnets only: a
    /// MobileFaceNet's file may set it to 0 or leave it out.
    pub dropout: f64,
    /// Whether γ of the last BatchNorm is trained. The seed fixes it at 1. Iresnets only: a
    /// MobileFaceNet trains it, as arcface_torch's does (its file may say `true` or leave it out).
    pub embedding_gamma_trainable: bool,
    /// A ViT's stochastic depth at its last block (vit.py's `drop_path_rate`); by default the
    /// network's (vit_t 0.1, the `_dp005` variants 0.05). ViTs only.
    pub drop_path_rate: Option<f64>,
    /// Share of a ViT's 144 tokens masked in training (vit.py's `mask_ratio`); by default the
    /// network's. ViTs only.
    pub mask_ratio: Option<f64>,
    /// Each ViT block's activations recomputed in the backward instead of kept (vit.py's
    /// `using_checkpoint`: one more forward per step, a block's input kept instead of all its
    /// activations); by default get_model's (vit_b and vit_l: true). ViTs only.
    pub using_checkpoint: Option<bool>,

    // --- margin-softmax head ---
    /// "margin" (the combined margin of `margin_list`) or "adaface" (mk-minchul/AdaFace's
    /// margin, set by each image's feature norm against the norms' running statistics).
    pub head: HeadKind,
    /// Combined margin (m1, m2, m3): target logit s·(cos(m1·θ + m2) − m3).
    /// ArcFace [1.0, 0.5, 0.0]; CosFace [1.0, 0.0, 0.35].
    pub margin_list: [f64; 3],
    /// AdaFace's m (its scripts' 0.4): the angular margin −m·ĝ and additive m + m·ĝ.
    pub adaface_m: f64,
    /// AdaFace's h (0.333): the norm's z-score times h is ĝ, clipped to [−1, 1].
    pub adaface_h: f64,
    /// AdaFace's t_alpha (0.01): the rate of the norms' running mean and std.
    pub adaface_t_alpha: f64,
    /// Logit scale s.
    pub scale: f64,
    /// insightface's `easy_margin`: apply the margin only where cos θ > 0.
    pub easy_margin: bool,
    /// Fraction of each rank's class centres a step uses (arcface_torch's partial FC,
    /// PartialFC_V2): ⌊sample_rate · centres⌋, every positive among them; 1 uses all.
    pub sample_rate: f64,
    /// arcface_torch's `interclass_filtering_threshold`: the head sets every non-target cosine
    /// above it to 0 (for web-crawled data, where one person can be two identities); 0, the
    /// default, turns it off.
    pub interclass_filtering_threshold: f64,
    /// Number of identities; by default read from the dataset's `property` file.
    pub num_classes: Option<usize>,

    // --- augmentation ---
    /// "none" (insightface's horizontal flip only), "adaface" (AdaFace's crop, low-resolution
    /// and photometric augmentations, each with probability 0.2) or "arcface_torch" (its
    /// `dali_aug`: resize 0.1, blur 0.2, hsv 0.2, gray 0.1), before the flip; the seven keys
    /// below override the preset's probabilities one by one.
    pub augment: AugmentPreset,
    /// AdaFace's crop: a RandomResizedCrop box kept in place, the rest zeroed.
    pub crop_augmentation_prob: Option<f64>,
    /// AdaFace's low resolution: down to 20–100 % of the side and back up, with cv2's
    /// interpolations drawn.
    pub low_res_augmentation_prob: Option<f64>,
    /// AdaFace's ColorJitter: brightness, contrast, saturation factors in [0.5, 1.5].
    pub photometric_augmentation_prob: Option<f64>,
    /// arcface_torch's random resize: DALI's antialiased linear resize to 56–89 pixels and back.
    pub resize_augmentation_prob: Option<f64>,
    /// arcface_torch's Gaussian blur: a 3×3 (σ 0.8) or 5×5 (σ 1.1) window.
    pub blur_augmentation_prob: Option<f64>,
    /// arcface_torch's hsv: hue turned 0–20° and saturation × 1–1.2 in DALI's YIQ.
    pub hsv_augmentation_prob: Option<f64>,
    /// arcface_torch's gray: greyscale through DALI's hsv at saturation 0.
    pub gray_augmentation_prob: Option<f64>,
    /// The ranges [low, high) the augmentations draw from, the recipes' by default: the crop's
    /// share of the area (AdaFace 0.2–1), the low resolution's side ratio (0.2–1), the
    /// photometric factors (0.5–1.5); DALI resize's size in pixels (arcface_torch 56–89), the
    /// blur's half-width before rounding (1–2: windows 3×3 and 5×5), hsv's hue in degrees
    /// (0–20) and saturation (1–1.2).
    pub crop_augmentation_scale: [f64; 2],
    pub low_res_augmentation_range: [f64; 2],
    pub photometric_augmentation_range: [f64; 2],
    pub resize_augmentation_range: [f64; 2],
    pub blur_augmentation_range: [f64; 2],
    pub hsv_augmentation_hue: [f64; 2],
    pub hsv_augmentation_saturation: [f64; 2],

    // --- optimisation ---
    /// Images per device and forward pass (a micro-batch when `gradient_acc` > 1).
    pub batch_size: usize,
    /// Micro-batches of `batch_size` per optimiser step (arcface_torch's key): their gradients
    /// summed and divided by their number, so that a step equals one on the `gradient_acc`
    /// times larger batch but for BatchNorm, which normalises each micro-batch on its own.
    /// The schedule, `max_steps`, logs and checkpoints count optimiser steps.
    pub gradient_acc: usize,
    /// "sgd" (with `momentum`, the seed's and arcface_torch's iresnet recipes) or "adamw"
    /// (torch.optim.AdamW, β (0.9, 0.999), ε 1e-8: arcface_torch's ViT recipes).
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// SGD's momentum (not AdamW's: a file that sets it with "adamw" is refused).
    pub momentum: f64,
    pub weight_decay: f64,
    /// "steps" (seed: lr ÷ 10 at each of `lr_steps`) or "poly" (arcface_torch's
    /// PolynomialLRWarmup: base · (1 − progress)^`poly_power` after a linear warmup).
    pub lr_schedule: LrSchedule,
    /// The power of the "poly" decay: 1 (linear) as arcface_torch's train_v2.py trains; before
    /// this key existed "poly" decayed with 2.
    pub poly_power: f64,
    /// Global steps at which the "steps" schedule divides the learning rate by 10.
    pub lr_steps: Vec<usize>,
    pub num_epoch: usize,
    pub warmup_epoch: usize,
    /// Clip gradients to this global L2 norm (none when absent).
    pub clip_grad_norm: Option<f64>,
    /// Weight decay on BatchNorm γ/β and PReLU slopes too (the seed and arcface_torch: yes).
    pub decay_norm_and_prelu: bool,

    // --- data ---
    /// Folder with train.rec, train.idx, property and the validation .bin files; or an image
    /// folder, `<identity>/<images>` (torchvision's ImageFolder), the .bin files beside them.
    pub rec: PathBuf,
    /// Validation sets, each `<rec>/<name>.bin`.
    pub val_targets: Vec<String>,
    /// Decoding threads of the data loader.
    pub num_workers: usize,
    /// Training records that fail to decode mid-run are skipped (another image of the batch
    /// takes their place), each named once in the log; past this many the run stops naming the
    /// last ones (`arcface inspect --verify` finds them all beforehand).
    pub max_skipped_records: usize,
    /// Generate synthetic identities into `rec` when it does not exist (CPU demos).
    pub synthetic: Option<SyntheticSpec>,

    // --- run ---
    /// Folder for checkpoints, logs and TensorBoard files.
    pub output: PathBuf,
    pub seed: u64,
    /// Log every `frequent` steps.
    pub frequent: usize,
    /// Validate every `verbose` steps (and at every epoch end).
    pub verbose: usize,
    /// Checkpoint every `save_every` steps (and at every epoch end).
    pub save_every: usize,
    /// Step checkpoints kept besides `best.ckpt`.
    pub keep_checkpoints: usize,
    /// "cpu", "cuda", "cuda:0", "cuda:0,1,2,3" or "libtorch-cpu" (see `device.rs`); several
    /// CUDA devices train data parallel, one process each, `batch_size` images each
    /// (`src/distributed/`).
    pub device: String,
    /// Seconds a rank waits in a collective (or at the rendezvous) for the others before the run
    /// stops naming the rank that died or hangs (torch.distributed's `timeout`, also 30 min).
    pub dist_timeout: u64,
    /// "fp32", or "bf16": mixed precision as PyTorch's autocast (`model::Precision`).
    pub precision: Precision,
    /// cuDNN picks the fastest convolution algorithms by timing them (LibTorch CUDA only).
    pub cudnn_benchmark: bool,
    /// The images enter the backbone stored channels-last (NHWC), and the activations stay so,
    /// in training and in validation (LibTorch only; PyTorch's
    /// `memory_format=torch.channels_last`; `model::memory_format`).
    pub channels_last: bool,
}

/// What `arcface synth` makes, for a config whose data folder may not exist yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    pub identities: usize,
    pub images_per_identity: usize,
    pub val_pairs: usize,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AugmentPreset {
    #[default]
    None,
    Adaface,
    #[serde(rename = "arcface_torch")]
    #[value(name = "arcface_torch")]
    ArcfaceTorch,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    #[default]
    Margin,
    Adaface,
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadKind::Margin => "margin",
            HeadKind::Adaface => "adaface",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Sgd,
    Adamw,
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adamw => "adamw",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Steps,
    Poly,
}

impl Default for Config {
    /// The seed recipe: LResNet100E-IR, 512-d, ArcFace (1, 0.5, 0), s = 64, SGD 0.1/0.9/5e-4.
    fn default() -> Self {
        let ranges = crate::data::augment::Ranges::default();
        Config {
            network: Network::R100,
            embedding_size: 512,
            dropout: 0.4,
            embedding_gamma_trainable: false,
            drop_path_rate: None,
            mask_ratio: None,
            using_checkpoint: None,
            head: HeadKind::Margin,
            margin_list: [1.0, 0.5, 0.0],
            adaface_m: 0.4,
            adaface_h: 0.333,
            adaface_t_alpha: 0.01,
            scale: 64.0,
            easy_margin: false,
            sample_rate: 1.0,
            num_classes: None,
            augment: AugmentPreset::None,
            crop_augmentation_prob: None,
            low_res_augmentation_prob: None,
            photometric_augmentation_prob: None,
            resize_augmentation_prob: None,
            blur_augmentation_prob: None,
            hsv_augmentation_prob: None,
            gray_augmentation_prob: None,
            crop_augmentation_scale: ranges.crop_scale,
            low_res_augmentation_range: ranges.low_res,
            photometric_augmentation_range: ranges.photometric,
            resize_augmentation_range: ranges.resize,
            blur_augmentation_range: ranges.blur,
            hsv_augmentation_hue: ranges.hue,
            hsv_augmentation_saturation: ranges.saturation,
            batch_size: 128,
            gradient_acc: 1,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            lr_schedule: LrSchedule::Steps,
            poly_power: 1.0,
            interclass_filtering_threshold: 0.0,
            lr_steps: vec![100_000, 160_000, 220_000],
            num_epoch: 20,
            warmup_epoch: 0,
            clip_grad_norm: None,
            decay_norm_and_prelu: true,
            rec: PathBuf::from("data/faces_emore"),
            val_targets: ["lfw", "cfp_fp", "cfp_ff", "agedb_30"]
                .map(String::from)
                .to_vec(),
            num_workers: 2,
            max_skipped_records: 100,
            synthetic: None,
            output: PathBuf::from("checkpoints/r100"),
            seed: 2048,
            frequent: 10,
            verbose: 2000,
            save_every: 2000,
            keep_checkpoints: 3,
            dist_timeout: 1800,
            device: "cpu".to_string(),
            precision: Precision::Fp32,
            cudnn_benchmark: true,
            channels_last: false,
        }
    }
}

/// A value that parses but makes no sense, by key; [`ConfigError`] adds the file.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` {message}")]
pub struct BadValue {
    pub key: &'static str,
    pub message: String,
}

impl BadValue {
    fn new(key: &'static str, message: String) -> BadValue {
        BadValue { key, message }
    }
}

/// A configuration problem, located by file and key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, empty when the problem is not tied to one key.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `origin` only names the source in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let located = |key: String, message: String| ConfigError {
            file: origin.to_path_buf(),
            key,
            message,
        };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| located(String::new(), toml_message(&e, text)))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            located(key, toml_message(e.inner(), text))
        })?;
        config
            .validate()
            .and_then(|()| config.check_written_keys(text))
            .map_err(|e| located(e.key.to_string(), e.message))?;
        Ok(config)
    }

    /// Identities for the class-centre matrix: `num_classes` if set, else the dataset's
    /// `property` file.
    pub fn resolve_num_classes(&self) -> anyhow::Result<usize> {
        match self.num_classes {
            Some(n) => Ok(n),
            None => Ok(crate::data::property::Property::read(&self.rec)?.num_classes),
        }
    }
}

/// toml's message with the line and column of its span (its own Display prints a multi-line
/// snippet, which reads badly after our "file: key:" prefix).
fn toml_message(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests;
