//! The embedder (an LResNet-E-IR or MobileFaceNet backbone) and the margin-softmax head.

pub mod backbone;
pub mod backbone_and_head;
pub mod batch_norm;
pub mod conv;
mod flex;
pub mod head;
pub mod iresnet;
pub mod layers;
pub mod memory_format;
pub mod mobilefacenet;
pub mod prelu;
pub mod summary;

use serde::{Deserialize, Serialize};

pub use backbone::{Backbone, BackboneConfig};
pub use backbone_and_head::BackboneAndHead;
pub use head::{MarginSoftmax, MarginSoftmaxConfig};
pub use iresnet::{IResNet, IResNetConfig};
pub use mobilefacenet::{MobileFaceNet, MobileFaceNetConfig};

/// The backbones of insightface's model zoo, plus a tiny one for CPU demos and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    R18,
    R34,
    R50,
    R100,
    /// arcface_torch's iresnet200.
    R200,
    /// Widths 8/16/32/64, one unit per stage: trains on a laptop CPU.
    Tiny,
    /// arcface_torch's MobileFaceNet (`get_mbf`): blocks (1, 4, 6, 2), scale 2.
    Mbf,
    /// `get_mbf_large`: blocks (2, 8, 12, 4), scale 4.
    #[serde(rename = "mbf_large")]
    #[value(name = "mbf_large")]
    MbfLarge,
}

/// What a [`Network`] is built as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// LResNet-E-IR: units per stage, output channels per stage.
    IResNet {
        units: [usize; 4],
        widths: [usize; 4],
    },
    /// MobileFaceNet: bottlenecks per stage, width multiplier.
    MobileFaceNet { blocks: [usize; 4], scale: usize },
}

impl Network {
    /// Every network we build.
    pub const ALL: [Network; 8] = [
        Network::R18,
        Network::R34,
        Network::R50,
        Network::R100,
        Network::R200,
        Network::Tiny,
        Network::Mbf,
        Network::MbfLarge,
    ];

    pub fn architecture(self) -> Architecture {
        let resnet = |units| Architecture::IResNet {
            units,
            widths: [64, 128, 256, 512],
        };
        match self {
            Network::R18 => resnet([2, 2, 2, 2]),
            Network::R34 => resnet([3, 4, 6, 3]),
            Network::R50 => resnet([3, 4, 14, 3]),
            Network::R100 => resnet([3, 13, 30, 3]),
            Network::R200 => resnet([6, 26, 60, 6]),
            Network::Tiny => Architecture::IResNet {
                units: [1, 1, 1, 1],
                widths: [8, 16, 32, 64],
            },
            Network::Mbf => Architecture::MobileFaceNet {
                blocks: [1, 4, 6, 2],
                scale: 2,
            },
            Network::MbfLarge => Architecture::MobileFaceNet {
                blocks: [2, 8, 12, 4],
                scale: 4,
            },
        }
    }

    /// The network built as `architecture`, if we build one.
    pub fn of(architecture: Architecture) -> Option<Network> {
        Network::ALL
            .into_iter()
            .find(|n| n.architecture() == architecture)
    }

    /// The iresnet with these units per stage and widths, if we build one.
    pub fn with_shape(units: &[usize], widths: &[usize]) -> Option<Network> {
        let (units, widths) = (units.try_into().ok()?, widths.try_into().ok()?);
        Network::of(Architecture::IResNet { units, widths })
    }

    pub fn name(self) -> &'static str {
        match self {
            Network::R18 => "r18",
            Network::R34 => "r34",
            Network::R50 => "r50",
            Network::R100 => "r100",
            Network::R200 => "r200",
            Network::Tiny => "tiny",
            Network::Mbf => "mbf",
            Network::MbfLarge => "mbf_large",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// For errors about a shape we do not build.
pub const NETWORKS_WE_BUILD: &str = "we build the iresnets r18 [2,2,2,2], r34 [3,4,6,3], r50 \
     [3,4,14,3], r100 [3,13,30,3] and r200 [6,26,60,6] at widths [64,128,256,512], tiny \
     [1,1,1,1] at [8,16,32,64], and the MobileFaceNets mbf (blocks [1,4,6,2], scale 2) and \
     mbf_large ([2,8,12,4], scale 4)";

/// Arithmetic of the backbone's convolutions and FC layer during training.
///
/// `Bf16` is mixed precision as PyTorch's bf16 autocast: the weights (the optimizer's master
/// copy), their gradients, the momentum buffers, BatchNorm's and PReLU's parameters and
/// statistics, the embedding's BatchNorm, the head and the loss stay fp32; the convolutions and
/// the FC layer multiply in bf16, and the activations stay bf16 from each convolution through
/// BatchNorm (computed at fp32 inside), PReLU and the residual sums to the next one, so that
/// only the weights are cast each step. bf16 has fp32's exponent range, so no loss scaling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
