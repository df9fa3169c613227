//! The LibTorch kernels: libtorch's fused scaled dot-product attention in both directions.
//!
//! The forward is `F.scaled_dot_product_attention` on q, k, v cut from qkv as vit.py cuts them,
//! run under libtorch's own autograd on a leaf that aliases qkv; the backward is that graph's
//! backward. libtorch then picks the kernel PyTorch would (flash attention on the CPU,
//! memory-efficient or flash attention on CUDA) and the graph holds what that kernel saves (q,
//! k, v as views of qkv, the output, one log-sum-exp a row), never the [N, heads, T, T] scores or
//! probabilities that burn's composition keeps for each block. Going through autograd rather
//! than the kernels' own entry points keeps that choice libtorch's: tch 0.22 binds neither the
//! memory-efficient backward nor the dispatcher's choice, and each kernel saves different
//! things (seeds, offsets, cumulative lengths).
//!
//! With libtorch's kernels off (`ARCFACE_TCH_GENERIC=1`, for A/B runs) burn's composition.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![allow(deprecated)]

use burn::backend::LibTorch;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::ops::AttentionModuleOptions;
use burn_tch::TchTensor;
use tch::Tensor;

use super::{AttentionKernels, AttentionOp};

/// Outside autodiff: burn's attention, which is libtorch's fused one on LibTorch.
fn inference(qkv: FloatTensor<LibTorch>, heads: usize, scale: f64) -> FloatTensor<LibTorch> {
    let options = AttentionModuleOptions {
        scale: Some(scale),
        ..Default::default()
    };
    let [q, k, v] = super::split::<LibTorch>(qkv, heads);
    super::merge_heads::<LibTorch>(LibTorch::attention(q, k, v, None, None, options))
}

/// What the backward needs of the forward.
#[derive(Debug, Clone)]
pub enum Saved {
    /// libtorch's graph of the fused call.
    Fused(Graph),
    /// qkv and the probabilities of burn's composition.
    Composed(TchTensor, TchTensor),
}

/// The fused call's autograd graph, from the leaf aliasing qkv to the output.
pub struct Graph {
    leaf: Tensor,
    output: Tensor,
    /// burn's handles on qkv's and the output's storage: while this graph lives neither is
    /// uniquely held, so burn-tch never updates them in place under the saved views (libtorch
    /// would refuse the backward: its version counters).
    _storage: [TchTensor; 2],
}

impl Clone for Graph {
    fn clone(&self) -> Self {
        Graph {
            leaf: self.leaf.shallow_clone(),
            output: self.output.shallow_clone(),
            _storage: self._storage.clone(),
        }
    }
}

impl core::fmt::Debug for Graph {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Graph(qkv {:?})", self.leaf.size())
    }
}

/// softmax(scale·q·kᵀ)·v by libtorch's fused attention, recorded by its autograd: the output
/// [N, T, D] (outside the graph) and the graph.
fn fused_forward(qkv: &TchTensor, heads: usize, scale: f64) -> (TchTensor, Graph) {
    let leaf = qkv.tensor.detach().set_requires_grad(true);
    let output = tch::with_grad(|| {
        let &[n, t, three_d] = leaf.size().as_slice() else {
            panic!("attention takes qkv [N, T, 3·D], not {:?}", leaf.size());
        };
        let heads = heads as i64;
        let width = three_d / 3 / heads;
        // vit.py's reshape(B, N, 3, H, C/H).permute(2, 0, 3, 1, 4): views, no copy.
        let parts = leaf
            .reshape([n, t, 3, heads, width])
            .permute([2, 0, 3, 1, 4])
            .unbind(0);
        let out = Tensor::scaled_dot_product_attention(
            &parts[0],
            &parts[1],
            &parts[2],
            None::<Tensor>,
            0.0,
            false,
            scale,
            false,
        );
        out.transpose(1, 2).reshape([n, t, three_d / 3])
    });
    let result = TchTensor::new(output.detach());
    let graph = Graph {
        leaf,
        output,
        _storage: [qkv.clone(), result.clone()],
    };
    (result, graph)
}

/// d(qkv) for the output gradient `grad`: the graph's backward. libtorch's `backward` takes a
/// scalar, so it runs on Σ output ⊙ grad, whose gradient at the output is `grad` itself
/// (the product's backward multiplies by 1.0: exact).
fn fused_backward(graph: Graph, grad: &TchTensor) -> TchTensor {
    let total = tch::with_grad(|| (&graph.output * &grad.tensor).sum(None));
    let mut dqkv = Tensor::run_backward(&[total], &[&graph.leaf], false, false);
    TchTensor::new(dqkv.remove(0))
}

impl AttentionKernels for LibTorch {
    type Saved = Saved;

    fn attention_forward(
        qkv: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, Saved) {
        if !burn_tch::fused::enabled() {
            let (out, probs) = super::composed_forward::<Self>(qkv.clone(), heads, scale);
            return (out, Saved::Composed(qkv, probs));
        }
        let (out, graph) = fused_forward(&qkv, heads, scale);
        (out, Saved::Fused(graph))
    }

    fn attention_backward(
        saved: Saved,
        grad: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        match saved {
            Saved::Fused(graph) => fused_backward(graph, &grad),
            Saved::Composed(qkv, probs) => {
                super::composed_backward::<Self>(qkv, probs, grad, heads, scale)
            }
        }
    }
}

impl AttentionOp for LibTorch {
    fn attention_op(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        inference(qkv, heads, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{composed_backward, composed_forward};
    use super::*;
    use burn::backend::TensorMetadata;
    use burn::tensor::Shape;

    fn tensor(values: &[f64], shape: [usize; 3], kind: tch::Kind) -> TchTensor {
        let t = Tensor::from_slice(values)
            .reshape(shape.map(|d| d as i64))
            .to_kind(kind);
        TchTensor::new(t)
    }

    fn f64s(t: &TchTensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.tensor.to_kind(tch::Kind::Double).flatten(0, -1)).unwrap()
    }

    fn relative(ours: &[f64], exact: &[f64]) -> f64 {
        let diff: f64 = ours.iter().zip(exact).map(|(a, b)| (a - b).powi(2)).sum();
        (diff / exact.iter().map(|b| b * b).sum::<f64>()).sqrt()
    }

    /// libtorch's fused forward and backward in float32 equal burn's composition run in
    /// float64 (another arithmetic: two products and an explicit softmax, and the backward
    /// written out in attention/mod.rs), for 1 and 3 heads and token counts off the kernels'
    /// block sizes.
    #[test]
    fn the_fused_call_equals_the_composition_in_float64() {
        for (n, tokens, heads, width) in [(2, 9, 1, 8), (3, 37, 3, 4), (1, 144, 2, 16)] {
            let three_d = 3 * heads * width;
            let values = |salt: usize, count: usize| -> Vec<f64> {
                (0..count)
                    .map(|i| (((i * 7919 + salt * 104_729) % 2003) as f64 / 1001.5 - 1.0) * 1.5)
                    .collect()
            };
            let qkv = values(1, n * tokens * three_d);
            let grad = values(2, n * tokens * heads * width);
            let scale = (width as f64).powf(-0.5);
            let (exact_out, probs) = composed_forward::<LibTorch>(
                tensor(&qkv, [n, tokens, three_d], tch::Kind::Double),
                heads,
                scale,
            );
            let grad64 = tensor(&grad, [n, tokens, heads * width], tch::Kind::Double);
            let exact_dqkv = composed_backward::<LibTorch>(
                tensor(&qkv, [n, tokens, three_d], tch::Kind::Double),
                probs,
                grad64,
                heads,
                scale,
            );
            let qkv32 = tensor(&qkv, [n, tokens, three_d], tch::Kind::Float);
            let (out, graph) = fused_forward(&qkv32, heads, scale);
            assert_eq!(out.shape(), Shape::new([n, tokens, heads * width]));
            let grad32 = tensor(&grad, [n, tokens, heads * width], tch::Kind::Float);
            let dqkv = fused_backward(graph, &grad32);
            assert_eq!(dqkv.shape(), Shape::new([n, tokens, three_d]));
            let (d_out, d_grad) = (
                relative(&f64s(&out), &f64s(&exact_out)),
                relative(&f64s(&dqkv), &f64s(&exact_dqkv)),
            );
            assert!(
                d_out < 1e-6 && d_grad < 1e-5,
                "{n}×{tokens}, {heads} heads: output {d_out:.2e}, d(qkv) {d_grad:.2e}"
            );
            // The input is left as it was (the leaf aliases it).
            assert_eq!(
                f64s(&qkv32),
                f64s(&tensor(&qkv, [n, tokens, three_d], tch::Kind::Float))
            );
        }
    }
}
