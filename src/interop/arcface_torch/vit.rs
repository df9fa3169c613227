//! arcface_torch's Vision Transformer names (backbones/vit.py) for ours: the feature head is
//! its `nn.Sequential` `feature.0` to `feature.3`, LayerNorm and BatchNorm γ/β its
//! `weight`/`bias`; everything else has its name already.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::model::{Architecture, Network};

/// Attention heads of every ViT get_model builds. A state dict does not record them (the qkv
/// weight is [3·D, D] whatever the split), so a file is read as 8 heads.
pub const HEADS: usize = 8;

/// arcface_torch's name for one of our ViT tensor paths (without "backbone.").
pub fn torch_name(path: &str) -> String {
    let renamed = [
        ("flat_fc.", "feature.0."),
        ("flat_bn.", "feature.1."),
        ("fc.", "feature.2."),
        ("features.", "feature.3."),
    ]
    .iter()
    .find_map(|(ours, theirs)| {
        path.strip_prefix(ours)
            .map(|rest| format!("{theirs}{rest}"))
    })
    .unwrap_or_else(|| path.to_string());
    match renamed.rsplit_once('.') {
        Some((module, "gamma")) => format!("{module}.weight"),
        Some((module, "beta")) => format!("{module}.bias"),
        _ => renamed,
    }
}

/// The ViT a state dict holds (torch names → shapes): width from `pos_embed` [1, 144, D],
/// blocks counted, the embedding size from `feature.2.weight` [E, D].
pub fn network_of(shapes: &BTreeMap<String, Vec<usize>>) -> Result<(Network, usize)> {
    let width = match shapes.get("pos_embed").map(Vec::as_slice) {
        Some(&[1, tokens, width]) if tokens == crate::model::vit::TOKENS => width,
        other => bail!("`pos_embed` has shape {other:?}; arcface_torch's ViTs have [1, 144, D]"),
    };
    let depth = (0..)
        .take_while(|b| shapes.contains_key(&format!("blocks.{b}.norm1.weight")))
        .count();
    let architecture = Architecture::Vit {
        width,
        depth,
        heads: HEADS,
    };
    let network = Network::of(architecture).ok_or_else(|| {
        anyhow::anyhow!(
            "a ViT of width {width} with {depth} blocks; {}",
            crate::model::NETWORKS_WE_BUILD
        )
    })?;
    let embedding_size = match shapes.get("feature.2.weight").map(Vec::as_slice) {
        Some(&[out, w]) if w == width => out,
        other => bail!("`feature.2.weight` has shape {other:?}, expected [embedding, {width}]"),
    };
    Ok((network, embedding_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_vit_py() {
        for (ours, theirs) in [
            ("patch_embed.proj.weight", "patch_embed.proj.weight"),
            ("pos_embed", "pos_embed"),
            ("blocks.3.norm1.gamma", "blocks.3.norm1.weight"),
            ("blocks.3.norm2.beta", "blocks.3.norm2.bias"),
            ("blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.weight"),
            ("blocks.0.mlp.fc2.bias", "blocks.0.mlp.fc2.bias"),
            ("norm.gamma", "norm.weight"),
            ("flat_fc.weight", "feature.0.weight"),
            ("flat_bn.running_var", "feature.1.running_var"),
            ("fc.weight", "feature.2.weight"),
            ("features.gamma", "feature.3.weight"),
            ("mask_token", "mask_token"),
        ] {
            assert_eq!(torch_name(ours), theirs);
        }
    }
}
