//! PReLU as one differentiable operation: forward y = x (x ≥ 0), α_c·x (x < 0); backward
//! dx = dy or α_c·dy, dα_c = Σ dy·x over x < 0 of channel c.
//!
//! burn 0.22's autodiff builds PReLU out of a comparison, a product and a select, each with its
//! own backward: about ten passes over the activations per layer and step. On LibTorch this op
//! runs libtorch's `_prelu_kernel` and `_prelu_kernel_backward` instead (PyTorch's own, one pass
//! each way); on burn's CPU backend our one-pass kernels (crates/cpu-kernels through
//! `src/model/flex/`), and elsewhere the same arithmetic composed once, without the autodiff
//! bookkeeping of every part. Through burn's backend-extension API (`#[backend_extension]`):
//! the one hook 0.22 offers for an operation with its own backward.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Scalar, Shape, TensorMetadata};
use burn::backend::{backend_extension, get_or_init_device_settings};
use burn::tensor::Tensor;

use super::batch_norm::cast_to;

/// PReLU of `x` [N, C, ...] with per-channel slopes `alpha` [C], differentiable in both.
pub fn prelu<const D: usize>(x: Tensor<D>, alpha: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as PReluOp>::prelu_op(
        x.into_dispatch(),
        alpha.into_dispatch(),
    ))
}

/// The operation, on each backend (and under autodiff, with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait PReluOp: Backend {
    fn prelu_op(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The kernels of a concrete backend: burn's own arithmetic by default (burn's CPU backend:
/// ours, `src/model/flex/`).
pub trait PReluKernels: Backend {
    fn prelu_forward(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_forward::<Self>(x, alpha)
    }

    /// (dx, dα) for the output gradient `grad`.
    fn prelu_backward(
        x: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(x, alpha, grad)
    }
}

/// [`PReluKernels::prelu_forward`] by burn's PReLU (slopes at the input's precision).
pub(super) fn composed_forward<B: Backend>(
    x: FloatTensor<B>,
    alpha: FloatTensor<B>,
) -> FloatTensor<B> {
    let alpha = per_channel::<B>(cast_to::<B>(alpha, x.dtype()), &x.shape());
    B::prelu(x, alpha)
}

/// [`PReluKernels::prelu_backward`] out of burn's tensor operations.
pub(super) fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    alpha: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let channels = shape[1];
    // bf16 activations with fp32 slopes: the slopes' gradient is summed at their precision.
    let slope_dtype = alpha.dtype();
    let alpha = cast_to::<B>(alpha, x.dtype());
    let bool_dtype = get_or_init_device_settings::<B>(&x.device()).bool_dtype;
    let negative = B::float_lower_elem(x.clone(), Scalar::Float(0.0), bool_dtype);
    let scaled = B::float_mul(grad.clone(), per_channel::<B>(alpha, &shape));
    let grad_x = B::float_mask_where(grad.clone(), negative.clone(), scaled);
    let slope_terms = B::float_mask_fill(
        B::float_mul(grad, x),
        B::bool_not(negative),
        Scalar::Float(0.0),
    );
    let per_row = B::float_reshape(
        B::float_swap_dims(cast_to::<B>(slope_terms, slope_dtype), 0, 1),
        Shape::new([channels, shape.num_elements() / channels]),
    );
    let grad_alpha = B::float_reshape(B::float_sum_dim(per_row, 1), Shape::new([channels]));
    (grad_x, grad_alpha)
}

/// `alpha` [C] shaped [1, C, 1, ...] to broadcast over an input of `shape`.
fn per_channel<B: Backend>(alpha: FloatTensor<B>, shape: &Shape) -> FloatTensor<B> {
    let mut dims = vec![1; shape.num_dims()];
    dims[1] = shape[1];
    B::float_reshape(alpha, Shape::from(dims))
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::tensor::FloatTensor;
    use burn_tch::TchTensor;

    use super::{PReluKernels, PReluOp};

    /// libtorch's kernels want the slopes shaped [C, 1, ...] (broadcast from dimension 1 on)
    /// and of the input's type: bf16 activations take bf16 slopes, as under PyTorch's autocast.
    fn slopes(alpha: &TchTensor, x: &TchTensor) -> tch::Tensor {
        let mut dims = vec![1i64; x.tensor.dim() - 1];
        dims[0] = -1;
        alpha.tensor.reshape(dims).to_kind(x.tensor.kind())
    }

    // ARCFACE_TCH_GENERIC=1 (libtorch's kernels off, for A/B runs): burn's arithmetic.
    impl PReluKernels for LibTorch {
        fn prelu_forward(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
            let weight = slopes(&alpha, &x);
            TchTensor::new(x.tensor.internal_prelu_kernel(&weight))
        }

        fn prelu_backward(
            x: FloatTensor<Self>,
            alpha: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            if !burn_tch::fused::enabled() {
                return super::composed_backward::<Self>(x, alpha, grad);
            }
            let weight = slopes(&alpha, &x);
            let (grad_x, grad_weight) = x
                .tensor
                .internal_prelu_kernel_backward(&grad.tensor, &weight);
            // The kernel leaves dα per element; PyTorch's autograd sums it to α's shape after.
            // Summed at α's precision (fp32 under bf16), as the sum is accumulated anyway.
            let others: Vec<i64> = (0..grad_weight.dim() as i64).filter(|&d| d != 1).collect();
            let grad_alpha = grad_weight.sum_dim_intlist(&others[..], false, alpha.tensor.kind());
            (TchTensor::new(grad_x), TchTensor::new(grad_alpha))
        }
    }

    impl PReluOp for LibTorch {
        fn prelu_op(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::prelu_forward(x, alpha)
        }
    }
}

impl<B: Backend + PReluKernels, C: CheckpointStrategy> PReluOp for Autodiff<B, C> {
    fn prelu_op(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct PReluBackward;

        impl<B: Backend + PReluKernels> Backward<B, 2> for PReluBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_alpha] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, alpha) = ops.state;
                let (grad_x, grad_alpha) = B::prelu_backward(x, alpha, grad);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, grad_x);
                }
                if let Some(node) = node_alpha {
                    grads.register::<B>(node.id, grad_alpha);
                }
            }
        }

        match PReluBackward
            .prepare::<C>([x.node(), alpha.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, alpha) = (x.primitive().clone(), alpha.primitive().clone());
                let output = B::prelu_forward(x.clone(), alpha.clone());
                prep.finish((x, alpha), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::prelu_forward(x.into_primitive(), alpha.into_primitive()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Distribution, Tensor, TensorData, activation};

    fn close(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The operation and its gradients equal burn's composed PReLU (differentiated by autodiff
    /// part by part), on inputs of both signs and slopes of both signs.
    #[test]
    fn equals_burns_composed_prelu_forward_and_backward() {
        let device = Device::flex().autodiff();
        device.seed(4);
        let x = Tensor::<4>::random([3, 5, 4, 6], Distribution::Uniform(-2.0, 2.0), &device);
        let alpha =
            Tensor::<1>::from_data(TensorData::from([0.25f32, -0.5, 1.5, 0.0, 0.1]), &device);
        let upstream = Tensor::<4>::random([3, 5, 4, 6], Distribution::Uniform(-1.0, 1.0), &device);
        let run = |fused: bool| {
            let (x, alpha) = (x.clone().require_grad(), alpha.clone().require_grad());
            let y = if fused {
                super::prelu(x.clone(), alpha.clone())
            } else {
                activation::prelu(x.clone(), alpha.clone())
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                alpha.grad(&grads).unwrap(),
            )
        };
        let (y, gx, ga) = run(true);
        let (y0, gx0, ga0) = run(false);
        assert!(close(y, y0) < 1e-6);
        assert!(close(gx, gx0) < 1e-6);
        let ga_diff = (ga.clone() - ga0.clone()).abs().max().into_scalar::<f32>();
        assert!(ga_diff < 1e-4, "slope gradients {ga} vs {ga0}");
        assert!(
            ga0.abs().sum().into_scalar::<f32>() > 0.1,
            "the slopes have gradients"
        );
        // Without autodiff, the same forward.
        let plain = Device::flex();
        let xs = x.inner().to_data();
        let y = super::prelu(
            Tensor::<4>::from_data(xs.clone(), &plain),
            alpha.clone().inner().to_device(&plain),
        );
        let y0 = activation::prelu(
            Tensor::<4>::from_data(xs, &plain),
            alpha.inner().to_device(&plain),
        );
        assert!(close(y, y0) < 1e-6);
    }
}
