//! What a config builds: the backbone and head it describes, and the two together as training
//! starts them.

use std::ops::Range;

use burn::tensor::Device;

use super::{AugmentPreset, Config, HeadKind};
use crate::data::augment::{Augmentations, Ranges};
use crate::model::{
    AdaFaceMargin, Architecture, BackboneAndHead, BackboneConfig, IResNetConfig,
    MarginSoftmaxConfig, MobileFaceNetConfig, VitConfig,
};

impl AugmentPreset {
    /// The preset's probabilities: AdaFace's published scripts' 0.2 each; arcface_torch's
    /// dataset.py's coin flips for `dali_aug`.
    pub fn augmentations(self) -> Augmentations {
        let off = Augmentations::default();
        match self {
            AugmentPreset::None => off,
            AugmentPreset::Adaface => Augmentations {
                crop: 0.2,
                low_res: 0.2,
                photometric: 0.2,
                ..off
            },
            AugmentPreset::ArcfaceTorch => Augmentations {
                resize: 0.1,
                blur: 0.2,
                hsv: 0.2,
                gray: 0.1,
                ..off
            },
        }
    }
}

impl Config {
    /// The backbone this config describes. `dropout` and `embedding_gamma_trainable` are the
    /// iresnets' (arcface_torch's MobileFaceNet and ViT have no dropout and always train the
    /// embedding's γ; `Config::parse` refuses their files that ask otherwise);
    /// `drop_path_rate`, `mask_ratio` and `using_checkpoint` the ViTs'.
    pub fn backbone(&self) -> BackboneConfig {
        match self.network.architecture() {
            Architecture::IResNet { units, widths } => IResNetConfig::new(units, widths)
                .with_embedding_size(self.embedding_size)
                .with_dropout(self.dropout)
                .with_embedding_gamma_trainable(self.embedding_gamma_trainable)
                .into(),
            Architecture::MobileFaceNet { blocks, scale } => {
                MobileFaceNetConfig::new(blocks, scale)
                    .with_embedding_size(self.embedding_size)
                    .into()
            }
            Architecture::Vit {
                width,
                depth,
                heads,
            } => {
                let (drop_path_rate, mask_ratio) = self.vit_regularisation();
                VitConfig::new(width, depth)
                    .with_heads(heads)
                    .with_drop_path_rate(drop_path_rate)
                    .with_mask_ratio(mask_ratio)
                    .with_embedding_size(self.embedding_size)
                    .with_using_checkpoint(
                        self.using_checkpoint
                            .unwrap_or_else(|| self.network.vit_checkpoints().unwrap_or(false)),
                    )
                    .into()
            }
        }
    }

    /// A ViT's drop-path rate and mask ratio: the config's where it sets them, else the
    /// network's own (get_model's); (0, 0) for the other backbones.
    pub fn vit_regularisation(&self) -> (f64, f64) {
        let (drop_path, mask) = self.network.vit_regularisation().unwrap_or((0.0, 0.0));
        (
            self.drop_path_rate.unwrap_or(drop_path),
            self.mask_ratio.unwrap_or(mask),
        )
    }

    /// The augmentations' probabilities: the preset's, each overridden by its key if written.
    pub fn augmentations(&self) -> Augmentations {
        let preset = self.augment.augmentations();
        Augmentations {
            crop: self.crop_augmentation_prob.unwrap_or(preset.crop),
            low_res: self.low_res_augmentation_prob.unwrap_or(preset.low_res),
            photometric: self
                .photometric_augmentation_prob
                .unwrap_or(preset.photometric),
            resize: self.resize_augmentation_prob.unwrap_or(preset.resize),
            blur: self.blur_augmentation_prob.unwrap_or(preset.blur),
            hsv: self.hsv_augmentation_prob.unwrap_or(preset.hsv),
            gray: self.gray_augmentation_prob.unwrap_or(preset.gray),
            ranges: Ranges {
                crop_scale: self.crop_augmentation_scale,
                low_res: self.low_res_augmentation_range,
                photometric: self.photometric_augmentation_range,
                resize: self.resize_augmentation_range,
                blur: self.blur_augmentation_range,
                hue: self.hsv_augmentation_hue,
                saturation: self.hsv_augmentation_saturation,
            },
        }
    }

    /// The margin-softmax head this config describes, for `num_classes` identities.
    pub fn head(&self, num_classes: usize) -> MarginSoftmaxConfig {
        MarginSoftmaxConfig::new(num_classes, self.embedding_size)
            .with_margins(self.margin_list)
            .with_scale(self.scale)
            .with_easy_margin(self.easy_margin)
            .with_interclass_filtering_threshold(self.interclass_filtering_threshold)
            .with_adaface(match self.head {
                HeadKind::Margin => None,
                HeadKind::Adaface => Some(AdaFaceMargin {
                    m: self.adaface_m,
                    h: self.adaface_h,
                    t_alpha: self.adaface_t_alpha,
                }),
            })
    }

    /// The backbone and head this config describes, for `num_classes` identities of which this
    /// rank holds the centres `classes` (all of them on one rank), on `device`
    /// ([`BackboneAndHead::init`]).
    pub fn init_model(
        &self,
        num_classes: usize,
        classes: Range<usize>,
        device: &Device,
    ) -> BackboneAndHead {
        BackboneAndHead::init(
            &self.backbone(),
            &self.head(num_classes),
            classes,
            self.seed,
            device,
        )
    }
}
