//! MobileFaceNet as arcface_torch builds it (backbones/mobilefacenet.py: `get_mbf`, blocks
//! (1, 4, 6, 2) at scale 2; `get_mbf_large`, (2, 8, 12, 4) at scale 4): a stride-2 stem, stages
//! of inverted bottlenecks (1×1 expand → depthwise 3×3 → 1×1 project) at 56, 28, 14 and 7
//! pixels, a 1×1 convolution to 512 channels and the global depthwise convolution (GDC: a 7×7
//! depthwise convolution, then FC and BatchNorm) to the embedding.
//!
//! The layers are arcface_torch's one for one; their names here say what each is, and
//! `crate::interop::arcface_torch::mbf` maps them to its `layers.N.layers.M` names. As for the
//! iresnets, the input is raw RGB normalised inside ((x − 127.5)/128), BatchNorm ε is the
//! seed's 2e-5 (arcface_torch's 1e-5 is folded in at import and export), and convolutions and
//! the FC layer are Kaiming-normal over fan-out as arcface_torch initialises them. Unlike the
//! iresnets' `features`, the embedding's BatchNorm trains γ, as in arcface_torch.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Initializer, Linear, LinearConfig, PRelu};
use burn::tensor::{Device, Tensor};

use super::layers::{INPUT_MEAN, INPUT_SCALE, bn, conv, conv_at, linear_at, prelu};
use super::{Precision, batch_norm};

/// Channels of the GDC head (fixed in arcface_torch, whatever the scale).
pub const HEAD_CHANNELS: usize = 512;
/// Side of the last feature map: 112 halved four times.
pub const FINAL_SIDE: usize = 7;

#[derive(Config, Debug)]
pub struct MobileFaceNetConfig {
    /// Bottlenecks per stage: [1, 4, 6, 2] for mbf, [2, 8, 12, 4] for mbf_large. A first
    /// stage of 1 is a grouped 3×3 convolution instead (arcface_torch's special case).
    pub blocks: [usize; 4],
    /// Width multiplier: stages of 64·scale, 64·scale, 128·scale and 128·scale channels.
    pub scale: usize,
    #[config(default = 512)]
    pub embedding_size: usize,
}

/// Convolution → BatchNorm → PReLU (arcface_torch's `ConvBlock`).
#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub prelu: PRelu,
}

/// Convolution → BatchNorm, no activation (`LinearBlock`).
#[derive(Module, Debug)]
pub struct LinearBlock {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// 1×1 to `inner` channels → depthwise 3×3 (stride 1 or 2) → 1×1 projection, plus the input
/// when `residual` (`DepthWise`).
#[derive(Module, Debug)]
pub struct Bottleneck {
    pub expand: ConvBlock,
    pub depthwise: ConvBlock,
    pub project: LinearBlock,
    pub residual: bool,
}

#[derive(Module, Debug)]
pub struct MobileFaceNet {
    /// 3×3 stride 2, 3 → 64·scale (arcface_torch's `layers.0`).
    pub stem: ConvBlock,
    /// `layers.1` when blocks[0] is 1: a 3×3 convolution in 64 groups.
    pub stem_grouped: Option<ConvBlock>,
    /// `layers.1` otherwise: blocks[0] residual bottlenecks.
    pub stage1: Vec<Bottleneck>,
    /// `layers.2` to `layers.7`: a stride-2 bottleneck, then a stage of residual ones, three
    /// times.
    pub down2: Bottleneck,
    pub stage2: Vec<Bottleneck>,
    pub down3: Bottleneck,
    pub stage3: Vec<Bottleneck>,
    pub down4: Bottleneck,
    pub stage4: Vec<Bottleneck>,
    /// 1×1 to 512 channels (`conv_sep`).
    pub conv_sep: ConvBlock,
    /// 7×7 depthwise, no padding: 512×1×1 (`features.layers.0`).
    pub gdc: LinearBlock,
    /// 512 → embedding, no bias (`features.layers.2`).
    pub fc: Linear,
    /// BatchNorm1d of the embedding (`features.layers.3`).
    pub features: BatchNorm,
}

impl ConvBlock {
    fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        d: &Device,
    ) -> Self {
        ConvBlock {
            conv: conv(cin, cout, kernel, stride, kernel / 2, groups, d),
            bn: bn(cout, d),
            prelu: prelu(cout, d),
        }
    }

    fn forward(&self, x: Tensor<4>, precision: Precision) -> Tensor<4> {
        let x = batch_norm::forward(&self.bn, conv_at(&self.conv, x, precision));
        super::prelu::prelu(x, self.prelu.alpha.val())
    }
}

impl LinearBlock {
    fn forward(&self, x: Tensor<4>, precision: Precision) -> Tensor<4> {
        batch_norm::forward(&self.bn, conv_at(&self.conv, x, precision))
    }
}

impl Bottleneck {
    /// `cin` → `inner` (depthwise, at `stride`) → `cout`.
    fn new(
        cin: usize,
        cout: usize,
        inner: usize,
        stride: usize,
        residual: bool,
        d: &Device,
    ) -> Self {
        Bottleneck {
            expand: ConvBlock::new(cin, inner, 1, 1, 1, d),
            depthwise: ConvBlock::new(inner, inner, 3, stride, inner, d),
            project: LinearBlock {
                conv: conv(inner, cout, 1, 1, 0, 1, d),
                bn: bn(cout, d),
            },
            residual,
        }
    }

    fn forward(&self, x: Tensor<4>, precision: Precision) -> Tensor<4> {
        let y = self.expand.forward(x.clone(), precision);
        let y = self.depthwise.forward(y, precision);
        let y = self.project.forward(y, precision);
        if self.residual { y + x } else { y }
    }
}

/// `count` residual bottlenecks of `channels` through `inner`.
fn stage(count: usize, channels: usize, inner: usize, d: &Device) -> Vec<Bottleneck> {
    (0..count)
        .map(|_| Bottleneck::new(channels, channels, inner, 1, true, d))
        .collect()
}

impl MobileFaceNetConfig {
    pub fn init(&self, d: &Device) -> MobileFaceNet {
        let [b1, b2, b3, b4] = self.blocks;
        let (narrow, wide) = (64 * self.scale, 128 * self.scale);
        // arcface_torch's widths of the depthwise layers (its `groups` argument), fixed
        // whatever the scale: 128 in the first two stages, 256 after, 512 in the last
        // downsampling.
        let (stem_grouped, stage1) = if b1 == 1 {
            (
                Some(ConvBlock::new(narrow, narrow, 3, 1, 64, d)),
                Vec::new(),
            )
        } else {
            (None, stage(b1, narrow, 128, d))
        };
        // burn's Linear weight is [in, out]; the fan-out it draws over is `embedding_size`, as
        // PyTorch's over its [out, in] weight.
        let fc = LinearConfig::new(HEAD_CHANNELS, self.embedding_size)
            .with_bias(false)
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: true,
            })
            .init(d);
        MobileFaceNet {
            stem: ConvBlock::new(3, narrow, 3, 2, 1, d),
            stem_grouped,
            stage1,
            down2: Bottleneck::new(narrow, narrow, 128, 2, false, d),
            stage2: stage(b2, narrow, 128, d),
            down3: Bottleneck::new(narrow, wide, 256, 2, false, d),
            stage3: stage(b3, wide, 256, d),
            down4: Bottleneck::new(wide, wide, 512, 2, false, d),
            stage4: stage(b4, wide, 256, d),
            conv_sep: ConvBlock::new(wide, HEAD_CHANNELS, 1, 1, 1, d),
            gdc: LinearBlock {
                conv: conv(
                    HEAD_CHANNELS,
                    HEAD_CHANNELS,
                    FINAL_SIDE,
                    1,
                    0,
                    HEAD_CHANNELS,
                    d,
                ),
                bn: bn(HEAD_CHANNELS, d),
            },
            fc,
            features: bn(self.embedding_size, d),
        }
    }
}

impl MobileFaceNet {
    /// Every bottleneck in order, with the stage it ends (1–4) for the last of each.
    pub fn bottlenecks(&self) -> Vec<(&'static str, &Bottleneck)> {
        let mut out: Vec<(&'static str, &Bottleneck)> = Vec::new();
        out.extend(self.stage1.iter().map(|b| ("stage1", b)));
        out.push(("stage2", &self.down2));
        out.extend(self.stage2.iter().map(|b| ("stage2", b)));
        out.push(("stage3", &self.down3));
        out.extend(self.stage3.iter().map(|b| ("stage3", b)));
        out.push(("stage4", &self.down4));
        out.extend(self.stage4.iter().map(|b| ("stage4", b)));
        out
    }

    /// Raw RGB 0–255, [N, 3, 112, 112] → embedding [N, E] (not L2-normalised).
    pub fn forward_at(&self, images: Tensor<4>, precision: Precision) -> Tensor<2> {
        let x = (images - INPUT_MEAN) * INPUT_SCALE;
        let mut x = self.stem.forward(x, precision);
        if let Some(block) = &self.stem_grouped {
            x = block.forward(x, precision);
        }
        for (_, block) in self.bottlenecks() {
            x = block.forward(x, precision);
        }
        let x = self.conv_sep.forward(x, precision);
        let x: Tensor<2> = self.gdc.forward(x, precision).flatten(1, 3);
        batch_norm::forward(&self.features, linear_at(&self.fc, x, precision))
    }
}
