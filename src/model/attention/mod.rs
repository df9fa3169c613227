//! Scaled dot-product attention, softmax(s·Q·Kᵀ)·V, as one differentiable operation for the
//! Vision Transformers (vit.rs).
//!
//! Under autodiff, burn 0.22 composes attention from a dozen operations (two products, a
//! transpose, a scale, the softmax's max, shift, exp, sum, division and two clamps), each with
//! its own backward and its own pass over the [N, heads, T, T] scores. Here the backward is
//! written once: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Σ_j dP·P), dQ = s·dS·K, dK = s·dSᵀ·Q,
//! from the probabilities P the forward keeps. On burn's CPU backend both directions are our
//! kernels (crates/cpu-kernels through `src/model/flex/`: each (image, head) pair's products
//! and softmax while its scores are in cache); on LibTorch libtorch's fused attention forward
//! and backward, which keeps no [N, heads, T, T] matrix (`libtorch.rs`); elsewhere burn's
//! operations compose the same arithmetic. Outside autodiff it is burn's own attention
//! (libtorch's fused one on LibTorch).
//!
//! The operation takes the qkv Linear's output as it lies and gives the heads' outputs side
//! by side, so that the permute into q, k, v, the slices and the transposed copy back (and
//! under autodiff their backwards: three zero-filled gradients of the whole qkv and their sum)
//! happen only where a backend needs them: our kernels read q, k and v in place (vit_tiny's
//! backward 92 → 80 ms a step).
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Shape, Slice, TensorMetadata};
use burn::tensor::Tensor;

/// softmax(scale·q·kᵀ)·v for each head of `qkv` [N, T, 3·D], the ViT's qkv Linear output
/// (per token [3, heads, D/heads]: vit.py's reshape(B, N, 3, H, C/H)), differentiable; the
/// heads' outputs side by side, [N, T, D] (vit.py's transpose(1, 2).reshape(B, N, C)).
pub fn attention(qkv: Tensor<3>, heads: usize, scale: f64) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as AttentionOp>::attention_op(
        qkv.into_dispatch(),
        heads,
        scale,
    ))
}

/// The operation, on each backend (and under autodiff, with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait AttentionOp: Backend {
    fn attention_op(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self>;
}

/// The kernels of a concrete backend (burn's CPU backend: ours, `src/model/flex/`, which read q,
/// k, v where they lie in qkv; LibTorch: libtorch's fused attention, `libtorch.rs`).
pub trait AttentionKernels: Backend {
    /// What the backward needs of the forward: qkv and the probabilities P [N, heads, T, T]
    /// for [`composed_forward`] and our kernels; libtorch's graph of its fused call on LibTorch.
    type Saved: Clone + Send + core::fmt::Debug + 'static;

    /// (output [N, T, D], what the backward needs).
    fn attention_forward(
        qkv: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, Self::Saved);

    /// d(qkv) [N, T, 3·D] for the output gradient `grad` [N, T, D].
    fn attention_backward(
        saved: Self::Saved,
        grad: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self>;
}

/// qkv [N, T, 3·D] → q, k, v [N, heads, T, D/heads] (vit.py's permute(2, 0, 3, 1, 4)).
fn split<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> [FloatTensor<B>; 3] {
    let [n, t, three_d] = qkv.shape().dims::<3>();
    let width = three_d / 3 / heads;
    let parts = B::float_permute(
        B::float_reshape(qkv, Shape::new([n, t, 3, heads, width])),
        &[2, 0, 3, 1, 4],
    );
    [0, 1, 2].map(|part| {
        let mut ranges = [Slice::full(); 5];
        ranges[0] = Slice::from(part..part + 1);
        let one = B::float_slice(parts.clone(), &ranges);
        B::float_reshape(one, Shape::new([n, heads, t, width]))
    })
}

/// [N, heads, T, w] → [N, T, heads·w].
fn merge_heads<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let [n, heads, t, width] = x.shape().dims::<4>();
    B::float_reshape(
        B::float_permute(x, &[0, 2, 1, 3]),
        Shape::new([n, t, heads * width]),
    )
}

/// [N, T, heads·w] → [N, heads, T, w]: [`merge_heads`]' inverse.
fn split_heads<B: Backend>(x: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let [n, t, d] = x.shape().dims::<3>();
    B::float_permute(
        B::float_reshape(x, Shape::new([n, t, heads, d / heads])),
        &[0, 2, 1, 3],
    )
}

/// [`AttentionKernels::attention_forward`] in burn's operations.
pub(super) fn composed_forward<B: Backend>(
    qkv: FloatTensor<B>,
    heads: usize,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = split::<B>(qkv, heads);
    let scores = B::float_mul_scalar(B::float_matmul(q, B::float_transpose(k)), scale.into());
    let max = B::float_max_dim(scores.clone(), 3);
    let exp = B::float_exp(B::float_sub(scores, max));
    let sum = B::float_sum_dim(exp.clone(), 3);
    let probs = B::float_div(exp, sum);
    (merge_heads::<B>(B::float_matmul(probs.clone(), v)), probs)
}

/// [`AttentionKernels::attention_backward`] in burn's operations.
pub(super) fn composed_backward<B: Backend>(
    qkv: FloatTensor<B>,
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
    heads: usize,
    scale: f64,
) -> FloatTensor<B> {
    let [n, t, three_d] = qkv.shape().dims::<3>();
    let [q, k, v] = split::<B>(qkv, heads);
    let grad = split_heads::<B>(grad, heads);
    let dv = B::float_matmul(B::float_transpose(probs.clone()), grad.clone());
    let dp = B::float_matmul(grad, B::float_transpose(v));
    let dot = B::float_sum_dim(B::float_mul(dp.clone(), probs.clone()), 3);
    let ds = B::float_mul_scalar(B::float_mul(probs, B::float_sub(dp, dot)), scale.into());
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_transpose(ds), q);
    // Back to the packed layout: [N, T, 1, D] each, side by side on the new axis.
    let parts = [dq, dk, dv]
        .map(|d| {
            let merged = merge_heads::<B>(d);
            B::float_reshape(merged, Shape::new([n, t, 1, three_d / 3]))
        })
        .to_vec();
    B::float_reshape(B::float_cat(parts, 2), Shape::new([n, t, three_d]))
}

#[cfg(feature = "tch")]
mod libtorch;

impl<B: Backend + AttentionKernels + AttentionOp, C: CheckpointStrategy> AttentionOp
    for Autodiff<B, C>
{
    fn attention_op(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend + AttentionKernels> Backward<B, 1> for AttentionBackward {
            /// What the forward saved, the heads and the scale.
            type State = (B::Saved, usize, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (saved, heads, scale) = ops.state;
                let [parent] = ops.parents;
                if let Some(node) = parent {
                    let gradient = B::attention_backward(saved, grad, heads, scale);
                    grads.register::<B>(node.id, gradient);
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, saved) = B::attention_forward(qkv.primitive().clone(), heads, scale);
                prep.finish((saved, heads, scale), output)
            }
            // The backend's own operation: the tracked forward's values (a recomputed block
            // runs its forward untracked first: recompute.rs).
            OpsKind::UnTracked(prep) => {
                prep.finish(B::attention_op(qkv.into_primitive(), heads, scale))
            }
        }
    }
}
