//! What training updates: the backbone and the margin-softmax head as one module, so that one
//! backward, one gradient map and one optimizer step cover both, and parameter paths read
//! "backbone.layer1.0.conv1.weight" / "head.weight" as in checkpoints.

use std::ops::Range;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::{Backbone, BackboneConfig, MarginSoftmax, MarginSoftmaxConfig, Precision};

#[derive(Module, Debug)]
pub struct BackboneAndHead {
    pub backbone: Backbone,
    pub head: MarginSoftmax,
}

impl BackboneAndHead {
    /// `backbone` and this rank's centres `classes` of `head` (all of them on one rank), on
    /// `device`. The centres come from `seed` block by block, the same rows at any world size;
    /// the backbone's weights are drawn later, at first use, from `device`'s seed, which is
    /// reset to `seed` here.
    pub fn init(
        backbone: &BackboneConfig,
        head: &MarginSoftmaxConfig,
        classes: Range<usize>,
        seed: u64,
        device: &Device,
    ) -> BackboneAndHead {
        let head = head.init_rows(classes.start, classes.len(), seed, device);
        device.seed(seed);
        BackboneAndHead {
            backbone: backbone.init(device),
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
