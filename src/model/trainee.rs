//! What training updates: the backbone and the margin-softmax head as one module, so that one
//! backward, one gradient map and one optimizer step cover both, and parameter paths read
//! "backbone.layer1.0.conv1.weight" / "head.weight" as in checkpoints.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::{Backbone, MarginSoftmax, Precision, backbone_config, head_config};
use crate::config::Config;

#[derive(Module, Debug)]
pub struct Trainee {
    pub backbone: Backbone,
    pub head: MarginSoftmax,
}

impl Trainee {
    /// The backbone and head `config` describes, for `num_classes` identities of which this
    /// rank holds the centres `classes` (all of them on one rank), on `device`. The centres
    /// come from the config's seed block by block, the same rows at any world size; the
    /// backbone's weights are drawn later, at first use, from `device`'s seed, which is reset
    /// to the config's here.
    pub fn init(
        config: &Config,
        num_classes: usize,
        classes: std::ops::Range<usize>,
        device: &Device,
    ) -> Trainee {
        let head = head_config(config, num_classes).init_rows(
            classes.start,
            classes.len(),
            config.seed,
            device,
        );
        device.seed(config.seed);
        Trainee {
            backbone: backbone_config(config).init(device),
            head,
        }
    }

    /// Mean margin-softmax cross-entropy of a batch: raw RGB [B, 3, 112, 112], labels [B],
    /// with the whole head on this rank (tests; training goes through `train::partial_fc`).
    pub fn loss(
        &self,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
        precision: Precision,
    ) -> Tensor<1> {
        self.head
            .forward(self.backbone.forward_at(images, precision), labels)
    }
}
