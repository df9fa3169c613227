//! The embedder (an LResNet-E-IR, MobileFaceNet or Vision Transformer backbone) and the
//! margin-softmax head.

pub mod adaface;
pub mod attention;
pub mod backbone;
pub mod backbone_and_head;
pub mod batch_norm;
pub mod conv;
mod flex;
pub mod head;
pub mod iresnet;
pub mod layers;
pub mod linear;
pub mod memory_format;
pub mod mobilefacenet;
pub mod prelu;
pub mod recompute;
pub mod relu6;
pub mod summary;
pub mod vit;

use serde::{Deserialize, Serialize};

pub use adaface::{AdaFaceMargin, NormStatistics};
pub use backbone::{Backbone, BackboneConfig};
pub use backbone_and_head::BackboneAndHead;
pub use head::{MarginSoftmax, MarginSoftmaxConfig};
pub use iresnet::{IResNet, IResNetConfig};
pub use mobilefacenet::{MobileFaceNet, MobileFaceNetConfig};
pub use vit::{VisionTransformer, VitConfig};

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
    /// arcface_torch's `vit_t`: width 256, 12 blocks, drop path 0.1, mask 0.1.
    #[serde(rename = "vit_t")]
    #[value(name = "vit_t")]
    VitT,
    /// `vit_t_dp005_mask0` (its WebFace42M recipe): drop path 0.05, no masking.
    #[serde(rename = "vit_t_dp005_mask0")]
    #[value(name = "vit_t_dp005_mask0")]
    VitTDp005Mask0,
    /// `vit_s`: width 512, 12 blocks.
    #[serde(rename = "vit_s")]
    #[value(name = "vit_s")]
    VitS,
    /// `vit_s_dp005_mask_0`.
    #[serde(rename = "vit_s_dp005_mask_0")]
    #[value(name = "vit_s_dp005_mask_0")]
    VitSDp005Mask0,
    /// `vit_b`: width 512, 24 blocks.
    #[serde(rename = "vit_b")]
    #[value(name = "vit_b")]
    VitB,
    /// `vit_b_dp005_mask_005`.
    #[serde(rename = "vit_b_dp005_mask_005")]
    #[value(name = "vit_b_dp005_mask_005")]
    VitBDp005Mask005,
    /// Width 768, 24 blocks, drop path 0.1, mask 0.1 (get_model has only the WebFace variant
    /// below; this is it with vit_b's regularisation).
    #[serde(rename = "vit_l")]
    #[value(name = "vit_l")]
    VitL,
    /// `vit_l_dp005_mask_005`.
    #[serde(rename = "vit_l_dp005_mask_005")]
    #[value(name = "vit_l_dp005_mask_005")]
    VitLDp005Mask005,
    /// Width 64, 4 blocks, 8 heads, no drop path or masking: trains on a laptop CPU.
    #[serde(rename = "vit_tiny")]
    #[value(name = "vit_tiny")]
    VitTiny,
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
    /// Vision Transformer: token width, blocks, attention heads.
    Vit {
        width: usize,
        depth: usize,
        heads: usize,
    },
}

impl Network {
    /// Every network we build.
    pub const ALL: [Network; 17] = [
        Network::R18,
        Network::R34,
        Network::R50,
        Network::R100,
        Network::R200,
        Network::Tiny,
        Network::Mbf,
        Network::MbfLarge,
        Network::VitT,
        Network::VitTDp005Mask0,
        Network::VitS,
        Network::VitSDp005Mask0,
        Network::VitB,
        Network::VitBDp005Mask005,
        Network::VitL,
        Network::VitLDp005Mask005,
        Network::VitTiny,
    ];

    pub fn architecture(self) -> Architecture {
        let vit = |width, depth, heads| Architecture::Vit {
            width,
            depth,
            heads,
        };
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
            Network::VitT | Network::VitTDp005Mask0 => vit(256, 12, 8),
            Network::VitS | Network::VitSDp005Mask0 => vit(512, 12, 8),
            Network::VitB | Network::VitBDp005Mask005 => vit(512, 24, 8),
            Network::VitL | Network::VitLDp005Mask005 => vit(768, 24, 8),
            Network::VitTiny => vit(64, 4, 8),
        }
    }

    /// A ViT's (drop_path_rate, mask_ratio) as get_model builds it; None for the others.
    pub fn vit_regularisation(self) -> Option<(f64, f64)> {
        match self {
            Network::VitT | Network::VitS | Network::VitB | Network::VitL => Some((0.1, 0.1)),
            Network::VitTDp005Mask0 | Network::VitSDp005Mask0 => Some((0.05, 0.0)),
            Network::VitBDp005Mask005 | Network::VitLDp005Mask005 => Some((0.05, 0.05)),
            Network::VitTiny => Some((0.0, 0.0)),
            _ => None,
        }
    }

    /// Whether get_model builds this ViT with `using_checkpoint` (vit_b and vit_l; our vit_l
    /// follows them). None for the other backbones.
    pub fn vit_checkpoints(self) -> Option<bool> {
        self.vit_regularisation()?;
        Some(matches!(
            self,
            Network::VitB | Network::VitBDp005Mask005 | Network::VitL | Network::VitLDp005Mask005
        ))
    }

    pub fn is_vit(self) -> bool {
        matches!(self.architecture(), Architecture::Vit { .. })
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
            Network::VitT => "vit_t",
            Network::VitTDp005Mask0 => "vit_t_dp005_mask0",
            Network::VitS => "vit_s",
            Network::VitSDp005Mask0 => "vit_s_dp005_mask_0",
            Network::VitB => "vit_b",
            Network::VitBDp005Mask005 => "vit_b_dp005_mask_005",
            Network::VitL => "vit_l",
            Network::VitLDp005Mask005 => "vit_l_dp005_mask_005",
            Network::VitTiny => "vit_tiny",
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
     mbf_large ([2,8,12,4], scale 4), and the Vision Transformers vit_t (width 256, 12 blocks), \
     vit_s (512, 12), vit_b (512, 24), vit_l (768, 24), their WebFace variants and vit_tiny \
     (64, 4)";

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
