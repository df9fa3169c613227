//! ReLU6 (the ViTs' MLP activation) as one differentiable operation: forward
//! min(max(x, 0), 6), backward dx = dy where 0 < x < 6 (PyTorch's `hardtanh_backward`).
//!
//! burn 0.22 composes it as a clamp: under autodiff two masked fills forward and two backward,
//! 12 % of a vit_tiny training step on the CPU (perf). On burn's CPU backend this op runs our
//! one-pass kernels (crates/cpu-kernels through `src/model/flex/`); elsewhere burn's arithmetic,
//! composed once.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, TensorMetadata};
use burn::backend::{backend_extension, get_or_init_device_settings};
use burn::tensor::Tensor;

/// min(max(x, 0), 6), differentiable.
pub fn relu6<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Relu6Op>::relu6_op(x.into_dispatch()))
}

/// The operation, on each backend (and under autodiff, with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait Relu6Op: Backend {
    fn relu6_op(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The kernels of a concrete backend: burn's arithmetic by default (burn's CPU backend: ours,
/// `src/model/flex/`).
pub trait Relu6Kernels: Backend {
    fn relu6_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_forward::<Self>(x)
    }

    /// dx for the output gradient `grad`.
    fn relu6_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_backward::<Self>(x, grad)
    }
}

/// [`Relu6Kernels::relu6_forward`] by burn's clamp.
pub(super) fn composed_forward<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_clamp(x, 0.0.into(), 6.0.into())
}

/// [`Relu6Kernels::relu6_backward`] by burn's masked fills.
pub(super) fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let bool_dtype = get_or_init_device_settings::<B>(&x.device()).bool_dtype;
    let below = B::float_lower_equal_elem(x.clone(), 0.0.into(), bool_dtype);
    let above = B::float_greater_equal_elem(x, 6.0.into(), bool_dtype);
    let grad = B::float_mask_fill(grad, below, 0.0.into());
    B::float_mask_fill(grad, above, 0.0.into())
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::tensor::FloatTensor;

    use super::{Relu6Kernels, Relu6Op};

    impl Relu6Kernels for LibTorch {}

    impl Relu6Op for LibTorch {
        fn relu6_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::relu6_forward(x)
        }
    }
}

impl<B: Backend + Relu6Kernels, C: CheckpointStrategy> Relu6Op for Autodiff<B, C> {
    fn relu6_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Relu6Backward;

        impl<B: Backend + Relu6Kernels> Backward<B, 1> for Relu6Backward {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::relu6_backward(ops.state, grad));
                }
            }
        }

        match Relu6Backward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let x = x.primitive().clone();
                prep.finish(x.clone(), B::relu6_forward(x))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::relu6_forward(x.into_primitive())),
        }
    }
}
