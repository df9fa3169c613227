//! Channels-last (NHWC) storage of the backbone's activations on LibTorch, as PyTorch's
//! `x.to(memory_format=torch.channels_last)`: the values and the shape [N, C, H, W] stay what
//! they are; only the order in memory changes, and with it the kernels libtorch picks. cuDNN's
//! bf16 convolutions run much faster on NHWC (PyTorch's r100 bf16 step: up to 1.9× with
//! channels-last on an H200, docs/HISTORY.md). libtorch's convolutions, BatchNorm, PReLU and
//! elementwise kernels all write their output in their input's layout, so converting the images
//! once keeps the whole trunk NHWC, backward included; [`conv_weight`] gives the convolutions
//! their bf16 weights in the same layout. On LibTorch's CPU with oneDNN (see below) and on other
//! backends, which have one layout, both are the identity (and the plain cast).
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::TensorMetadata;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{FloatDType, Tensor};

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

/// A convolution's `weight` cast to `dtype` for input `x`, and stored channels-last where `x`
/// is (LibTorch); its gradient comes back in the weight's own dtype and layout.
///
/// Why: PyTorch's channels-last model keeps its weights NHWC. Ours stay NCHW (the optimizer's
/// flat momentum buffers and the checkpoints are laid out so), and libtorch's convolution then
/// makes an NHWC copy of the weight in the forward and another in the backward, and hands the
/// weight's gradient back NHWC, which the fused SGD copies to NCHW: three copies per 3×3
/// convolution and step (297 per r100 step in bf16, against PyTorch's 1; profiled on LibTorch's
/// CPU, docs/HISTORY.md). Here the cast writes NHWC at once, and the gradient's cast back to
/// fp32 writes NCHW at once: no copy beyond the two casts that autocast makes too.
pub fn conv_weight(weight: Tensor<4>, dtype: FloatDType, x: &Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as MemoryFormatOp>::conv_weight_op(
        weight.into_dispatch(),
        x.clone().into_dispatch(),
        dtype,
    ))
}

/// The layout changes, on each backend; under autodiff the gradient passes through unchanged
/// (`channels_last_op`) or is cast back ([`WeightGradient`]).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait MemoryFormatOp: Backend {
    fn channels_last_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        x
    }

    /// `weight` in `dtype`, in the layout of `like` where the backend has layouts.
    fn conv_weight_op(
        weight: FloatTensor<Self>,
        like: FloatTensor<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        let _ = like;
        Self::float_cast(weight, dtype)
    }
}

/// The backward of [`MemoryFormatOp::conv_weight_op`] on a concrete backend: `grad` in `dtype`
/// (the weight's), stored contiguously.
pub trait WeightGradient: Backend {
    fn weight_gradient(grad: FloatTensor<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        Self::float_cast(grad, dtype)
    }
}

impl MemoryFormatOp for Flex {}
impl WeightGradient for Flex {}

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
        let dtype = x.dtype().into();
        libtorch::copy_as(&x, dtype, true)
    }

    fn conv_weight_op(
        weight: FloatTensor<Self>,
        like: FloatTensor<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        let (size, strides) = (like.tensor.size(), like.tensor.stride());
        // Channels-last [N, C, H, W] has the channel stride 1 (NCHW has H·W).
        let nhwc = size.len() == 4 && size[1] > 1 && strides[1] == 1;
        if !nhwc || weight.tensor.dim() != 4 {
            return <Self as burn::backend::ops::FloatTensorOps<Self>>::float_cast(weight, dtype);
        }
        libtorch::copy_as(&weight, dtype, true)
    }
}

#[cfg(feature = "tch")]
impl WeightGradient for burn::backend::LibTorch {
    fn weight_gradient(grad: FloatTensor<Self>, dtype: FloatDType) -> FloatTensor<Self> {
        if grad.dtype() == dtype.into() && grad.tensor.is_contiguous() {
            return grad;
        }
        // Back to the weight's layout (contiguous NCHW).
        libtorch::copy_as(&grad, dtype, false)
    }
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::TensorMetadata;
    use burn::backend::ops::FloatTensorOps;
    use burn::tensor::{FloatDType, Shape};
    use burn_tch::TchTensor;

    /// `t` copied in `dtype`, contiguous or, with `channels_last`, [N, C, H, W] stored NHWC and
    /// viewed as NCHW (the strides of PyTorch's channels_last: [HWC, 1, WC, C]; tch has no
    /// memory-format argument): the cast and the layout in one kernel.
    pub fn copy_as(t: &TchTensor, dtype: FloatDType, channels_last: bool) -> TchTensor {
        let mut dims: Vec<usize> = t.tensor.size().iter().map(|&d| d as usize).collect();
        if channels_last {
            dims[1..].rotate_left(1);
        }
        let out = LibTorch::float_empty(Shape::from(dims), &t.device(), dtype).tensor;
        let mut out = if channels_last {
            out.permute([0, 3, 1, 2])
        } else {
            out
        };
        out.copy_(&t.tensor);
        TchTensor::new(out)
    }
}

impl<B: Backend + MemoryFormatOp + WeightGradient, C: CheckpointStrategy> MemoryFormatOp
    for Autodiff<B, C>
{
    fn channels_last_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match PassBack.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(None, B::channels_last_op(x.into_primitive())),
            OpsKind::UnTracked(prep) => prep.finish(B::channels_last_op(x.into_primitive())),
        }
    }

    fn conv_weight_op(
        weight: FloatTensor<Self>,
        like: FloatTensor<Self>,
        dtype: FloatDType,
    ) -> FloatTensor<Self> {
        // `like` is only read for its layout: no gradient flows to it.
        let like = like.into_primitive();
        let own: FloatDType = weight.primitive().dtype().into();
        match PassBack
            .prepare::<C>([weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                Some(own),
                B::conv_weight_op(weight.into_primitive(), like, dtype),
            ),
            OpsKind::UnTracked(prep) => {
                prep.finish(B::conv_weight_op(weight.into_primitive(), like, dtype))
            }
        }
    }
}

/// The backward of both operations: the gradient handed back as it is (state None), or cast to
/// the weight's dtype into its layout ([`WeightGradient`]).
#[derive(Debug)]
struct PassBack;

impl<B: Backend + WeightGradient> Backward<B, 1> for PassBack {
    type State = Option<FloatDType>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            let grad = match ops.state {
                Some(dtype) => B::weight_gradient(grad, dtype),
                None => grad,
            };
            grads.register::<B>(node.id, grad);
        }
    }
}
