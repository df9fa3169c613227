//! Backbone weights as safetensors under arcface_torch's `iresnet.py` names, in PyTorch's
//! layouts, so `model.load_state_dict(safetensors.torch.load_file(f))` fills an arcface_torch
//! iresnet of the same depth (BatchNorm's `num_batches_tracked` is left to PyTorch's default).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::TensorData;
use safetensors::{Dtype, tensor::TensorView};

/// arcface_torch's name for one of our backbone tensor paths (without the "backbone." prefix).
pub fn torch_name(path: &str) -> String {
    let renamed = path
        .replace(".downsample.conv.", ".downsample.0.")
        .replace(".downsample.bn.", ".downsample.1.");
    match renamed.rsplit_once('.') {
        Some((module, "gamma" | "alpha")) => format!("{module}.weight"),
        Some((module, "beta")) => format!("{module}.bias"),
        _ => renamed,
    }
}

/// A tensor as PyTorch sees it: name, shape, values.
pub type TorchTensor = (String, Vec<usize>, Vec<f32>);

/// (torch name, shape, f32 values) of every backbone tensor; burn's Linear weight [in, out]
/// is transposed to PyTorch's [out, in].
pub fn torch_tensors(backbone: &BTreeMap<String, TensorData>) -> Result<Vec<TorchTensor>> {
    let mut out = Vec::new();
    for (path, data) in backbone {
        let path = path.strip_prefix("backbone.").unwrap_or(path);
        let shape = data.shape().to_vec();
        let values = data
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{path}: {e:?}"))?;
        if path == "fc.weight" {
            let (rows, cols) = (shape[0], shape[1]);
            let transposed = (0..cols)
                .flat_map(|c| (0..rows).map(move |r| (r, c)))
                .map(|(r, c)| values[r * cols + c])
                .collect();
            out.push((torch_name(path), vec![cols, rows], transposed));
        } else {
            out.push((torch_name(path), shape, values));
        }
    }
    Ok(out)
}

pub fn write(backbone: &BTreeMap<String, TensorData>, path: &Path) -> Result<()> {
    let tensors = torch_tensors(backbone)?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, values)| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    // Serialised in memory and written as any file: safetensors' own file writer leaves a
    // partial file on a full disk, and its error repeats its I/O cause in a `{:#}` chain.
    let bytes = safetensors::serialize(views, None)?;
    crate::fs::write_atomically(path, |out| out.write_all(&bytes))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::torch_name;

    #[test]
    fn names_follow_arcface_torch() {
        assert_eq!(torch_name("bn1.gamma"), "bn1.weight");
        assert_eq!(torch_name("prelu.alpha"), "prelu.weight");
        assert_eq!(
            torch_name("layer2.0.downsample.conv.weight"),
            "layer2.0.downsample.0.weight"
        );
        assert_eq!(
            torch_name("layer2.0.downsample.bn.beta"),
            "layer2.0.downsample.1.bias"
        );
        assert_eq!(
            torch_name("layer3.4.bn2.running_var"),
            "layer3.4.bn2.running_var"
        );
        assert_eq!(torch_name("features.gamma"), "features.weight");
        assert_eq!(torch_name("fc.bias"), "fc.bias");
    }
}
