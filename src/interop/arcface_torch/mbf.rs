//! arcface_torch's MobileFaceNet (backbones/mobilefacenet.py) and ours (src/model/
//! mobilefacenet.rs): the same layers, ours named for what they are, theirs by position in
//! `nn.Sequential`s (`layers.3.layers.2.layers.1.layers.0.weight`).

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::model::{Architecture, Network};

/// arcface_torch's name for one of our MobileFaceNet tensor paths (without "backbone.").
pub fn torch_name(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('.').collect();
    let leaf = parts.pop().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    let mut rest = parts.into_iter().peekable();
    if let Some(first) = rest.next() {
        // Stages are `nn.Sequential`s of bottlenecks inside `self.layers`.
        let stage = |index: usize, rest: &mut std::iter::Peekable<std::vec::IntoIter<&str>>| {
            let unit = rest.next().unwrap_or_default();
            format!("layers.{index}.layers.{unit}")
        };
        out.push(match first {
            "stem" => "layers.0".into(),
            "stem_grouped" => "layers.1".into(),
            "stage1" => stage(1, &mut rest),
            "down2" => "layers.2".into(),
            "stage2" => stage(3, &mut rest),
            "down3" => "layers.4".into(),
            "stage3" => stage(5, &mut rest),
            "down4" => "layers.6".into(),
            "stage4" => stage(7, &mut rest),
            "gdc" => "features.layers.0".into(),
            "fc" => "features.layers.2".into(),
            "features" => "features.layers.3".into(),
            other => other.into(),
        });
    }
    for part in rest {
        out.push(
            match part {
                "expand" | "conv" => "layers.0",
                "depthwise" | "bn" => "layers.1",
                "project" | "prelu" => "layers.2",
                other => other,
            }
            .into(),
        );
    }
    out.push(
        match leaf {
            "gamma" | "alpha" => "weight",
            "beta" => "bias",
            other => other,
        }
        .into(),
    );
    out.join(".")
}

/// Bottlenecks of arcface_torch's `layers.{index}` stage: `layers.{index}.layers.{u}.…`.
fn count(shapes: &BTreeMap<String, Vec<usize>>, index: usize) -> usize {
    (0..)
        .take_while(|u| {
            shapes.contains_key(&format!(
                "layers.{index}.layers.{u}.layers.0.layers.0.weight"
            ))
        })
        .count()
}

/// The MobileFaceNet of a state dict's torch names and shapes: the scale from the stem's
/// width, the blocks from the stages' lengths, the embedding size from the FC layer.
pub fn network_of(shapes: &BTreeMap<String, Vec<usize>>) -> Result<(Network, usize)> {
    let Some(stem) = shapes.get("layers.0.layers.0.weight") else {
        bail!("not an arcface_torch MobileFaceNet state dict: no `layers.0.layers.0.weight`");
    };
    let scale = stem[0] / 64;
    // arcface_torch's special case: a first stage of one block is a single grouped ConvBlock.
    let first = if shapes.contains_key("layers.1.layers.0.weight") {
        1
    } else {
        count(shapes, 1)
    };
    let blocks = [first, count(shapes, 3), count(shapes, 5), count(shapes, 7)];
    let network = Network::of(Architecture::MobileFaceNet { blocks, scale })
        .filter(|_| stem[0] == 64 * scale)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "a MobileFaceNet with blocks {blocks:?} and stem width {} (scale {}); {}",
                stem[0],
                stem[0] as f64 / 64.0,
                crate::model::NETWORKS_WE_BUILD
            )
        })?;
    let embedding_size = match shapes.get("features.layers.2.weight").map(Vec::as_slice) {
        Some(&[out, _]) => out,
        other => bail!("`features.layers.2.weight` has shape {other:?}, expected [embedding, 512]"),
    };
    Ok((network, embedding_size))
}

#[cfg(test)]
mod tests {
    use super::torch_name;

    #[test]
    fn names_follow_arcface_torch() {
        for (ours, theirs) in [
            ("stem.conv.weight", "layers.0.layers.0.weight"),
            ("stem.bn.gamma", "layers.0.layers.1.weight"),
            ("stem.prelu.alpha", "layers.0.layers.2.weight"),
            (
                "stem_grouped.bn.running_var",
                "layers.1.layers.1.running_var",
            ),
            (
                "stage1.1.expand.conv.weight",
                "layers.1.layers.1.layers.0.layers.0.weight",
            ),
            (
                "down2.depthwise.prelu.alpha",
                "layers.2.layers.1.layers.2.weight",
            ),
            (
                "stage2.3.project.bn.beta",
                "layers.3.layers.3.layers.2.layers.1.bias",
            ),
            (
                "down4.project.conv.weight",
                "layers.6.layers.2.layers.0.weight",
            ),
            (
                "stage4.0.depthwise.conv.weight",
                "layers.7.layers.0.layers.1.layers.0.weight",
            ),
            ("conv_sep.prelu.alpha", "conv_sep.layers.2.weight"),
            ("gdc.conv.weight", "features.layers.0.layers.0.weight"),
            (
                "gdc.bn.running_mean",
                "features.layers.0.layers.1.running_mean",
            ),
            ("fc.weight", "features.layers.2.weight"),
            ("features.gamma", "features.layers.3.weight"),
        ] {
            assert_eq!(torch_name(ours), theirs, "{ours}");
        }
    }
}
