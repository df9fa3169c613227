//! LResNet-E-IR ("iresnet"): insightface's fresnet with version_unit 3, input block 1 and output
//! block E. Field names follow arcface_torch's `iresnet.py` (conv1, bn1, prelu, layer1..4, bn2,
//! dropout, fc, features) so that weight names line up with insightface checkpoints.
//!
//! Initialisation: convolutions Kaiming-normal over fan-out (the seed's MXNet
//! `Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)`), the FC layer as PyTorch's
//! default (as arcface_torch), BatchNorm γ = 1 and β = 0, PReLU slopes 0.25.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, Dropout, DropoutConfig, Linear, LinearConfig, PRelu};
use burn::tensor::{Device, Tensor};

use super::Precision;
use super::layers::{bn, conv, conv_at, linear_at, prelu};
use super::{batch_norm, prelu};

pub use super::layers::{BN_EPS, BN_MOMENTUM, INPUT_MEAN, INPUT_SCALE, INPUT_SIZE};

#[derive(Config, Debug)]
pub struct IResNetConfig {
    /// Units per stage, e.g. [3, 13, 30, 3] for r100.
    pub units: [usize; 4],
    /// Output channels per stage; the stem has `widths[0]`.
    pub widths: [usize; 4],
    #[config(default = 512)]
    pub embedding_size: usize,
    #[config(default = 0.4)]
    pub dropout: f64,
    /// The seed fixes γ of the last BatchNorm at 1; `true` trains it.
    #[config(default = false)]
    pub embedding_gamma_trainable: bool,
}

#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

/// BN → conv3×3 → BN → PReLU → conv3×3 (stride s) → BN, plus the shortcut; no activation after
/// the sum.
#[derive(Module, Debug)]
pub struct IBasicBlock {
    pub bn1: BatchNorm,
    pub conv1: Conv2d,
    pub bn2: BatchNorm,
    pub prelu: PRelu,
    pub conv2: Conv2d,
    pub bn3: BatchNorm,
    pub downsample: Option<Downsample>,
}

#[derive(Module, Debug)]
pub struct IResNet {
    pub conv1: Conv2d,
    pub bn1: BatchNorm,
    pub prelu: PRelu,
    pub layer1: Vec<IBasicBlock>,
    pub layer2: Vec<IBasicBlock>,
    pub layer3: Vec<IBasicBlock>,
    pub layer4: Vec<IBasicBlock>,
    pub bn2: BatchNorm,
    pub dropout: Dropout,
    pub fc: Linear,
    pub features: BatchNorm,
}

impl IBasicBlock {
    fn new(in_channels: usize, out_channels: usize, stride: usize, device: &Device) -> Self {
        let downsample = (stride != 1 || in_channels != out_channels).then(|| Downsample {
            conv: conv(in_channels, out_channels, 1, stride, 0, 1, device),
            bn: bn(out_channels, device),
        });
        IBasicBlock {
            bn1: bn(in_channels, device),
            conv1: conv(in_channels, out_channels, 3, 1, 1, 1, device),
            bn2: bn(out_channels, device),
            prelu: prelu(out_channels, device),
            conv2: conv(out_channels, out_channels, 3, stride, 1, 1, device),
            bn3: bn(out_channels, device),
            downsample,
        }
    }

    pub fn forward(&self, x: Tensor<4>, precision: Precision) -> Tensor<4> {
        let shortcut = match &self.downsample {
            Some(down) => batch_norm::forward(&down.bn, conv_at(&down.conv, x.clone(), precision)),
            None => x.clone(),
        };
        let y = conv_at(&self.conv1, batch_norm::forward(&self.bn1, x), precision);
        let y = prelu::prelu(batch_norm::forward(&self.bn2, y), self.prelu.alpha.val());
        let y = batch_norm::forward(&self.bn3, conv_at(&self.conv2, y, precision));
        y + shortcut
    }
}

impl IResNetConfig {
    /// Output side of the last stage: 112 → 56 → 28 → 14 → 7.
    pub fn final_side(&self) -> usize {
        INPUT_SIZE >> self.units.len()
    }

    pub fn init(&self, device: &Device) -> IResNet {
        let stem = self.widths[0];
        let mut in_channels = stem;
        let mut layers: Vec<Vec<IBasicBlock>> = Vec::with_capacity(4);
        for (&units, &width) in self.units.iter().zip(&self.widths) {
            let stage = (0..units)
                .map(|i| {
                    let (cin, stride) = if i == 0 { (in_channels, 2) } else { (width, 1) };
                    IBasicBlock::new(cin, width, stride, device)
                })
                .collect();
            layers.push(stage);
            in_channels = width;
        }
        let last = self.widths[3];
        let side = self.final_side();
        let mut features = bn(self.embedding_size, device);
        if !self.embedding_gamma_trainable {
            features.gamma = features.gamma.set_require_grad(false);
        }
        let [layer1, layer2, layer3, layer4]: [Vec<IBasicBlock>; 4] =
            layers.try_into().expect("four stages");
        IResNet {
            conv1: conv(3, stem, 3, 1, 1, 1, device),
            bn1: bn(stem, device),
            prelu: prelu(stem, device),
            layer1,
            layer2,
            layer3,
            layer4,
            bn2: bn(last, device),
            dropout: DropoutConfig::new(self.dropout).init(),
            fc: LinearConfig::new(last * side * side, self.embedding_size).init(device),
            features,
        }
    }
}

impl IResNet {
    /// The four stages in order.
    pub fn stages(&self) -> [&Vec<IBasicBlock>; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    /// Raw RGB 0–255, [N, 3, 112, 112] → the stem's output [N, C, 112, 112].
    pub fn forward_stem(&self, images: Tensor<4>, precision: Precision) -> Tensor<4> {
        let x = (images - INPUT_MEAN) * INPUT_SCALE;
        let x = conv_at(&self.conv1, x, precision);
        prelu::prelu(batch_norm::forward(&self.bn1, x), self.prelu.alpha.val())
    }

    /// The last stage's feature map [N, C, 7, 7] → the embedding [N, E] (not normalised).
    pub fn forward_output(&self, x: Tensor<4>, precision: Precision) -> Tensor<2> {
        let x = self.dropout.forward(batch_norm::forward(&self.bn2, x));
        let x: Tensor<2> = x.flatten(1, 3);
        batch_norm::forward(&self.features, linear_at(&self.fc, x, precision))
    }

    /// Raw RGB 0–255, [N, 3, 112, 112] → embedding [N, E] (not L2-normalised, as the zoo's `fc1`).
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_at(images, Precision::Fp32)
    }

    /// [`IResNet::forward`] with the convolutions and the FC layer at `precision`.
    pub fn forward_at(&self, images: Tensor<4>, precision: Precision) -> Tensor<2> {
        let mut x = self.forward_stem(images, precision);
        for stage in self.stages() {
            for unit in stage {
                x = unit.forward(x, precision);
            }
        }
        self.forward_output(x, precision)
    }
}
