//! A fully connected layer, y = x·W (+ b), as one differentiable operation: burn's `Linear`
//! (W is [in, out]) on rows [m, in].
//!
//! burn 0.22 composes it from a product and a broadcast addition, each with its own backward
//! (the bias's a reduction over the rows). On burn's CPU backend this operation runs our kernels
//! (crates/cpu-kernels/src/linear.rs through `src/model/flex/`: the product written into its
//! output once, the bias added in the same pass, dW summed by blocks of rows on both cores);
//! elsewhere burn's operations compose the same arithmetic.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Shape, TensorMetadata, backend_extension};
use burn::nn::Linear;
use burn::tensor::Tensor;

/// `fc.forward(x)` for rows `x` [m, in], differentiable in x, the weight and the bias.
pub fn linear(fc: &Linear, x: Tensor<2>) -> Tensor<2> {
    let weight = fc.weight.val().into_dispatch();
    let x = x.into_dispatch();
    Tensor::from_dispatch(match &fc.bias {
        Some(bias) => <Dispatch as LinearOp>::linear_bias_op(x, weight, bias.val().into_dispatch()),
        None => <Dispatch as LinearOp>::linear_op(x, weight),
    })
}

/// The operation, on each backend (and under autodiff, with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait LinearOp: Backend {
    fn linear_op(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
    fn linear_bias_op(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The gradients of a linear layer: (dx, dW, db when it has a bias).
pub type LinearGradients<B> = (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>);

/// The kernels of a concrete backend: burn's arithmetic by default (burn's CPU backend: ours,
/// `src/model/flex/`).
pub trait LinearKernels: Backend {
    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        composed_forward::<Self>(x, weight, bias)
    }

    /// The gradients for the output gradient `grad` (db only when `bias`).
    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        bias: bool,
    ) -> LinearGradients<Self> {
        composed_backward::<Self>(x, weight, grad, bias)
    }
}

/// [`LinearKernels::linear_forward`] in burn's operations (as burn's `Linear` computes it).
pub(super) fn composed_forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let y = B::float_matmul(x, weight);
    match bias {
        Some(bias) => {
            let [n] = bias.shape().dims::<1>();
            B::float_add(y, B::float_reshape(bias, Shape::new([1, n])))
        }
        None => y,
    }
}

/// [`LinearKernels::linear_backward`] in burn's operations.
pub(super) fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    bias: bool,
) -> LinearGradients<B> {
    let dx = B::float_matmul(grad.clone(), B::float_transpose(weight));
    let dw = B::float_matmul(B::float_transpose(x), grad.clone());
    let db = bias.then(|| {
        let [_, n] = grad.shape().dims::<2>();
        B::float_reshape(B::float_sum_dim(grad, 0), Shape::new([n]))
    });
    (dx, dw, db)
}

#[cfg(feature = "tch")]
mod libtorch {
    use burn::backend::LibTorch;
    use burn::backend::tensor::FloatTensor;

    use super::{LinearKernels, LinearOp};

    impl LinearKernels for LibTorch {}

    impl LinearOp for LibTorch {
        fn linear_op(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
            Self::linear_forward(x, weight, None)
        }

        fn linear_bias_op(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            bias: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            Self::linear_forward(x, weight, Some(bias))
        }
    }
}

/// The backward of a layer with `PARENTS` inputs: x and the weight (2), and the bias (3).
#[derive(Debug)]
struct LinearBackward<const PARENTS: usize>;

impl<B: Backend + LinearKernels, const PARENTS: usize> Backward<B, PARENTS>
    for LinearBackward<PARENTS>
{
    /// The input and the weight.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, PARENTS>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        let (dx, dw, db) = B::linear_backward(x, weight, grad, PARENTS == 3);
        for (parent, gradient) in ops.parents.into_iter().zip([Some(dx), Some(dw), db]) {
            if let (Some(node), Some(gradient)) = (parent, gradient) {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

impl<B: Backend + LinearKernels, C: CheckpointStrategy> LinearOp for Autodiff<B, C> {
    fn linear_op(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        match LinearBackward::<2>
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.primitive().clone(), weight.primitive().clone());
                let output = B::linear_forward(x.clone(), weight.clone(), None);
                prep.finish((x, weight), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_forward(
                x.into_primitive(),
                weight.into_primitive(),
                None,
            )),
        }
    }

    fn linear_bias_op(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match LinearBackward::<3>
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, weight) = (x.primitive().clone(), weight.primitive().clone());
                let output =
                    B::linear_forward(x.clone(), weight.clone(), Some(bias.into_primitive()));
                prep.finish((x, weight), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_forward(
                x.into_primitive(),
                weight.into_primitive(),
                Some(bias.into_primitive()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution, Tensor};

    fn largest_difference(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// The operation and its gradients (input, weight, bias) equal burn's `Linear` differentiated
    /// by autodiff part by part, with and without a bias, over more rows than one block of our
    /// kernels; without autodiff, the same forward.
    #[test]
    fn equals_burns_linear_forward_and_backward() {
        let device = Device::flex().autodiff();
        device.seed(5);
        for bias in [true, false] {
            let fc = LinearConfig::new(24, 10).with_bias(bias).init(&device);
            let x = Tensor::<2>::random([1100, 24], Distribution::Uniform(-2.0, 2.0), &device);
            let upstream =
                Tensor::<2>::random([1100, 10], Distribution::Uniform(-1.0, 1.0), &device);
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let y = if ours {
                    super::linear(&fc, x.clone())
                } else {
                    fc.forward(x.clone())
                };
                let grads = (y.clone() * upstream.clone()).sum().backward();
                let db = fc.bias.as_ref().map(|b| b.grad(&grads).unwrap());
                (
                    y.inner(),
                    x.grad(&grads).unwrap(),
                    fc.weight.grad(&grads).unwrap(),
                    db,
                )
            };
            let ((y, dx, dw, db), (y0, dx0, dw0, db0)) = (run(true), run(false));
            assert!(largest_difference(y, y0) < 1e-5, "bias {bias}: y");
            assert!(largest_difference(dx, dx0) < 1e-5, "bias {bias}: dx");
            assert!(
                largest_difference(dw.clone(), dw0) < 1e-3,
                "bias {bias}: dW"
            );
            assert!(
                dw.abs().sum().into_scalar::<f32>() > 1.0,
                "the weight has gradients"
            );
            if let (Some(db), Some(db0)) = (db, db0) {
                let diff = (db - db0).abs().max().into_scalar::<f32>();
                assert!(diff < 1e-3, "db differs by {diff}");
            }
            let plain = Device::flex();
            let fc = fc.valid();
            let xs = Tensor::<2>::from_data(x.inner().to_data(), &plain);
            let difference = largest_difference(super::linear(&fc, xs.clone()), fc.forward(xs));
            assert!(difference < 1e-5, "bias {bias}: forward without autodiff");
        }
    }
}
