//! What every backbone is built from: the input convention, the convolution, BatchNorm and
//! PReLU constructors with the seed's initialisation, and the convolution and FC layer at a
//! [`Precision`].

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Initializer, Linear, PRelu, PReluConfig, PaddingConfig2d,
};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, FloatDType, Tensor};

use super::Precision;
use super::conv;
use super::linear;
use super::memory_format::conv_weight;

/// BatchNorm epsilon of the seed (MXNet `bn_eps`).
pub const BN_EPS: f64 = 2e-5;
/// PyTorch/burn convention for MXNet's momentum 0.9.
pub const BN_MOMENTUM: f64 = 0.1;
/// The model takes raw 0–255 RGB and normalises inside, like the zoo's ONNX file.
pub const INPUT_MEAN: f32 = 127.5;
pub const INPUT_SCALE: f32 = 0.0078125;
/// Input height and width.
pub const INPUT_SIZE: usize = 112;

/// A bias-free `kernel`×`kernel` convolution with `pad` zeros on every side, Kaiming-normal
/// over fan-out as PyTorch's `kaiming_normal_(mode="fan_out")` draws it: PyTorch's fan-out of
/// a grouped weight is Co·k² where burn's is Co/groups·k², so the gain is divided by
/// √groups to give the same standard deviation √(2 / (Co·k²)).
pub fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_groups(groups)
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: (2.0 / groups as f64).sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// BatchNorm at the seed's epsilon and momentum; γ = 1, β = 0.
pub fn bn(channels: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(BN_EPS)
        .with_momentum(BN_MOMENTUM)
        .init(device)
}

/// PReLU with one slope per channel, 0.25 each.
pub fn prelu(channels: usize, device: &Device) -> PRelu {
    PReluConfig::new()
        .with_num_parameters(channels)
        .init(device)
}

/// `conv.forward(x)` through [`conv::conv2d`] (both gradients by one backend call); under
/// [`Precision::Bf16`] in bf16 (input, weight and output), as PyTorch's autocast runs it: the
/// activations stay bf16 through BatchNorm, PReLU and the residual sums to the next
/// convolution, and only the fp32 weight is cast (its gradient back to fp32). A bias (the ViTs'
/// patch embedding) is added to the output after, in the output's precision, as autocast's
/// convolution adds it: burn's own convolution with bias ran ~4× slower on its CPU backend
/// (4–5 % of a vit_tiny step) and always in fp32.
pub(crate) fn conv_at(conv: &Conv2d, x: Tensor<4>, precision: Precision) -> Tensor<4> {
    // Our convolutions all have explicit padding (burn computes `Same` privately).
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let options = ConvOptions::new_with_padding(
        conv.stride,
        [(top, bottom), (left, right)],
        conv.dilation,
        conv.groups,
    );
    let y = match precision {
        Precision::Fp32 => conv::conv2d(x, conv.weight.val(), options),
        Precision::Bf16 => {
            let x = bf16(x);
            // Cast, and channels-last where `x` is, in one copy (memory_format.rs says why).
            let weight = conv_weight(conv.weight.val(), FloatDType::BF16, &x);
            conv::conv2d(x, weight, options)
        }
    };
    match &conv.bias {
        Some(bias) => {
            let [channels] = bias.dims();
            let bias = bias.val().reshape([1, channels, 1, 1]);
            match y.dtype() {
                DType::BF16 => y + bias.cast(FloatDType::BF16),
                _ => y + bias,
            }
        }
        None => y,
    }
}

/// `x` in bf16; without a cast (and its node in the autodiff graph) when it already is.
pub(crate) fn bf16<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::BF16 {
        x
    } else {
        x.cast(FloatDType::BF16)
    }
}

/// `fc.forward(x)` (through [`linear::linear`]), the product in bf16 under
/// [`Precision::Bf16`] (output fp32).
pub(crate) fn linear_at(fc: &Linear, x: Tensor<2>, precision: Precision) -> Tensor<2> {
    if precision == Precision::Fp32 {
        return linear::linear(fc, x);
    }
    let y = bf16(x)
        .matmul(fc.weight.val().cast(FloatDType::BF16))
        .cast(FloatDType::F32);
    match &fc.bias {
        Some(b) => y + b.val().unsqueeze_dim(0),
        None => y,
    }
}
