//! The Vision Transformer of arcface_torch (recognition/arcface_torch/backbones/vit.py, built by
//! `get_model("vit_t")` and its siblings): the 112×112 face cut into 9×9 patches (a stride-9
//! convolution; 12×12 = 144 tokens, the last 4 pixel rows and columns unseen), a learned
//! position embedding and no class token, pre-norm blocks (LayerNorm → attention without qkv
//! bias → residual; LayerNorm → MLP ×4 with ReLU6 → residual), stochastic depth rising linearly
//! over the blocks, a final LayerNorm, and the feature head: the 144 tokens flattened →
//! Linear(144·D → D) → BatchNorm1d → Linear(D → E) → BatchNorm1d.
//!
//! In training (an autodiff device and the module not frozen) `mask_ratio` of each image's
//! tokens are dropped before the blocks, chosen by argsort of uniform noise, and the learned
//! `mask_token` takes their places after the final LayerNorm (vit.py's `random_masking`). One
//! difference on purpose: vit.py calls `random_masking(x)` without its `mask_ratio`, so every
//! variant it builds masks the default 10 % (`vit_b_dp005_mask_005` too); here the ratio the
//! network or config names is the one used.
//!
//! Initialised as vit.py: Linear weights normal(0, 0.02) (timm's truncation at ±2 is 100 σ:
//! never reached) with zero biases, position embedding and mask token normal(0, 0.02),
//! LayerNorm γ = 1 and β = 0, the patch convolution as PyTorch's default. As every backbone
//! here, it takes raw RGB and normalises inside by (x − 127.5)/128; arcface_torch's 1/127.5 is
//! folded into the patch convolution at import and export (`interop::arcface_torch`).

use burn::config::Config;
use burn::module::{Flag, Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Device, Distribution, FloatDType, Int, Tensor};

use super::layers::{INPUT_MEAN, INPUT_SCALE, INPUT_SIZE, bn, linear_at};
use super::{Precision, batch_norm};

/// Side of a patch: 112 px hold 12 of them.
pub const PATCH: usize = 9;
/// Patches per image: (112 / 9)² = 144.
pub const TOKENS: usize = (INPUT_SIZE / PATCH) * (INPUT_SIZE / PATCH);
/// PyTorch's LayerNorm epsilon, which vit.py keeps.
pub const LN_EPS: f64 = 1e-5;
/// vit.py's `trunc_normal_(std=.02)`.
const INIT_STD: f64 = 0.02;

#[derive(Config, Debug)]
pub struct VitConfig {
    /// Token width D (vit.py's `embed_dim`).
    pub width: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads; D must divide by it.
    #[config(default = 8)]
    pub heads: usize,
    /// Stochastic depth of the last block; block i drops its branches with probability
    /// rate·i/(depth − 1).
    #[config(default = 0.1)]
    pub drop_path_rate: f64,
    /// Share of the tokens masked in training.
    #[config(default = 0.1)]
    pub mask_ratio: f64,
    #[config(default = 512)]
    pub embedding_size: usize,
    /// Each block's activations recomputed in the backward instead of kept (vit.py's
    /// `using_checkpoint`, which get_model sets for vit_b and vit_l).
    #[config(default = false)]
    pub using_checkpoint: bool,
}

/// The stride-9 convolution that turns patches into tokens (vit.py's `PatchEmbed`).
#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

/// Multi-head self-attention: one Linear to q, k and v (no bias), softmax(q·kᵀ/√d)·v per
/// head, a projection with bias.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

/// D → 4D → ReLU6 → D.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

/// x + DropPath(attn(norm1(x))); x + DropPath(mlp(norm2(x))).
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// Probability of dropping this block's branches for an image, in training.
    pub drop_path: f64,
}

#[derive(Module, Debug)]
pub struct VisionTransformer {
    pub patch_embed: PatchEmbed,
    /// [1, 144, D].
    pub pos_embed: Param<Tensor<3>>,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    /// 144·D → D, no bias (vit.py's `feature.0`).
    pub flat_fc: Linear,
    /// BatchNorm1d(D) (`feature.1`).
    pub flat_bn: BatchNorm,
    /// D → E, no bias (`feature.2`).
    pub fc: Linear,
    /// BatchNorm1d(E) of the embedding (`feature.3`).
    pub features: BatchNorm,
    /// [1, 1, D]: what a masked token is after the blocks.
    pub mask_token: Param<Tensor<3>>,
    pub mask_ratio: f64,
    /// Blocks through [`super::recompute`] in training.
    pub using_checkpoint: bool,
    /// Cleared by `freeze`, as burn's Dropout: no drop path or masking then.
    pub training: Param<Flag>,
}

/// A Linear layer initialised as vit.py's `_init_weights`.
fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear {
    let mut layer = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        })
        .init(device);
    // burn draws the bias with the weight's initializer; vit.py zeroes it.
    if bias {
        layer.bias = Some(Initializer::Zeros.init([d_out], device));
    }
    layer
}

fn layer_norm(width: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(width)
        .with_epsilon(LN_EPS)
        .init(device)
}

impl VitConfig {
    /// The key and error of a bad rate, ratio or embedding size (None: buildable).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            let message = format!("{} is not in [0, 1)", self.drop_path_rate);
            return Some(("drop_path_rate", message));
        }
        if !(0.0..1.0).contains(&self.mask_ratio) {
            let message = format!(
                "{} is not in [0, 1): a share of the tokens",
                self.mask_ratio
            );
            return Some(("mask_ratio", message));
        }
        if self.embedding_size == 0 {
            return Some(("embedding_size", "must be > 0".into()));
        }
        None
    }

    /// Block `i`'s drop-path probability: torch.linspace(0, rate, depth)[i].
    pub fn drop_path(&self, i: usize) -> f64 {
        if self.depth <= 1 {
            return 0.0;
        }
        // linspace computes in f32 and `.item()` widens: the same numbers as vit.py's list.
        (self.drop_path_rate as f32 * i as f32 / (self.depth - 1) as f32) as f64
    }

    pub fn init(&self, device: &Device) -> VisionTransformer {
        let d = self.width;
        let blocks = (0..self.depth)
            .map(|i| Block {
                norm1: layer_norm(d, device),
                attn: Attention {
                    qkv: linear(d, 3 * d, false, device),
                    proj: linear(d, d, true, device),
                    heads: self.heads,
                },
                norm2: layer_norm(d, device),
                mlp: Mlp {
                    fc1: linear(d, 4 * d, true, device),
                    fc2: linear(4 * d, d, true, device),
                },
                drop_path: self.drop_path(i),
            })
            .collect();
        let normal = Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        };
        VisionTransformer {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([3, d], [PATCH, PATCH])
                    .with_stride([PATCH, PATCH])
                    .init(device),
            },
            pos_embed: normal.init([1, TOKENS, d], device),
            blocks,
            norm: layer_norm(d, device),
            flat_fc: linear(TOKENS * d, d, false, device),
            flat_bn: bn(d, device),
            fc: linear(d, self.embedding_size, false, device),
            features: bn(self.embedding_size, device),
            mask_token: normal.init([1, 1, d], device),
            mask_ratio: self.mask_ratio,
            using_checkpoint: self.using_checkpoint,
            training: Param::from_bool(true),
        }
    }
}

/// `fc` over the last dimension of [N, T, C], at `precision` (output fp32).
fn linear_tokens(fc: &Linear, x: Tensor<3>, precision: Precision) -> Tensor<3> {
    let [n, t, c] = x.dims();
    let y = linear_at(fc, x.reshape([n * t, c]), precision);
    let out = y.dims()[1];
    y.reshape([n, t, out])
}

/// timm's `drop_path` for `n` images: each image's branch kept with probability 1 − p and
/// then scaled by 1/(1 − p), or zeroed; the factors [n, 1, 1], None outside training. Drawn
/// before the block runs, so that a recomputed block (`using_checkpoint`) drops the same.
fn drop_path_scale(n: usize, p: f64, training: bool, device: &Device) -> Option<Tensor<3>> {
    if !training || p == 0.0 {
        return None;
    }
    let keep = 1.0 - p;
    let mask = Tensor::<3>::random([n, 1, 1], Distribution::Bernoulli(keep), device);
    Some(mask / keep)
}

/// `x` scaled image by image (drop path), or as it is.
fn scaled(x: Tensor<3>, scale: &Option<Tensor<3>>) -> Tensor<3> {
    match scale {
        Some(scale) => x * scale.clone(),
        None => x,
    }
}

impl Attention {
    fn forward(&self, x: Tensor<3>, precision: Precision) -> Tensor<3> {
        let head_dim = x.dims()[2] / self.heads;
        // q·kᵀ and the softmax in fp32 whatever the precision, as vit.py does under autocast.
        // One backend call on the qkv Linear's output as it lies ([N, T, 3, heads, d/heads]):
        // libtorch's scaled dot-product attention in inference; under autodiff one operation
        // with its own backward (attention.rs).
        let qkv = linear_tokens(&self.qkv, x, precision);
        let out = super::attention::attention(qkv, self.heads, (head_dim as f64).powf(-0.5));
        linear_tokens(&self.proj, out, precision)
    }
}

impl Block {
    /// The block with its two branches' drop-path factors given.
    fn forward(
        &self,
        x: Tensor<3>,
        precision: Precision,
        drop: &[Option<Tensor<3>>; 2],
    ) -> Tensor<3> {
        let y = self.attn.forward(self.norm1.forward(x.clone()), precision);
        let x = x + scaled(y, &drop[0]);
        let y = linear_tokens(&self.mlp.fc1, self.norm2.forward(x.clone()), precision);
        let y = linear_tokens(&self.mlp.fc2, super::relu6::relu6(y), precision);
        x + scaled(y, &drop[1])
    }

    /// The block in a forward of `training`; with `recompute`, its activations recomputed in
    /// the backward rather than kept.
    fn run(
        &self,
        x: Tensor<3>,
        precision: Precision,
        training: bool,
        recompute: bool,
    ) -> Tensor<3> {
        let n = x.dims()[0];
        let drop = [0, 1].map(|_| drop_path_scale(n, self.drop_path, training, &x.device()));
        if !(recompute && training) {
            return self.forward(x, precision, &drop);
        }
        // Constants of the recomputed graph, not of this one.
        let drop = drop.map(|scale| scale.map(Tensor::inner));
        let forward = move |block: &Block, x: Tensor<3>| block.forward(x, precision, &drop);
        super::recompute::checkpointed(self, x, std::sync::Arc::new(forward))
    }
}

impl VisionTransformer {
    pub fn width(&self) -> usize {
        self.pos_embed.lazy_shape().dims::<3>()[2]
    }

    /// Whether this forward trains: drop path and masking on.
    fn is_training(&self, images: &Tensor<4>) -> bool {
        images.device().is_autodiff() && self.training.is_enabled()
    }

    /// Raw RGB 0–255, [N, 3, 112, 112] → the 144 tokens [N, 144, D] with their positions.
    pub fn tokens(&self, images: Tensor<4>, precision: Precision) -> Tensor<3> {
        let x = (images - INPUT_MEAN) * INPUT_SCALE;
        let x = super::layers::conv_at(&self.patch_embed.proj, x, precision);
        let x = if x.dtype() == burn::tensor::DType::F32 {
            x
        } else {
            x.cast(FloatDType::F32)
        };
        let [n, d, _, _] = x.dims();
        // [N, D, 12, 12] → [N, 144, D], row-major patches as vit.py's flatten(2).transpose(1, 2).
        x.reshape([n, d, TOKENS]).swap_dims(1, 2) + self.pos_embed.val()
    }

    /// Raw RGB 0–255 → embedding [N, E] (not L2-normalised). In training, masks a random
    /// `mask_ratio` of each image's tokens.
    pub fn forward_at(&self, images: Tensor<4>, precision: Precision) -> Tensor<2> {
        let training = self.is_training(&images);
        let keep = kept_tokens(self.mask_ratio);
        let order = (training && keep < TOKENS).then(|| {
            let noise = Tensor::<2>::random(
                [images.dims()[0], TOKENS],
                Distribution::Default,
                &images.device(),
            );
            noise.argsort(1)
        });
        self.forward_with_order(images, order, precision)
    }

    /// [`VisionTransformer::forward_at`] with the masking given: `order` [N, 144] lists each
    /// image's tokens, the first `kept_tokens(mask_ratio)` of which go through the blocks
    /// (vit.py's `ids_shuffle`); None masks nothing.
    pub fn forward_with_order(
        &self,
        images: Tensor<4>,
        order: Option<Tensor<2, Int>>,
        precision: Precision,
    ) -> Tensor<2> {
        let training = self.is_training(&images);
        let mut x = self.tokens(images, precision);
        let [n, _, d] = x.dims();
        let keep = kept_tokens(self.mask_ratio);
        let order = order.filter(|_| keep < TOKENS);
        if let Some(order) = &order {
            let kept = order.clone().slice([0..n, 0..keep]);
            x = x.gather(1, kept.unsqueeze_dim::<3>(2).repeat_dim(2, d));
        }
        for block in &self.blocks {
            x = block.run(x, precision, training, self.using_checkpoint);
        }
        let mut x = self.norm.forward(x);
        if let Some(order) = order {
            let masked = self
                .mask_token
                .val()
                .repeat_dim(0, n)
                .repeat_dim(1, TOKENS - keep);
            let restore = order.argsort(1).unsqueeze_dim::<3>(2).repeat_dim(2, d);
            x = Tensor::cat(vec![x, masked], 1).gather(1, restore);
        }
        let x = x.reshape([n, TOKENS * d]);
        let x = batch_norm::forward(&self.flat_bn, linear_at(&self.flat_fc, x, precision));
        batch_norm::forward(&self.features, linear_at(&self.fc, x, precision))
    }
}

/// Tokens that go through the blocks when `mask_ratio` of them are masked: vit.py's
/// `int(L * (1 - mask_ratio))`.
pub fn kept_tokens(mask_ratio: f64) -> usize {
    (TOKENS as f64 * (1.0 - mask_ratio)) as usize
}
