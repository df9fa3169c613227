//! What a config builds: the backbone and head it describes, and the two together as training
//! starts them.

use std::ops::Range;

use burn::tensor::Device;

use super::Config;
use crate::model::{
    Architecture, BackboneAndHead, BackboneConfig, IResNetConfig, MarginSoftmaxConfig,
    MobileFaceNetConfig,
};

impl Config {
    /// The backbone this config describes. `dropout` and `embedding_gamma_trainable` are the
    /// iresnets' (arcface_torch's MobileFaceNet has no dropout and always trains the
    /// embedding's γ; `Config::parse` refuses a MobileFaceNet's file that asks otherwise).
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
        }
    }

    /// The margin-softmax head this config describes, for `num_classes` identities.
    pub fn head(&self, num_classes: usize) -> MarginSoftmaxConfig {
        MarginSoftmaxConfig::new(num_classes, self.embedding_size)
            .with_margins(self.margin_list)
            .with_scale(self.scale)
            .with_easy_margin(self.easy_margin)
            .with_interclass_filtering_threshold(self.interclass_filtering_threshold)
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
