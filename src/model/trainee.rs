//! What training updates: the backbone and the margin-softmax head as one module, so that one
//! backward, one gradient map and one optimizer step cover both, and parameter paths read
//! "backbone.layer1.0.conv1.weight" / "head.weight" as in checkpoints.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::{IResNet, MarginSoftmax, Precision, backbone_config, head_config};
use crate::config::Config;

#[derive(Module, Debug)]
pub struct Trainee {
    pub backbone: IResNet,
    pub head: MarginSoftmax,
}

impl Trainee {
    /// The backbone and head `config` describes, for `num_classes` identities, on `device`.
    pub fn init(config: &Config, num_classes: usize, device: &Device) -> Trainee {
        Trainee {
            backbone: backbone_config(config).init(device),
            head: head_config(config, num_classes).init(device),
        }
    }

    /// Mean margin-softmax cross-entropy of a batch: raw RGB [B, 3, 112, 112], labels [B].
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
