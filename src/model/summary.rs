//! `arcface summary`: per-stage output shapes, parameter counts and forward FLOPs, read off the
//! built model itself (weight shapes, strides, paddings), not off a table.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use serde::Serialize;

use super::Backbone;
use super::iresnet::{IBasicBlock, IResNet};
use super::layers::INPUT_SIZE;
use super::mobilefacenet::{Bottleneck, MobileFaceNet};
use super::vit::{Block, PATCH, TOKENS, VisionTransformer};

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub name: String,
    /// [C, H, W] of one image.
    pub output_shape: [usize; 3],
    pub params: usize,
    /// 2 FLOPs per multiply-add of the stage's convolutions and FC layer, per image.
    pub gflops: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub network: String,
    pub input_shape: [usize; 3],
    pub embedding_size: usize,
    /// Every weight, bias, BN γ/β and PReLU slope (PyTorch's `parameters()`), not BN statistics.
    pub params: usize,
    /// Parameters that receive gradients (the last BN's γ is fixed in the seed).
    pub trainable_params: usize,
    pub gflops: f64,
    pub stages: Vec<StageSummary>,
}

/// Multiply-adds of one convolution over one image, and its output side.
fn conv_macs(conv: &Conv2d, side: usize) -> (u64, usize) {
    let [c_out, c_in_per_group, kh, kw] = conv.weight.lazy_shape().dims();
    // The backbone only builds explicit paddings (see iresnet.rs).
    let (top, bottom) = match conv.padding {
        PaddingConfig2d::Explicit(top, _, bottom, _) => (top, bottom),
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => ((kh - 1) / 2, kh / 2),
    };
    let out = (side + top + bottom - kh) / conv.stride[0] + 1;
    ((c_out * c_in_per_group * kh * kw * out * out) as u64, out)
}

fn unit_macs(unit: &IBasicBlock, side: usize) -> (u64, usize) {
    let (a, side1) = conv_macs(&unit.conv1, side);
    let (b, out) = conv_macs(&unit.conv2, side1);
    let c = unit
        .downsample
        .as_ref()
        .map_or(0, |d| conv_macs(&d.conv, side).0);
    (a + b + c, out)
}

/// Counts parameters as PyTorch's `parameters()` would: BatchNorm running statistics are
/// module state, not parameters (burn's `num_params` counts them too). `trainable` needs a
/// model built on an autodiff device: burn keeps the require-grad flag private until a
/// parameter is materialised there.
#[derive(Default)]
struct ParamCounter {
    path: Vec<String>,
    params: usize,
    trainable: usize,
}

impl ModuleVisitor for ParamCounter {
    crate::module_path::track_module_path!();

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let is_statistic = matches!(
            self.path.last().map(String::as_str),
            Some("running_mean" | "running_var")
        );
        if is_statistic {
            return;
        }
        let n = param.lazy_shape().num_elements();
        self.params += n;
        if param.val().is_require_grad() {
            self.trainable += n;
        }
    }
}

/// (parameters, trainable parameters) of any module; see [`ParamCounter`].
pub fn count_params<M: Module>(module: &M) -> (usize, usize) {
    let mut counter = ParamCounter::default();
    module.visit(&mut counter);
    (counter.params, counter.trainable)
}

fn gflops(macs: u64) -> f64 {
    2.0 * macs as f64 / 1e9
}

/// Summarises `model`; `trainable_params` is only meaningful on an autodiff device.
pub fn summarize(model: &Backbone, network: &str) -> Summary {
    let (stages, embedding_size) = match model {
        Backbone::IResNet(m) => iresnet_stages(m),
        Backbone::MobileFaceNet(m) => mobilefacenet_stages(m),
        Backbone::Vit(m) => vit_stages(m),
    };
    let (params, trainable_params) = count_params(model);
    Summary {
        network: network.to_string(),
        input_shape: [3, INPUT_SIZE, INPUT_SIZE],
        embedding_size,
        params,
        trainable_params,
        gflops: stages.iter().map(|s| s.gflops).sum(),
        stages,
    }
}

/// Output channels of a convolution.
fn channels_out(conv: &Conv2d) -> usize {
    conv.weight.lazy_shape().dims::<4>()[0]
}

fn iresnet_stages(model: &IResNet) -> (Vec<StageSummary>, usize) {
    let mut stages = Vec::new();

    let (stem_macs, mut side) = conv_macs(&model.conv1, INPUT_SIZE);
    let stem_params =
        count_params(&model.conv1).0 + count_params(&model.bn1).0 + count_params(&model.prelu).0;
    let mut channels = channels_out(&model.conv1);
    stages.push(StageSummary {
        name: "stem".into(),
        output_shape: [channels, side, side],
        params: stem_params,
        gflops: gflops(stem_macs),
    });

    for (i, stage) in model.stages().into_iter().enumerate() {
        let mut macs = 0;
        for unit in stage {
            let (m, out) = unit_macs(unit, side);
            macs += m;
            side = out;
            channels = channels_out(&unit.conv2);
        }
        stages.push(StageSummary {
            name: format!("layer{}", i + 1),
            output_shape: [channels, side, side],
            params: stage.iter().map(|unit| count_params(unit).0).sum(),
            gflops: gflops(macs),
        });
    }

    let [fc_in, embedding_size] = model.fc.weight.lazy_shape().dims();
    stages.push(StageSummary {
        name: "output".into(),
        output_shape: [embedding_size, 1, 1],
        params: count_params(&model.bn2).0
            + count_params(&model.fc).0
            + count_params(&model.features).0,
        gflops: gflops((fc_in * embedding_size) as u64),
    });
    (stages, embedding_size)
}

fn bottleneck_macs(block: &Bottleneck, side: usize) -> (u64, usize) {
    let (a, side) = conv_macs(&block.expand.conv, side);
    let (b, side) = conv_macs(&block.depthwise.conv, side);
    let (c, side) = conv_macs(&block.project.conv, side);
    (a + b + c, side)
}

/// Stem (with arcface_torch's grouped 3×3 of mbf), the four stages (each from its stride-2
/// bottleneck on), and the output: conv_sep, GDC, FC and the embedding's BatchNorm.
fn mobilefacenet_stages(model: &MobileFaceNet) -> (Vec<StageSummary>, usize) {
    let mut stages = Vec::new();
    let (mut macs, mut side) = conv_macs(&model.stem.conv, INPUT_SIZE);
    let mut params = count_params(&model.stem).0;
    if let Some(block) = &model.stem_grouped {
        let (m, out) = conv_macs(&block.conv, side);
        (macs, side, params) = (macs + m, out, params + count_params(block).0);
    }
    stages.push(StageSummary {
        name: "stem".into(),
        output_shape: [channels_out(&model.stem.conv), side, side],
        params,
        gflops: gflops(macs),
    });
    let blocks = model.bottlenecks();
    for name in ["stage1", "stage2", "stage3", "stage4"] {
        let (mut macs, mut params, mut channels) = (0, 0, 0);
        for (_, block) in blocks.iter().filter(|(stage, _)| *stage == name) {
            let (m, out) = bottleneck_macs(block, side);
            (macs, side) = (macs + m, out);
            params += count_params(*block).0;
            channels = channels_out(&block.project.conv);
        }
        if params > 0 {
            stages.push(StageSummary {
                name: name.into(),
                output_shape: [channels, side, side],
                params,
                gflops: gflops(macs),
            });
        }
    }
    let (a, side) = conv_macs(&model.conv_sep.conv, side);
    let (b, _) = conv_macs(&model.gdc.conv, side);
    let [fc_in, embedding_size] = model.fc.weight.lazy_shape().dims();
    stages.push(StageSummary {
        name: "output".into(),
        output_shape: [embedding_size, 1, 1],
        params: count_params(&model.conv_sep).0
            + count_params(&model.gdc).0
            + count_params(&model.fc).0
            + count_params(&model.features).0,
        gflops: gflops(a + b + (fc_in * embedding_size) as u64),
    });
    (stages, embedding_size)
}

/// Multiply-adds of one ViT block over one image's 144 tokens: its four Linear layers, and the
/// two attention products q·kᵀ and attention·v (144² · D each; vit.py's `extra_gflops`, which
/// ptflops does not see).
fn block_macs(block: &Block) -> u64 {
    let linear = |fc: &burn::nn::Linear| -> u64 {
        let [d_in, d_out] = fc.weight.lazy_shape().dims();
        (TOKENS * d_in * d_out) as u64
    };
    let [width] = block.norm1.gamma.lazy_shape().dims();
    linear(&block.attn.qkv)
        + linear(&block.attn.proj)
        + linear(&block.mlp.fc1)
        + linear(&block.mlp.fc2)
        + 2 * (TOKENS * TOKENS * width) as u64
}

/// Patch embedding (the stride-9 convolution, positions, mask token), the blocks, and the
/// output: final LayerNorm and the feature head. Token maps are shown as D × 12 × 12.
fn vit_stages(model: &VisionTransformer) -> (Vec<StageSummary>, usize) {
    let width = model.width();
    let grid = INPUT_SIZE / PATCH;
    let (patch_macs, _) = conv_macs(&model.patch_embed.proj, INPUT_SIZE);
    let mut stages = vec![StageSummary {
        name: "patches".into(),
        output_shape: [width, grid, grid],
        params: count_params(&model.patch_embed).0
            + count_params(&model.pos_embed).0
            + count_params(&model.mask_token).0,
        gflops: gflops(patch_macs),
    }];
    stages.push(StageSummary {
        name: "blocks".into(),
        output_shape: [width, grid, grid],
        params: model.blocks.iter().map(|b| count_params(b).0).sum(),
        gflops: gflops(model.blocks.iter().map(block_macs).sum()),
    });
    let [flat, _] = model.flat_fc.weight.lazy_shape().dims();
    let [_, embedding_size] = model.fc.weight.lazy_shape().dims();
    stages.push(StageSummary {
        name: "output".into(),
        output_shape: [embedding_size, 1, 1],
        params: count_params(&model.norm).0
            + count_params(&model.flat_fc).0
            + count_params(&model.flat_bn).0
            + count_params(&model.fc).0
            + count_params(&model.features).0,
        gflops: gflops((flat * width + width * embedding_size) as u64),
    });
    (stages, embedding_size)
}

pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [c, h, w] = self.input_shape;
        writeln!(
            f,
            "network {}   input {c}×{h}×{w} RGB 0–255   embedding {}",
            self.network, self.embedding_size
        )?;
        writeln!(
            f,
            "{:<8} {:>14} {:>14} {:>9}",
            "stage", "output", "params", "GFLOPs"
        )?;
        for s in &self.stages {
            let [c, h, w] = s.output_shape;
            writeln!(
                f,
                "{:<8} {:>14} {:>14} {:>9.3}",
                s.name,
                format!("{c}×{h}×{w}"),
                thousands(s.params),
                s.gflops
            )?;
        }
        write!(
            f,
            "total: {} parameters ({} trainable), {:.2} GFLOPs per image forward",
            thousands(self.params),
            thousands(self.trainable_params),
            self.gflops
        )
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(65_156_160), "65,156,160");
    }
}
