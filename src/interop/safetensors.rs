//! Backbone weights as safetensors under arcface_torch's names (`iresnet.py`,
//! `mobilefacenet.py`), in PyTorch's
//! layouts and arcface_torch's conventions (src/interop/arcface_torch/), so that
//! `get_model(network).load_state_dict(safetensors.torch.load_file(f), strict=True)` gives our
//! embeddings from (x/255 − 0.5)/0.5 input (BatchNorm's `num_batches_tracked` is left to
//! PyTorch's default, which strict loading accepts).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::TensorData;
use safetensors::{Dtype, tensor::TensorView};

use crate::interop::arcface_torch::Family;

pub fn write(family: Family, backbone: &BTreeMap<String, TensorData>, path: &Path) -> Result<()> {
    let tensors = crate::interop::arcface_torch::to_torch(family, backbone)?;
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
