//! A Vision Transformer ONNX file (ours, opset 8; arcface_torch's torch2onnx.py export of
//! vit.py, opset 11, LayerNorm spelt out; LayerNormalization where an exporter writes it) as our
//! backbone's tensors.
//!
//! A ViT uses each weight once, in forward order, and what uses it says what it is: the patch
//! Conv's weight and bias, the position embedding added to the tokens, LayerNorm's γ and β
//! (multiplied and added, or a LayerNormalization's inputs), each Linear's matrix (a MatMul's
//! constant operand, a Transpose of one, or a Gemm's B with its `transB`) and bias (added), the
//! feature head's BatchNormalizations. The graph's uses are read in node order and laid onto our
//! ViT's tensors in forward order, the width from the patch Conv, the depth from the count, the
//! heads from the split of q, k and v (a Reshape to [N, 144, 3, H, D/H]). Scalars (scales, ε,
//! Clip's bounds) and integer shapes are not weights. Any misreading that the shapes let
//! through, `compare_outputs` catches by running the file against the import.

use anyhow::{Context, Result, bail};
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use super::graph_walk::Walk;
use super::proto::{attribute, float_values};
use crate::interop::arcface_torch::{transpose, vit::HEADS};
use crate::interop::imported::Imported;
use crate::model::vit::{PATCH, TOKENS};
use crate::model::{Architecture, Network};

/// One use of a weight: its values in our layout (a Linear's as [in, out]) with its shape, and
/// the node that uses it, for errors.
struct Use {
    shape: Vec<usize>,
    values: Vec<f32>,
    node: String,
}

/// Tensors of one block, in forward order, with their shapes for width D.
fn block_tensors(d: usize) -> [(&'static str, Vec<usize>); 11] {
    [
        ("norm1.gamma", vec![d]),
        ("norm1.beta", vec![d]),
        ("attn.qkv.weight", vec![d, 3 * d]),
        ("attn.proj.weight", vec![d, d]),
        ("attn.proj.bias", vec![d]),
        ("norm2.gamma", vec![d]),
        ("norm2.beta", vec![d]),
        ("mlp.fc1.weight", vec![d, 4 * d]),
        ("mlp.fc1.bias", vec![4 * d]),
        ("mlp.fc2.weight", vec![4 * d, d]),
        ("mlp.fc2.bias", vec![d]),
    ]
}

/// Reads the ViT from `x`, the patch convolution's input (after the normalisation).
pub(super) fn import(mut walk: Walk, x: &str) -> Result<Imported> {
    let patch = walk.next(x, &["Conv"])?;
    let start = walk
        .nodes
        .iter()
        .position(|n| std::ptr::eq(n, patch))
        .expect("a node of the graph");
    let mut uses = Vec::new();
    let mut batch_norms = Vec::new();
    for node in &walk.nodes[start..] {
        if node.op_type == "BatchNormalization" {
            batch_norms.push(node);
        } else {
            read_uses(&walk, node, &mut uses)?;
        }
    }
    let width = match uses.first().map(|u| u.shape.as_slice()) {
        Some(&[d, 3, k, l]) if k == PATCH && l == PATCH => d,
        other => bail!("the first Conv's weight has shape {other:?}; a ViT's is [D, 3, 9, 9]"),
    };
    // Patch weight, bias and positions; 11 per block; final γ, β; the head's two matrices.
    let fixed = 3 + 2 + 2;
    if uses.len() < fixed || !(uses.len() - fixed).is_multiple_of(11) || batch_norms.len() != 2 {
        bail!(
            "{} weights and {} BatchNormalizations after the patch Conv; a ViT of depth L has \
             {fixed} + 11·L weights and 2 BatchNormalizations",
            uses.len(),
            batch_norms.len()
        );
    }
    let depth = (uses.len() - fixed) / 11;
    let heads = heads_of(&walk, width).unwrap_or(HEADS);
    let network = Network::of(Architecture::Vit {
        width,
        depth,
        heads,
    })
    .with_context(|| {
        format!(
            "a ViT of width {width}, {depth} blocks, {heads} heads; {}",
            crate::model::NETWORKS_WE_BUILD
        )
    })?;
    let (_, embedding_size) = walk.batch_norm(batch_norms[1], "features")?;
    walk.batch_norm(batch_norms[0], "flat_bn")?;
    let d = width;
    let mut expected = vec![
        (
            "patch_embed.proj.weight".to_string(),
            vec![d, 3, PATCH, PATCH],
        ),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("pos_embed".into(), vec![1, TOKENS, d]),
    ];
    for b in 0..depth {
        expected.extend(
            block_tensors(d)
                .into_iter()
                .map(|(name, shape)| (format!("blocks.{b}.{name}"), shape)),
        );
    }
    expected.extend([
        ("norm.gamma".into(), vec![d]),
        ("norm.beta".into(), vec![d]),
        ("flat_fc.weight".into(), vec![TOKENS * d, d]),
        ("fc.weight".into(), vec![d, embedding_size]),
    ]);
    for ((path, shape), read) in expected.into_iter().zip(uses) {
        if read.shape != shape {
            bail!(
                "`{}` holds a weight of shape {:?} where a ViT of width {d} has `{path}` \
                 of shape {shape:?}",
                read.node,
                read.shape
            );
        }
        walk.put(path, read.shape, read.values);
    }
    // Training only: nothing in an inference graph holds it.
    walk.put("mask_token".into(), vec![1, 1, d], vec![0.0; d]);
    walk.notes.push(format!(
        "read as {network} ({heads} heads); the mask token, which only training uses, is not in \
         an inference graph: zeros"
    ));
    Ok(Imported {
        network,
        embedding_size,
        tensors: walk.tensors,
        notes: walk.notes,
    })
}

/// The weights `node` uses, appended in its input order.
fn read_uses(walk: &Walk, node: &pb::NodeProto, uses: &mut Vec<Use>) -> Result<()> {
    if matches!(
        node.op_type.as_str(),
        "Constant" | "Identity" | "Dropout" | "Shape"
    ) {
        return Ok(());
    }
    for (i, input) in node.input.iter().enumerate() {
        let Some(tensor) = walk.constant_named(input) else {
            continue;
        };
        if tensor.data_type != DataType::Float as i32 {
            continue;
        }
        let values = float_values(tensor)?;
        if values.len() <= 1 {
            continue;
        }
        let shape: Vec<usize> = tensor.dims.iter().map(|&d| d as usize).collect();
        let name = format!("{} `{}`", node.op_type, node.name);
        let read = match (node.op_type.as_str(), i) {
            // PyTorch's [out, in] under a Transpose: the MatMul after it uses [in, out].
            ("Transpose", 0) if shape.len() == 2 => {
                let perm = attribute(node, "perm").map(|a| a.ints.clone());
                if perm.is_some_and(|p| p != [1, 0]) {
                    bail!("{name} permutes a weight other than by [1, 0]");
                }
                linear(shape, values, true, name)
            }
            ("MatMul", 1) if shape.len() == 2 => linear(shape, values, false, name),
            ("Gemm", 1) => {
                let transposed = attribute(node, "transB").is_some_and(|a| a.i == 1);
                let alpha = attribute(node, "alpha").map_or(1.0, |a| a.f);
                if alpha != 1.0 || attribute(node, "transA").is_some_and(|a| a.i != 0) {
                    bail!("{name}: alpha {alpha} or a transposed A; a ViT's Linear has neither");
                }
                linear(shape, values, transposed, name)
            }
            // vit.py's feature Linears have no bias; ours carry a zero one for opset 8.
            ("Gemm", 2) if values.iter().all(|&v| v == 0.0) => continue,
            ("Gemm", 2) => bail!("{name} has a bias; vit.py's feature Linears have none"),
            ("Conv", 1 | 2) | ("Add" | "Mul" | "LayerNormalization", _) => Use {
                shape,
                values,
                node: name,
            },
            _ => bail!(
                "{name} uses the weight `{input}` of shape {shape:?}, which no layer of a ViT \
                 does that way"
            ),
        };
        uses.push(read);
    }
    Ok(())
}

/// A Linear's matrix in burn's [in, out] from a [in, out] one, or from PyTorch's [out, in] if
/// `transposed`.
fn linear(shape: Vec<usize>, values: Vec<f32>, transposed: bool, node: String) -> Use {
    let (rows, cols) = (shape[0], shape[1]);
    if !transposed {
        return Use {
            shape,
            values,
            node,
        };
    }
    Use {
        shape: vec![cols, rows],
        values: transpose(&values, rows, cols),
        node,
    }
}

/// H from the Reshape of the qkv product to [N, 144, 3, H, D/H], if the graph has one.
fn heads_of(walk: &Walk, width: usize) -> Option<usize> {
    walk.nodes
        .iter()
        .filter(|n| n.op_type == "Reshape")
        .filter_map(|n| walk.constant_named(n.input.get(1)?))
        .filter(|t| t.data_type == DataType::Int64 as i32 && t.dims == [5])
        .find_map(|t| {
            let dims: Vec<i64> = t
                .raw_data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .chain(t.int64_data.iter().copied())
                .collect();
            match dims.as_slice() {
                &[_, tokens, 3, h, hd]
                    if tokens == TOKENS as i64 && h > 0 && (h * hd) as usize == width =>
                {
                    Some(h as usize)
                }
                _ => None,
            }
        })
}
