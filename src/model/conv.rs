//! A bias-free 2-D convolution as one differentiable operation whose backward takes the input
//! and the weight gradient together, as PyTorch's autograd does.
//!
//! burn 0.22's autodiff differentiates `conv2d` with two backend calls, `conv2d_x_backward`
//! and `conv2d_weight_backward`. On LibTorch each becomes a `convolution_backward` of its own
//! (vendor/burn-tch): two dispatches per layer where PyTorch makes one, 105 per r50 step against
//! 53. This operation hands both wanted gradients to one call, which runs the same kernels; what
//! it saves is host time per launch on a GPU (on the CPU the difference is within noise:
//! docs/HISTORY.md, "Both convolution gradients in one call"). On burn's CPU backend both
//! directions run our im2col + gemm kernels (crates/cpu-kernels through `src/model/flex/`),
//! ~4× faster than burn's own there.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

/// `conv2d(x, weight, no bias, options)`, differentiable in `x` and `weight`.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, options: ConvOptions<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as Conv2dOp>::conv2d_op(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ))
}

/// The operation, on each backend (and under autodiff, with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait Conv2dOp: Backend {
    fn conv2d_op(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

/// The kernels of a concrete backend: burn's own by default (burn's CPU backend: ours,
/// `src/model/flex/`).
pub trait Conv2dKernels: Backend {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        burn_forward::<Self>(x, weight, options)
    }

    /// (dx if `want_x`, dweight if `want_weight`) for the output gradient `grad`.
    fn conv2d_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        want_x: bool,
        want_weight: bool,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        separate_gradients::<Self>(x, weight, grad, options, want_x, want_weight)
    }
}

/// The backend's own convolution, without bias.
pub(super) fn burn_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    options: ConvOptions<2>,
) -> FloatTensor<B> {
    B::conv2d(x, weight, None, options)
}

/// [`Conv2dKernels::conv2d_gradients`] by the backend's two calls, as burn's autodiff takes them.
pub(super) fn separate_gradients<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    options: ConvOptions<2>,
    want_x: bool,
    want_weight: bool,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let grad_x = want_x
        .then(|| B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone()));
    let grad_weight = want_weight.then(|| B::conv2d_weight_backward(x, weight, grad, options));
    (grad_x, grad_weight)
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::tensor::FloatTensor;
    use burn::tensor::ops::ConvOptions;

    use super::{Conv2dKernels, Conv2dOp};

    impl Conv2dKernels for LibTorch {
        fn conv2d_gradients(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            options: ConvOptions<2>,
            want_x: bool,
            want_weight: bool,
        ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
            // None: libtorch's kernels off (ARCFACE_TCH_GENERIC=1) or options it does not take.
            burn_tch::fused::conv2d_gradients(&x, &weight, &grad, &options, want_x, want_weight)
                .unwrap_or_else(|| {
                    super::separate_gradients::<Self>(x, weight, grad, options, want_x, want_weight)
                })
        }
    }

    impl Conv2dOp for LibTorch {
        fn conv2d_op(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            options: ConvOptions<2>,
        ) -> FloatTensor<Self> {
            Self::conv2d_forward(x, weight, options)
        }
    }
}

impl<B: Backend + Conv2dKernels, C: CheckpointStrategy> Conv2dOp for Autodiff<B, C> {
    fn conv2d_op(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Conv2dBackward;

        impl<B: Backend + Conv2dKernels> Backward<B, 2> for Conv2dBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, ConvOptions<2>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight, options) = ops.state;
                let (grad_x, grad_weight) = B::conv2d_gradients(
                    x,
                    weight,
                    grad,
                    options,
                    node_x.is_some(),
                    node_weight.is_some(),
                );
                if let (Some(node), Some(grad)) = (node_x, grad_x) {
                    grads.register::<B>(node.id, grad);
                }
                if let (Some(node), Some(grad)) = (node_weight, grad_weight) {
                    grads.register::<B>(node.id, grad);
                }
            }
        }

        match Conv2dBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.primitive().clone(), weight.primitive().clone());
                let output = B::conv2d_forward(x.clone(), weight.clone(), options.clone());
                prep.finish((x, weight, options), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_forward(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution, Tensor};

    fn largest_difference(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Output and both gradients equal burn's `conv2d` differentiated by its own autodiff, for
    /// the shapes iresnet uses (3×3 stride 1 and 2, 1×1 stride 2); and an input that needs no
    /// gradient (the images) gets none while the weight's is still right.
    #[test]
    fn equals_burns_conv2d_forward_and_backward() {
        let device = Device::flex().autodiff();
        device.seed(11);
        for (kernel, stride, pad) in [(3, 1, 1), (3, 2, 1), (1, 2, 0)] {
            let x = Tensor::<4>::random([2, 4, 9, 10], Distribution::Normal(0.0, 1.0), &device);
            let w = Tensor::<4>::random(
                [6, 4, kernel, kernel],
                Distribution::Normal(0.0, 0.5),
                &device,
            );
            let options = ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1);
            let out_side = |side: usize| (side + 2 * pad - kernel) / stride + 1;
            let upstream = Tensor::<4>::random(
                [2, 6, out_side(9), out_side(10)],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |ours: bool, x_needs_grad: bool| {
                let x = if x_needs_grad {
                    x.clone().require_grad()
                } else {
                    x.clone()
                };
                let w = w.clone().require_grad();
                let y = if ours {
                    super::conv2d(x.clone(), w.clone(), options.clone())
                } else {
                    burn_conv2d(x.clone(), w.clone(), None, options.clone())
                };
                let grads = (y.clone() * upstream.clone()).sum().backward();
                (y.inner(), x.grad(&grads), w.grad(&grads).unwrap())
            };
            let (y, gx, gw) = run(true, true);
            let (y0, gx0, gw0) = run(false, true);
            let case = format!("kernel {kernel} stride {stride}");
            assert!(largest_difference(y, y0) < 1e-5, "{case}: output");
            let (gx, gx0) = (gx.unwrap(), gx0.unwrap());
            assert!(gx0.clone().abs().max().into_scalar::<f32>() > 0.1);
            assert!(largest_difference(gx, gx0) < 1e-4, "{case}: input gradient");
            assert!(
                largest_difference(gw.clone(), gw0) < 1e-3,
                "{case}: weight gradient"
            );
            let (_, no_gx, gw_alone) = run(true, false);
            assert!(no_gx.is_none(), "{case}: an input without grad got one");
            assert!(
                largest_difference(gw_alone, gw) < 1e-6,
                "{case}: weight gradient alone"
            );
        }
    }
}
