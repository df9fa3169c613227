//! arcface_torch's `backbone.pth` (`torch.save(backbone.module.state_dict())`, the file its
//! model zoo and every training run write) into our backbone. torch.save's formats (the zip of
//! PyTorch ≥ 1.6, the legacy pickle stream before) are read by burn's `pytorch-reader`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pytorch_reader::{DType, PytorchReader};

use super::{from_torch, network_of};
use crate::interop::imported::Imported;
use crate::model::Network;

/// Where a state dict may sit inside a file, outermost first: arcface_torch's training
/// checkpoint (`checkpoint_gpu_0.pt`) keeps the backbone under `state_dict_backbone`, and a
/// DDP module's own state dict prefixes every name with `module.`.
const PREFIXES: [&str; 3] = ["state_dict_backbone.", "state_dict.", "module."];

/// Reads `path` as an arcface_torch iresnet or MobileFaceNet state dict. `network`, if given, must be what the
/// file holds. Errors name the file and the tensor.
pub fn read(path: &Path, network: Option<Network>) -> Result<Imported> {
    let context = || path.display().to_string();
    let state = read_state_dict(path).with_context(context)?;
    let shapes = state
        .iter()
        .map(|(k, (s, _))| (k.clone(), s.clone()))
        .collect();
    let (found, embedding_size) = network_of(&shapes).with_context(context)?;
    if let Some(given) = network
        && given != found
    {
        bail!(
            "{}: --network {given}, but the file holds an {found}",
            path.display()
        );
    }
    let (tensors, notes) = from_torch(found, embedding_size, state).with_context(context)?;
    Ok(Imported {
        network: found,
        embedding_size,
        tensors,
        notes,
    })
}

/// Every floating-point tensor of the file under its state-dict name, as f32.
/// Tensors by name: (shape, values in row-major order).
type StateDict = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn read_state_dict(path: &Path) -> Result<StateDict> {
    let reader = PytorchReader::new(path).map_err(|e| {
        anyhow::anyhow!("not a PyTorch file torch.save wrote, or a damaged one ({e})")
    })?;
    let mut tensors = reader.into_tensors();
    if tensors.is_empty() {
        bail!("holds no tensors (a pickle, but not a state dict)");
    }
    for prefix in PREFIXES {
        if tensors.keys().any(|k| k.starts_with(prefix)) {
            tensors = tensors
                .into_iter()
                .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t)))
                .collect();
        }
    }
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let bytes = tensor
            .read()
            .map_err(|e| anyhow::anyhow!("tensor `{name}`: {e}"))?;
        let values: Vec<f32> = match tensor.dtype() {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes")) as f32)
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_ne_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_ne_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => bail!("tensor `{name}` holds {other:?}, not floating-point weights"),
        };
        out.insert(name, (tensor.shape().to_vec(), values));
    }
    Ok(out)
}
