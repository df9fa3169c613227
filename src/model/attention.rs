//! Scaled dot-product attention, softmax(s·Q·Kᵀ)·V, as one differentiable operation for the
//! Vision Transformers (vit.rs).
//!
//! Under autodiff, burn 0.22 composes attention from a dozen operations (two products, a
//! transpose, a scale, the softmax's max, shift, exp, sum, division and two clamps), each with
//! its own backward and its own pass over the [N, heads, T, T] scores. Here the backward is
//! written once: dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ⊙ (dP − Σ_j dP·P), dQ = s·dS·K, dK = s·dSᵀ·Q,
//! from the probabilities P the forward keeps. On burn's CPU backend both directions are our
//! kernels (crates/cpu-kernels through `src/model/flex/`: each (image, head) pair's products
//! and softmax while its scores are in cache); elsewhere burn's operations compose the same
//! arithmetic. Outside autodiff it is burn's own attention (libtorch's fused one on LibTorch).
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch};
use burn::tensor::Tensor;
use burn::tensor::ops::AttentionModuleOptions;

/// softmax(scale·q·kᵀ)·v of q, k, v [N, heads, T, d/heads], differentiable in all three.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as AttentionOp>::attention_op(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        scale,
    ))
}

/// The operation, on each backend (and under autodiff, with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait AttentionOp: Backend {
    fn attention_op(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self>;
}

/// The kernels of a concrete backend: burn's arithmetic by default (burn's CPU backend: ours,
/// `src/model/flex/`).
pub trait AttentionKernels: Backend {
    /// (output, probabilities P [N, heads, T, T]).
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_forward::<Self>(q, k, v, scale)
    }

    /// (dq, dk, dv) for the output gradient `grad`.
    fn attention_backward(
        qkv: [FloatTensor<Self>; 3],
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> [FloatTensor<Self>; 3] {
        composed_backward::<Self>(qkv, probs, grad, scale)
    }
}

/// Outside autodiff: burn's attention on the backend.
pub(super) fn inference<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> FloatTensor<B> {
    let options = AttentionModuleOptions {
        scale: Some(scale),
        ..Default::default()
    };
    B::attention(q, k, v, None, None, options)
}

/// [`AttentionKernels::attention_forward`] in burn's operations.
pub(super) fn composed_forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let scores = B::float_mul_scalar(B::float_matmul(q, B::float_transpose(k)), scale.into());
    let max = B::float_max_dim(scores.clone(), 3);
    let exp = B::float_exp(B::float_sub(scores, max));
    let sum = B::float_sum_dim(exp.clone(), 3);
    let probs = B::float_div(exp, sum);
    (B::float_matmul(probs.clone(), v), probs)
}

/// [`AttentionKernels::attention_backward`] in burn's operations.
pub(super) fn composed_backward<B: Backend>(
    [q, k, v]: [FloatTensor<B>; 3],
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f64,
) -> [FloatTensor<B>; 3] {
    let dv = B::float_matmul(B::float_transpose(probs.clone()), grad.clone());
    let dp = B::float_matmul(grad, B::float_transpose(v));
    let dot = B::float_sum_dim(B::float_mul(dp.clone(), probs.clone()), 3);
    let ds = B::float_mul_scalar(B::float_mul(probs, B::float_sub(dp, dot)), scale.into());
    let dq = B::float_matmul(ds.clone(), k);
    let dk = B::float_matmul(B::float_transpose(ds), q);
    [dq, dk, dv]
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::tensor::FloatTensor;

    use super::{AttentionKernels, AttentionOp};

    impl AttentionKernels for LibTorch {}

    impl AttentionOp for LibTorch {
        fn attention_op(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            scale: f64,
        ) -> FloatTensor<Self> {
            super::inference::<Self>(q, k, v, scale)
        }
    }
}

impl<B: Backend + AttentionKernels, C: CheckpointStrategy> AttentionOp for Autodiff<B, C> {
    fn attention_op(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward;

        impl<B: Backend + AttentionKernels> Backward<B, 3> for AttentionBackward {
            /// q, k, v, the probabilities and the scale.
            type State = ([FloatTensor<B>; 3], FloatTensor<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (qkv, probs, scale) = ops.state;
                let gradients = B::attention_backward(qkv, probs, grad, scale);
                for (node, gradient) in ops.parents.into_iter().zip(gradients) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, gradient);
                    }
                }
            }
        }

        match AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let qkv = [q, k, v].map(|t| t.primitive().clone());
                let [q, k, v] = qkv.clone();
                let (output, probs) = B::attention_forward(q, k, v, scale);
                prep.finish((qkv, probs, scale), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(inference::<B>(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                scale,
            )),
        }
    }
}
