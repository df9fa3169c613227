//! The fully connected layer (`../linear.rs`) on burn's CPU backend: crates/cpu-kernels's
//! linear kernels on f32 tensors, burn's arithmetic on anything else.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Flex, TensorMetadata};
use burn_flex::FlexTensor;

use super::super::linear::{
    LinearGradients, LinearKernels, LinearOp, composed_backward, composed_forward,
};
use super::{f32_contiguous, tensor, values};
use arcface_cpu_kernels::linear;

/// (m, in, out) of rows `x` [m, in] through `weight` [in, out].
fn sizes(x: &FlexTensor, weight: &FlexTensor) -> (usize, usize, usize) {
    let [m, k] = x.shape().dims::<2>();
    let [_, n] = weight.shape().dims::<2>();
    (m, k, n)
}

impl LinearKernels for Flex {
    fn linear_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        // Some(None): no bias to add; None: a bias our kernel cannot take.
        let bias_f32 = match &bias {
            None => Some(None),
            Some(bias) => f32_contiguous(bias).map(Some),
        };
        match (f32_contiguous(&x), f32_contiguous(&weight), bias_f32) {
            (Some(xc), Some(wc), Some(bc)) => {
                let (m, k, n) = sizes(&xc, &wc);
                let bias = bc.as_ref().map(values);
                tensor(
                    linear::forward(values(&xc), values(&wc), bias, (m, k, n)),
                    &[m, n],
                )
            }
            _ => composed_forward::<Self>(x, weight, bias),
        }
    }

    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        bias: bool,
    ) -> LinearGradients<Self> {
        match (
            f32_contiguous(&x),
            f32_contiguous(&weight),
            f32_contiguous(&grad),
        ) {
            (Some(xc), Some(wc), Some(gc)) => {
                let (m, k, n) = sizes(&xc, &wc);
                let (dx, dw, db) =
                    linear::backward(values(&xc), values(&wc), values(&gc), (m, k, n), bias);
                (
                    tensor(dx, &[m, k]),
                    tensor(dw, &[k, n]),
                    db.map(|db| tensor(db, &[n])),
                )
            }
            _ => composed_backward::<Self>(x, weight, grad, bias),
        }
    }
}

/// Our kernel outside autodiff too: the values of the training forward, which a recomputed
/// ViT block (`using_checkpoint`) must reproduce exactly.
impl LinearOp for Flex {
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
