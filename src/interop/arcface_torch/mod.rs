//! arcface_torch's backbones (recognition/arcface_torch/backbones/iresnet.py and
//! mobilefacenet.py, `mbf`) and ours: the same modules under other names and conventions. Both
//! directions are exact for inference:
//!
//! | | arcface_torch | ours |
//! |---|---|---|
//! | input | (x/255 − 0.5)/0.5 = (x − 127.5)/127.5, outside the model | raw RGB; (x − 127.5)/128 inside |
//! | BatchNorm ε | 1e-5 | 2e-5 (the seed's MXNet `bn_eps`) |
//! | names | `bn1.weight`, `prelu.weight`, `downsample.0` / `.1` | `bn1.gamma`, `prelu.alpha`, `downsample.conv` / `.bn` |
//! | MobileFaceNet names | `layers.3.layers.0.layers.1.layers.0.weight` | `stage2.0.depthwise.conv.weight` (mbf.rs) |
//! | FC weight | [out, in] | [in, out] (burn's Linear) |
//!
//! The input scale goes into the stem convolution's weights (the zero padding sits after the
//! normalisation in both, so only the scale differs); the epsilon into the running variances.

pub mod mbf;
pub mod pth;
pub mod vit;

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::Config;
use crate::model::layers::{BN_EPS, INPUT_SCALE};
use crate::model::{Architecture, Backbone, Network};

/// arcface_torch's BatchNorm epsilon (every BatchNorm2d and the BatchNorm1d `features` of the
/// iresnets and MobileFaceNet).
pub const TORCH_BN_EPS: f64 = 1e-5;
/// arcface_torch's input scale: 1 / 127.5.
pub const TORCH_INPUT_SCALE: f64 = 1.0 / 127.5;

/// Which of arcface_torch's backbone files a network's names and layout follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    IResNet,
    MobileFaceNet,
    Vit,
}

impl Family {
    pub fn of(network: Network) -> Family {
        match network.architecture() {
            Architecture::IResNet { .. } => Family::IResNet,
            Architecture::MobileFaceNet { .. } => Family::MobileFaceNet,
            Architecture::Vit { .. } => Family::Vit,
        }
    }

    pub fn of_backbone(backbone: &Backbone) -> Family {
        match backbone {
            Backbone::IResNet(_) => Family::IResNet,
            Backbone::MobileFaceNet(_) => Family::MobileFaceNet,
            Backbone::Vit(_) => Family::Vit,
        }
    }

    /// arcface_torch's name for one of our tensor paths (without "backbone.").
    pub fn torch_name(self, path: &str) -> String {
        match self {
            Family::IResNet => torch_name(path),
            Family::MobileFaceNet => mbf::torch_name(path),
            Family::Vit => vit::torch_name(path),
        }
    }

    /// arcface_torch's BatchNorm epsilon in this family: 1e-5 (PyTorch's default) in the
    /// iresnets and MobileFaceNet, vit.py's own 2e-5 in the ViT's feature head.
    pub fn torch_bn_eps(self) -> f64 {
        match self {
            Family::IResNet | Family::MobileFaceNet => TORCH_BN_EPS,
            Family::Vit => BN_EPS,
        }
    }

    /// Our path of the first convolution, which sees the normalised input.
    fn stem(self) -> &'static str {
        match self {
            Family::IResNet => "conv1.weight",
            Family::MobileFaceNet => "stem.conv.weight",
            Family::Vit => "patch_embed.proj.weight",
        }
    }
}

/// arcface_torch's name for one of our iresnet tensor paths (without the "backbone." prefix).
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

/// Whether a tensor is a Linear layer's weight, [in, out] in burn and [out, in] in PyTorch: the
/// only 2-D weights any backbone has (convolutions' are 4-D, norms' 1-D).
pub fn is_linear_weight(path: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && path.ends_with(".weight")
}

/// A tensor as PyTorch sees it: name, shape, values.
pub type TorchTensor = (String, Vec<usize>, Vec<f32>);

/// The tensors (our paths → shapes) of our `network` at this embedding size, read off the
/// model itself built lazily (no weights drawn): what a state dict must hold, no more and no
/// less.
pub fn backbone_shapes(network: Network, embedding_size: usize) -> Vec<(String, Vec<usize>)> {
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl ModuleVisitor for Shapes {
        crate::module_path::track_module_path!();
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let shape = param.lazy_shape().dims::<D>().to_vec();
            self.out.push((self.path.join("."), shape));
        }
    }
    let config = Config {
        network,
        embedding_size,
        ..Config::default()
    };
    let mut shapes = Shapes {
        path: Vec::new(),
        out: Vec::new(),
    };
    config.backbone().init(&Device::flex()).visit(&mut shapes);
    shapes.out
}

/// Moves a BatchNorm from epsilon `from` to epsilon `to` without changing what it computes:
/// the running variance absorbs the difference, or, where it would go negative (a variance
/// below the difference: a channel that barely varies), γ is rescaled instead. True when γ
/// was rescaled.
pub fn move_epsilon(gamma: &mut [f32], var: &mut [f32], from: f64, to: f64) -> bool {
    let mut rescaled = false;
    for (g, v) in gamma.iter_mut().zip(var.iter_mut()) {
        let moved = *v as f64 + from - to;
        if moved >= 0.0 {
            *v = moved as f32;
        } else {
            // γ/√(v + from) = γ'/√(v + to)
            *g = (*g as f64 * ((*v as f64 + to) / (*v as f64 + from)).sqrt()) as f32;
            rescaled = true;
        }
    }
    rescaled
}

/// One direction of the conversion, on our paths: the stem convolution's weights × `stem`, and
/// every BatchNorm moved from epsilon `from` to `to` ([`move_epsilon`]). Returns the modules
/// where γ was rescaled.
fn convert(
    family: Family,
    tensors: &mut BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    stem: f64,
    from: f64,
    to: f64,
) -> Result<Vec<String>> {
    if let Some((_, w)) = tensors.get_mut(family.stem()) {
        w.iter_mut().for_each(|x| *x = (*x as f64 * stem) as f32);
    }
    let norms: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".running_var").map(str::to_string))
        .collect();
    let mut rescaled = Vec::new();
    for module in norms {
        let (_, mut var) = tensors
            .remove(&format!("{module}.running_var"))
            .expect("listed");
        let gamma = tensors
            .get_mut(&format!("{module}.gamma"))
            .map(|(_, g)| g)
            .ok_or_else(|| anyhow::anyhow!("{module}: running_var without gamma"))?;
        if move_epsilon(gamma, &mut var, from, to) {
            rescaled.push(module.clone());
        }
        tensors.insert(format!("{module}.running_var"), (vec![var.len()], var));
    }
    Ok(rescaled)
}

fn values(data: &TensorData, path: &str) -> Result<Vec<f32>> {
    data.clone()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{path}: {e:?}"))
}

/// Our backbone tensors (paths without "backbone.") under arcface_torch's names and PyTorch's
/// layouts, values unchanged (what our ONNX export names its weights by).
pub fn torch_layout(
    family: Family,
    backbone: &BTreeMap<String, TensorData>,
) -> Result<Vec<TorchTensor>> {
    let mut out = Vec::new();
    for (path, data) in backbone {
        let path = path.strip_prefix("backbone.").unwrap_or(path);
        let shape = data.shape().to_vec();
        let values = values(data, path)?;
        if is_linear_weight(path, &shape) {
            let (rows, cols) = (shape[0], shape[1]);
            out.push((
                family.torch_name(path),
                vec![cols, rows],
                transpose(&values, rows, cols),
            ));
        } else {
            out.push((family.torch_name(path), shape, values));
        }
    }
    Ok(out)
}

/// Our backbone tensors (paths without "backbone.") as arcface_torch's state dict of that
/// family, converted so that `get_model(network)` with `load_state_dict(strict=True)` gives
/// our embeddings from (x/255 − 0.5)/0.5 input.
pub fn to_torch(
    family: Family,
    backbone: &BTreeMap<String, TensorData>,
) -> Result<Vec<TorchTensor>> {
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (path, data) in backbone {
        let path = path.strip_prefix("backbone.").unwrap_or(path);
        tensors.insert(
            path.to_string(),
            (data.shape().to_vec(), values(data, path)?),
        );
    }
    // Our stem sees (x − 127.5)/128, theirs (x − 127.5)/127.5: W·u = (W·127.5/128)·v. Theirs
    // is the smaller epsilon: the variances only grow, γ stays.
    let k = INPUT_SCALE as f64 / TORCH_INPUT_SCALE;
    convert(family, &mut tensors, k, BN_EPS, family.torch_bn_eps())?;
    let folded = tensors
        .into_iter()
        .map(|(path, (shape, values))| (path, TensorData::new(values, shape)))
        .collect();
    torch_layout(family, &folded)
}

/// `values` [rows, cols] row-major → [cols, rows].
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| r * cols + c))
        .map(|i| values[i])
        .collect()
}

/// The iresnet shape of a state dict's names and shapes (torch names): units per stage from
/// the `layerS.U.conv1.weight` keys, widths from their shapes, the embedding size from
/// `fc.weight`. Errors say what the file looks like instead.
pub fn network_of(shapes: &BTreeMap<String, Vec<usize>>) -> Result<(Network, usize)> {
    if shapes
        .keys()
        .any(|k| k.starts_with("layers.") || k.starts_with("conv_sep."))
    {
        return mbf::network_of(shapes);
    }
    if shapes.contains_key("pos_embed") {
        return vit::network_of(shapes);
    }
    let Some(stem) = shapes.get("conv1.weight") else {
        bail!(
            "not an arcface_torch iresnet state dict: no `conv1.weight` among its {} tensors \
             (first: {})",
            shapes.len(),
            shapes
                .keys()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let mut units = Vec::new();
    let mut widths = Vec::new();
    for stage in 1..=4 {
        let count = (0..)
            .take_while(|u| shapes.contains_key(&format!("layer{stage}.{u}.conv1.weight")))
            .count();
        let width = shapes
            .get(&format!("layer{stage}.0.conv1.weight"))
            .and_then(|s| s.first().copied());
        let Some(width) = width else {
            bail!("not an arcface_torch iresnet state dict: no `layer{stage}.0.conv1.weight`");
        };
        units.push(count);
        widths.push(width);
    }
    let network = Network::with_shape(&units, &widths)
        .filter(|_| stem.first() == widths.first())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "an iresnet with units {units:?} and widths {widths:?}; {}",
                crate::model::NETWORKS_WE_BUILD
            )
        })?;
    let embedding_size = match shapes.get("fc.weight").map(Vec::as_slice) {
        Some(&[out, _]) => out,
        other => bail!("`fc.weight` has shape {other:?}, expected [embedding, C·7·7]"),
    };
    Ok((network, embedding_size))
}

/// An arcface_torch state dict (torch names → shape, f32 values) as our backbone's
/// tensors: every tensor of `network` used, none missing or of another shape (each error names
/// the key), `num_batches_tracked` ignored. Returns the tensors and notes for the user.
pub fn from_torch(
    network: Network,
    embedding_size: usize,
    mut state: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<(BTreeMap<String, TensorData>, Vec<String>)> {
    state.retain(|k, _| !k.ends_with(".num_batches_tracked"));
    let family = Family::of(network);
    let mut ours: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (path, shape) in backbone_shapes(network, embedding_size) {
        let key = family.torch_name(&path);
        let Some((found, values)) = state.remove(&key) else {
            bail!("`{key}` is missing (an {network} needs it)");
        };
        let linear = is_linear_weight(&path, &shape);
        let expected = if linear {
            vec![shape[1], shape[0]]
        } else {
            shape.clone()
        };
        // PReLU slopes may be stored (C,) or (C,1,1).
        let same = found == expected
            || (path.ends_with(".alpha") && found.iter().product::<usize>() == expected[0]);
        if !same {
            bail!("`{key}` has shape {found:?}; an {network} has {expected:?} there");
        }
        let values = if linear {
            transpose(&values, shape[1], shape[0])
        } else {
            values
        };
        ours.insert(path, (shape, values));
    }
    if let Some(extra) = state.keys().next() {
        bail!(
            "`{extra}` (and {} more) is not a tensor of arcface_torch's {network}: another \
             architecture?",
            state.len() - 1
        );
    }
    let torch_eps = family.torch_bn_eps();
    let mut notes = vec![if torch_eps == BN_EPS {
        "arcface_torch's input (x − 127.5)/127.5 folded into the patch convolution (ours: raw \
         RGB in, (x − 127.5)/128 inside)"
            .to_string()
    } else {
        format!(
            "arcface_torch's input (x − 127.5)/127.5 and BatchNorm ε {torch_eps} folded into the \
             stem convolution and the running variances (ours: raw RGB in, (x − 127.5)/128 \
             inside, ε {BN_EPS})"
        )
    }];
    if family == Family::Vit {
        notes.push(format!(
            "read with {} attention heads: a state dict does not record them, and every ViT of \
             arcface_torch's get_model has {}",
            vit::HEADS,
            vit::HEADS
        ));
    }
    let k = TORCH_INPUT_SCALE / INPUT_SCALE as f64;
    let rescaled = convert(family, &mut ours, k, family.torch_bn_eps(), BN_EPS)?;
    if !rescaled.is_empty() {
        notes.push(format!(
            "running variances below {:.0e} in {} ({}): γ rescaled there instead",
            BN_EPS - torch_eps,
            rescaled.len(),
            rescaled.join(", ")
        ));
    }
    let tensors = ours
        .into_iter()
        .map(|(path, (shape, values))| (path, TensorData::new(values, shape)))
        .collect();
    Ok((tensors, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn moving_epsilon_keeps_what_batch_norm_computes() {
        let (mut gamma, mut var) = (vec![1.5f32, 0.7], vec![0.3f32, 4e-6]);
        let before: Vec<f64> = gamma
            .iter()
            .zip(&var)
            .map(|(&g, &v)| g as f64 / (v as f64 + 1e-5).sqrt())
            .collect();
        assert!(
            move_epsilon(&mut gamma, &mut var, 1e-5, 2e-5),
            "the second is rescaled"
        );
        assert_eq!(var[1], 4e-6, "a variance that would go negative is kept");
        for ((&g, &v), b) in gamma.iter().zip(&var).zip(before) {
            let after = g as f64 / (v as f64 + 2e-5).sqrt();
            assert!((after - b).abs() < 1e-6 * b, "{after} vs {b}");
        }
    }

    #[test]
    fn the_shape_of_a_state_dict_is_its_network() {
        let shapes: BTreeMap<String, Vec<usize>> = backbone_shapes(Network::R200, 256)
            .into_iter()
            .map(|(path, mut shape)| {
                if path == "fc.weight" {
                    shape.reverse();
                }
                (torch_name(&path), shape)
            })
            .collect();
        assert_eq!(network_of(&shapes).unwrap(), (Network::R200, 256));
        for (network, embedding) in [(Network::Mbf, 512), (Network::MbfLarge, 128)] {
            let family = Family::of(network);
            let shapes: BTreeMap<String, Vec<usize>> = backbone_shapes(network, embedding)
                .into_iter()
                .map(|(path, mut shape)| {
                    if path == "fc.weight" {
                        shape.reverse();
                    }
                    (family.torch_name(&path), shape)
                })
                .collect();
            assert_eq!(network_of(&shapes).unwrap(), (network, embedding));
        }
        let mut mbf = BTreeMap::new();
        mbf.insert("layers.0.layers.0.weight".to_string(), vec![96, 3, 3, 3]);
        let e = network_of(&mbf).unwrap_err().to_string();
        assert!(e.contains("MobileFaceNet"), "{e}");
        let mut linear = BTreeMap::new();
        linear.insert("weight".to_string(), vec![2, 3]);
        let e = network_of(&linear).unwrap_err().to_string();
        assert!(e.contains("no `conv1.weight`"), "{e}");
    }
}
