//! A Vision Transformer in opset 8's operators, for `export.rs` (inference: no masking
//! or drop path). Opset 8 has none of LayerNormalization (opset 17), Gelu or attention, so:
//! LayerNorm as ReduceMean → Sub → Mul (square) → ReduceMean → Add ε → Sqrt → Div → Mul γ →
//! Add β over the token width; ReLU6 as Relu → Clip(max 6) (a Clip with min 0 cannot be written:
//! proto3 drops a zero attribute, and Clip-6's missing min is −∞); a Linear on tokens as MatMul
//! with its PyTorch [out, in] weight transposed by a Transpose node (runtimes fold it) → Add
//! bias; attention as Reshape → Transpose → Gather q, k, v → MatMul(q, kᵀ) → Mul scale →
//! Softmax over the last axis (opset 8's Softmax flattens from `axis` on: the last axis of
//! [N, H, T, T] is exactly a row) → MatMul v → Transpose → Reshape. Reshapes take −1 for the
//! batch, so a dynamic batch works. The feature head is the iresnet's Flatten → Gemm →
//! BatchNormalization twice. `mask_token` is training-only and not written.

use anyhow::{Result, bail};

use super::graph_builder::Graph;
use super::proto::{attr_float, attr_int, attr_ints};
use crate::model::vit::{Attention, Block, LN_EPS, TOKENS, VisionTransformer};

/// The shapes and scalars every block shares, made once.
struct Constants {
    /// [N, T, 3D] → [N, T, 3, H, D/H].
    to_heads: String,
    /// [N, T, H, D/H] → [N, T, D].
    to_tokens: String,
    /// Gather indices of q, k, v in [3, N, H, T, D/H].
    qkv: [String; 3],
    /// LayerNorm's ε.
    epsilon: String,
    /// (D/H)^−0.5.
    scale: String,
}

/// The ViT's nodes after the normalisation `x`; returns the output's value name.
pub(super) fn vit(g: &mut Graph, model: &VisionTransformer, x: String) -> Result<String> {
    let width = model.width();
    let heads = match model.blocks.first() {
        Some(block) => block.attn.heads,
        None => bail!("a ViT without blocks"),
    };
    let head_dim = width / heads;
    let [t, d, h, hd] = [TOKENS, width, heads, head_dim].map(|v| v as i64);
    let patches = g.int64_initializer("shape.patches", &[3], &[-1, d, t]);
    let constants = Constants {
        to_heads: g.int64_initializer("shape.heads", &[5], &[-1, t, 3, h, hd]),
        to_tokens: g.int64_initializer("shape.tokens", &[3], &[-1, t, d]),
        qkv: [0, 1, 2].map(|i| {
            let name = format!("index.{}", ["q", "k", "v"][i]);
            g.int64_initializer(&name, &[], &[i as i64])
        }),
        epsilon: g.constant("layer_norm.epsilon", LN_EPS as f32),
        scale: g.constant("attention.scale", (head_dim as f32).powf(-0.5)),
    };
    // [N, D, 12, 12] → [N, D, 144] → [N, 144, D], as vit.py's flatten(2).transpose(1, 2).
    let x = g.conv("patch_embed.proj", &model.patch_embed.proj, &x)?;
    let x = g.add("Reshape", "patch_embed.flatten", &[&x, &patches], vec![]);
    let x = transpose(g, "patch_embed.transpose", &x, &[0, 2, 1]);
    let position = g.weight("pos_embed", None)?;
    let mut x = g.add("Add", "pos_embed.add", &[&x, &position], vec![]);
    for (i, block) in model.blocks.iter().enumerate() {
        x = block_nodes(g, &constants, &format!("blocks.{i}"), block, &x)?;
    }
    let x = layer_norm(g, &constants, "norm", &x)?;
    // Inference masks nothing: the mask token has no place in the graph.
    g.weights.remove("mask_token");
    let x = g.add(
        "Flatten",
        "feature.flatten",
        &[&x],
        vec![attr_int("axis", 1)],
    );
    let x = g.gemm("feature.0", &x, false)?;
    let x = g.batch_norm("feature.1", &model.flat_bn, &x)?;
    let x = g.gemm("feature.2", &x, false)?;
    g.batch_norm("feature.3", &model.features, &x)
}

fn transpose(g: &mut Graph, name: &str, x: &str, perm: &[i64]) -> String {
    g.add("Transpose", name, &[x], vec![attr_ints("perm", perm)])
}

/// x + attn(norm1(x)), then x + mlp(norm2(x)).
fn block_nodes(
    g: &mut Graph,
    constants: &Constants,
    module: &str,
    block: &Block,
    x: &str,
) -> Result<String> {
    let y = layer_norm(g, constants, &format!("{module}.norm1"), x)?;
    let y = attention(g, constants, &format!("{module}.attn"), &block.attn, &y)?;
    let x = g.add("Add", &format!("{module}.add1"), &[x, &y], vec![]);
    let y = layer_norm(g, constants, &format!("{module}.norm2"), &x)?;
    let y = token_linear(g, &format!("{module}.mlp.fc1"), &y, true)?;
    let y = g.add("Relu", &format!("{module}.mlp.relu"), &[&y], vec![]);
    let clip = vec![attr_float("max", 6.0)];
    let y = g.add("Clip", &format!("{module}.mlp.relu6"), &[&y], clip);
    let y = token_linear(g, &format!("{module}.mlp.fc2"), &y, true)?;
    Ok(g.add("Add", &format!("{module}.add2"), &[&x, &y], vec![]))
}

/// LayerNorm over the last axis of [N, T, D] (the biased variance, as PyTorch's), with
/// vit.py's ε, which every ViT here is built with (burn keeps a LayerNorm's own private).
fn layer_norm(g: &mut Graph, constants: &Constants, module: &str, x: &str) -> Result<String> {
    let last = || vec![attr_ints("axes", &[2]), attr_int("keepdims", 1)];
    let n = |step: &str| format!("{module}.{step}");
    let mean = g.add("ReduceMean", &n("mean"), &[x], last());
    let centred = g.add("Sub", &n("centred"), &[x, &mean], vec![]);
    let square = g.add("Mul", &n("square"), &[&centred, &centred], vec![]);
    let variance = g.add("ReduceMean", &n("variance"), &[&square], last());
    let padded = g.add(
        "Add",
        &n("add_epsilon"),
        &[&variance, &constants.epsilon],
        vec![],
    );
    let deviation = g.add("Sqrt", &n("deviation"), &[&padded], vec![]);
    let normed = g.add("Div", &n("normed"), &[&centred, &deviation], vec![]);
    let gamma = g.weight(&n("weight"), None)?;
    let scaled = g.add("Mul", &n("scaled"), &[&normed, &gamma], vec![]);
    let beta = g.weight(&n("bias"), None)?;
    Ok(g.add("Add", module, &[&scaled, &beta], vec![]))
}

/// A Linear on the last axis of [N, T, in]: MatMul with the transposed [out, in] weight, then
/// the bias if it has one.
fn token_linear(g: &mut Graph, module: &str, x: &str, bias: bool) -> Result<String> {
    let weight = g.weight(&format!("{module}.weight"), None)?;
    let weight_t = transpose(g, &format!("{module}.weight_t"), &weight, &[1, 0]);
    if !bias {
        return Ok(g.add("MatMul", module, &[x, &weight_t], vec![]));
    }
    let y = g.add(
        "MatMul",
        &format!("{module}.matmul"),
        &[x, &weight_t],
        vec![],
    );
    let bias = g.weight(&format!("{module}.bias"), None)?;
    Ok(g.add("Add", module, &[&y, &bias], vec![]))
}

/// softmax(q·kᵀ·scale)·v per head, then the projection.
fn attention(
    g: &mut Graph,
    constants: &Constants,
    module: &str,
    attn: &Attention,
    x: &str,
) -> Result<String> {
    if attn.qkv.bias.is_some() {
        bail!("{module}.qkv: vit.py's qkv has no bias");
    }
    let n = |step: &str| format!("{module}.{step}");
    let qkv = token_linear(g, &n("qkv"), x, false)?;
    let split = g.add(
        "Reshape",
        &n("split_heads"),
        &[&qkv, &constants.to_heads],
        vec![],
    );
    // [N, T, 3, H, D/H] → [3, N, H, T, D/H], as vit.py's permute(2, 0, 3, 1, 4).
    let parts = transpose(g, &n("parts"), &split, &[2, 0, 3, 1, 4]);
    let [q, k, v] = [0, 1, 2].map(|i| {
        let name = n(["q", "k", "v"][i]);
        g.add("Gather", &name, &[&parts, &constants.qkv[i]], vec![])
    });
    let k_t = transpose(g, &n("k_t"), &k, &[0, 1, 3, 2]);
    let scores = g.add("MatMul", &n("scores"), &[&q, &k_t], vec![]);
    let scaled = g.add("Mul", &n("scaled"), &[&scores, &constants.scale], vec![]);
    let weights = g.add(
        "Softmax",
        &n("softmax"),
        &[&scaled],
        vec![attr_int("axis", 3)],
    );
    let out = g.add("MatMul", &n("weighted"), &[&weights, &v], vec![]);
    let out = transpose(g, &n("merge"), &out, &[0, 2, 1, 3]);
    let out = g.add(
        "Reshape",
        &n("merged"),
        &[&out, &constants.to_tokens],
        vec![],
    );
    token_linear(g, &n("proj"), &out, true)
}
