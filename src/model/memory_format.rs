//! Channels-last (NHWC) storage of the backbone's activations on LibTorch, as PyTorch's
//! `x.to(memory_format=torch.channels_last)`: the values and the shape [N, C, H, W] stay what
//! they are; only the order in memory changes, and with it the kernels libtorch picks. cuDNN's
//! bf16 convolutions run much faster on NHWC (PyTorch's r100 bf16 step: up to 1.9× with
//! channels-last on an H200, docs/PERFORMANCE.md). libtorch's convolutions, BatchNorm, PReLU and
//! elementwise kernels all write their output in their input's layout, so converting the images
//! once keeps the whole trunk NHWC, backward included. On LibTorch's CPU with oneDNN (see below)
//! and on other backends, which have one layout, it is the identity.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::Tensor;

/// `x` [N, C, H, W] stored channels-last where the backend has memory formats (LibTorch);
/// `x` itself where `on` is false or the backend has none.
pub fn channels_last(x: Tensor<4>, on: bool) -> Tensor<4> {
    if !on {
        return x;
    }
    Tensor::from_dispatch(<Dispatch as MemoryFormatOp>::channels_last_op(
        x.into_dispatch(),
    ))
}

/// The layout change, on each backend; under autodiff the gradient passes through unchanged.
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait MemoryFormatOp: Backend {
    fn channels_last_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        x
    }
}

impl MemoryFormatOp for Flex {}

#[cfg(feature = "tch")]
impl MemoryFormatOp for burn::backend::LibTorch {
    fn channels_last_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        // Not on the CPU while oneDNN serves its convolutions (the default): libtorch 2.11's
        // oneDNN crashes on some channels-last gradients. PyTorch itself, on this project's Zen 4
        // VM: `convolution_backward` of a 1×1 stride-2 convolution, input [6, 8, 112, 112],
        // input, weight and output gradient all channels-last, dies with SIGSEGV in
        // jit_avx512_common_1x1_convolution_bwd_weights_t. libtorch's own CPU convolutions
        // (oneDNN off, as tests/libtorch.rs runs this path) take it.
        if !x.tensor.device().is_cuda() && burn_tch::fused::mkldnn_enabled() {
            return x;
        }
        // NHWC in memory, viewed as NCHW: the strides of PyTorch's channels_last
        // ([HWC, 1, WC, C]). tch has no memory-format argument; this is the same one copy.
        let nhwc = x.tensor.permute([0, 2, 3, 1]).contiguous();
        burn_tch::TchTensor::new(nhwc.permute([0, 3, 1, 2]))
    }
}

impl<B: Backend + MemoryFormatOp, C: CheckpointStrategy> MemoryFormatOp for Autodiff<B, C> {
    fn channels_last_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Identity;

        impl<B: Backend> Backward<B, 1> for Identity {
            type State = ();

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = node {
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        Identity
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateless(B::channels_last_op(x.into_primitive()))
    }
}
