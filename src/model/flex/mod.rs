//! Our training operations (convolution, BatchNorm, PReLU, attention, ReLU6, the Linear layer)
//! on burn's CPU backend, Flex, the one the README's commands and the tests train on: the f32
//! kernels of crates/cpu-kernels, plugged into the operations that `conv.rs`, `batch_norm/`,
//! `prelu.rs`, `attention.rs`, `relu6.rs` and `linear.rs` of the parent folder define with their
//! backwards (other types take burn's arithmetic; the Linear layer's are in `linear.rs` here).
//! Their effect is measured in docs/HISTORY.md, "CPU training".

mod linear;
#[cfg(test)]
mod tests;

use burn::backend::tensor::FloatTensor;
use burn::backend::{DType, Flex, TensorMetadata};
use burn::tensor::TensorData;
use burn::tensor::ops::ConvOptions;
use burn_flex::FlexTensor;

use super::attention::{AttentionKernels, AttentionOp};
use super::batch_norm::{
    BatchNormKernels, BatchNormOp, Saved, cast_to,
    composed_backward as batch_norm_composed_backward, composed_eval, composed_forward, train_op,
    unbiased_factor,
};
use super::conv::{Conv2dKernels, Conv2dOp};
use super::prelu::{
    PReluKernels, PReluOp, composed_backward as prelu_composed_backward,
    composed_forward as prelu_composed_forward,
};
use super::relu6::{Relu6Kernels, Relu6Op};
use arcface_cpu_kernels::batch_norm::{self, Layout};
use arcface_cpu_kernels::{attention, conv, prelu, relu6};

/// `t` contiguous when it holds f32 (a view of it when it already is; a copy otherwise).
fn f32_contiguous(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

/// The values of a tensor [`f32_contiguous`] returned.
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("f32_contiguous gives contiguous f32 tensors")
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// The input and weight of a convolution these kernels take, with its geometry.
fn convolution(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<(conv::Geometry, FlexTensor, FlexTensor)> {
    let (xs, ws) = (x.shape(), weight.shape());
    if xs.num_dims() != 4 || ws.num_dims() != 4 {
        return None;
    }
    let options = conv::Options {
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
        groups: options.groups,
    };
    let geometry = conv::Geometry::new(xs.dims(), ws.dims(), &options)?;
    Some((geometry, f32_contiguous(x)?, f32_contiguous(weight)?))
}

impl Conv2dKernels for Flex {
    fn conv2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let Some((g, xc, wc)) = convolution(&x, &weight, &options) else {
            return super::conv::burn_forward::<Self>(x, weight, options);
        };
        let out = conv::forward(&g, values(&xc), values(&wc));
        tensor(out, &[g.batch, g.channels_out, g.out_height, g.out_width])
    }

    fn conv2d_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
        want_x: bool,
        want_weight: bool,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let prepared = convolution(&x, &weight, &options)
            .and_then(|(g, xc, wc)| Some((g, xc, wc, f32_contiguous(&grad)?)));
        let Some((g, xc, wc, gc)) = prepared else {
            return super::conv::separate_gradients::<Self>(
                x,
                weight,
                grad,
                options,
                want_x,
                want_weight,
            );
        };
        let (dx, dw) = conv::gradients(
            &g,
            values(&xc),
            values(&wc),
            values(&gc),
            want_x,
            want_weight,
        );
        (
            dx.map(|dx| tensor(dx, x.shape().as_slice())),
            dw.map(|dw| tensor(dw, weight.shape().as_slice())),
        )
    }
}

impl Conv2dOp for Flex {
    fn conv2d_op(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_forward(x, weight, options)
    }
}

/// `running` moved towards `batch` as PyTorch's BatchNorm moves it.
fn moved(running: &FlexTensor, batch: &[f32], momentum: f64, factor: f64) -> Option<FlexTensor> {
    let running = f32_contiguous(running)?;
    let new = values(&running)
        .iter()
        .zip(batch)
        .map(|(&r, &b)| ((1.0 - momentum) * r as f64 + momentum * factor * b as f64) as f32)
        .collect();
    Some(tensor(new, &[batch.len()]))
}

/// `t` as contiguous f32 for the BatchNorm kernels: bf16 activations and gradients
/// (Precision::Bf16) are cast up to their f32 parameters' type, as LibTorch computes them.
/// (PReLU's kernels take f32 only; bf16 activations keep burn's arithmetic there.)
fn at_f32(t: &FlexTensor) -> Option<FlexTensor> {
    match t.dtype() {
        DType::F32 => Some(t.to_contiguous()),
        DType::BF16 => f32_contiguous(&cast_to::<Flex>(t.clone(), DType::F32)),
        _ => None,
    }
}

impl BatchNormKernels for Flex {
    fn batch_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        momentum: f64,
        epsilon: f64,
    ) -> (
        FloatTensor<Self>,
        Saved<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let shape = x.shape();
        let kernels = (|| {
            let (xc, g, b) = (at_f32(&x)?, f32_contiguous(&gamma)?, f32_contiguous(&beta)?);
            let layout = Layout::of(shape.as_slice());
            let (mean, var) = batch_norm::statistics(layout, values(&xc));
            let samples = layout.batch * layout.plane;
            let factor = unbiased_factor(samples);
            let new_mean = moved(&running_mean, &mean, momentum, 1.0)?;
            let new_var = moved(&running_var, &var, momentum, factor)?;
            let out = batch_norm::normalize(
                layout,
                values(&xc),
                values(&g),
                values(&b),
                (&mean, &var),
                epsilon,
            );
            let channels = [layout.channels];
            let saved = Saved {
                mean: tensor(mean, &channels),
                spread: tensor(var, &channels),
            };
            let out = cast_to::<Flex>(tensor(out, &shape), x.dtype());
            Some((out, saved, new_mean, new_var))
        })();
        kernels.unwrap_or_else(|| {
            composed_forward::<Self>(x, gamma, beta, running_mean, running_var, momentum, epsilon)
        })
    }

    fn batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        saved: Saved<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape();
        let kernels = (|| {
            let (xc, g, dy) = (at_f32(&x)?, f32_contiguous(&gamma)?, at_f32(&grad)?);
            let (mean, var) = (f32_contiguous(&saved.mean)?, f32_contiguous(&saved.spread)?);
            let layout = Layout::of(shape.as_slice());
            let (dx, dgamma, dbeta) = batch_norm::backward(
                layout,
                values(&xc),
                values(&g),
                (values(&mean), values(&var)),
                epsilon,
                values(&dy),
            );
            let channels = [layout.channels];
            let dx = cast_to::<Flex>(tensor(dx, &shape), x.dtype());
            Some((dx, tensor(dgamma, &channels), tensor(dbeta, &channels)))
        })();
        kernels
            .unwrap_or_else(|| batch_norm_composed_backward::<Self>(x, gamma, saved, epsilon, grad))
    }
}

impl BatchNormOp for Flex {
    fn batch_norm_eval_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let kernel = (|| {
            let (xc, g, b) = (at_f32(&x)?, f32_contiguous(&gamma)?, f32_contiguous(&beta)?);
            let (m, v) = (f32_contiguous(&mean)?, f32_contiguous(&var)?);
            let layout = Layout::of(shape.as_slice());
            let out = batch_norm::normalize(
                layout,
                values(&xc),
                values(&g),
                values(&b),
                (values(&m), values(&v)),
                epsilon,
            );
            Some(cast_to::<Flex>(tensor(out, &shape), x.dtype()))
        })();
        kernel.unwrap_or_else(|| composed_eval::<Self>(x, gamma, beta, mean, var, epsilon))
    }

    fn batch_norm_train_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        momentum: f64,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        train_op::<Self>(x, gamma, beta, running_mean, running_var, momentum, epsilon)
    }
}

impl PReluKernels for Flex {
    fn prelu_forward(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape();
        let kernel = (|| {
            let (xc, a) = (f32_contiguous(&x)?, f32_contiguous(&alpha)?);
            let out = prelu::forward(Layout::of(shape.as_slice()), values(&xc), values(&a));
            Some(tensor(out, &shape))
        })();
        kernel.unwrap_or_else(|| prelu_composed_forward::<Self>(x, alpha))
    }

    fn prelu_backward(
        x: FloatTensor<Self>,
        alpha: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let shape = x.shape();
        let kernel = (|| {
            let (xc, a, dy) = (
                f32_contiguous(&x)?,
                f32_contiguous(&alpha)?,
                f32_contiguous(&grad)?,
            );
            let layout = Layout::of(shape.as_slice());
            let (dx, da) = prelu::backward(layout, values(&xc), values(&a), values(&dy));
            Some((tensor(dx, &shape), tensor(da, &[layout.channels])))
        })();
        kernel.unwrap_or_else(|| prelu_composed_backward::<Self>(x, alpha, grad))
    }
}

impl PReluOp for Flex {
    fn prelu_op(x: FloatTensor<Self>, alpha: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::prelu_forward(x, alpha)
    }
}

/// qkv [N, T, 3·D] for `heads` as the kernels' shape and contiguous f32 values.
fn attention_input(qkv: &FlexTensor, heads: usize) -> Option<(attention::Shape, FlexTensor)> {
    let &[images, tokens, three_d] = qkv.shape().as_slice() else {
        return None;
    };
    if heads == 0 || three_d % (3 * heads) != 0 {
        return None;
    }
    let shape = attention::Shape {
        images,
        heads,
        tokens,
        width: three_d / 3 / heads,
    };
    Some((shape, f32_contiguous(qkv)?))
}

impl AttentionKernels for Flex {
    /// qkv and the probabilities.
    type Saved = (FloatTensor<Self>, FloatTensor<Self>);

    fn attention_forward(
        qkv: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> (FloatTensor<Self>, Self::Saved) {
        let Some((shape, packed)) = attention_input(&qkv, heads) else {
            let (out, probs) =
                super::attention::composed_forward::<Self>(qkv.clone(), heads, scale);
            return (out, (qkv, probs));
        };
        let (out, probs) = attention::forward(shape, values(&packed), scale as f32);
        let (n, t) = (shape.images, shape.tokens);
        (
            tensor(out, &[n, t, heads * shape.width]),
            (qkv, tensor(probs, &[n, heads, t, t])),
        )
    }

    fn attention_backward(
        (qkv, probs): Self::Saved,
        grad: FloatTensor<Self>,
        heads: usize,
        scale: f64,
    ) -> FloatTensor<Self> {
        let prepared = attention_input(&qkv, heads)
            .and_then(|input| Some((input, f32_contiguous(&probs)?, f32_contiguous(&grad)?)));
        let Some(((shape, packed), pc, gc)) = prepared else {
            return super::attention::composed_backward::<Self>(qkv, probs, grad, heads, scale);
        };
        let dqkv = attention::backward(
            shape,
            values(&packed),
            values(&pc),
            values(&gc),
            scale as f32,
        );
        tensor(dqkv, qkv.shape().as_slice())
    }
}

impl AttentionOp for Flex {
    /// Our kernel outside autodiff too (its probabilities dropped): the values of the training
    /// forward, which a recomputed block (`using_checkpoint`) must reproduce exactly.
    fn attention_op(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        <Self as AttentionKernels>::attention_forward(qkv, heads, scale).0
    }
}

impl Relu6Kernels for Flex {
    fn relu6_forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match f32_contiguous(&x) {
            Some(xc) => tensor(relu6::forward(values(&xc)), x.shape().as_slice()),
            None => super::relu6::composed_forward::<Self>(x),
        }
    }

    fn relu6_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        match (f32_contiguous(&x), f32_contiguous(&grad)) {
            (Some(xc), Some(gc)) => tensor(
                relu6::backward(values(&xc), values(&gc)),
                x.shape().as_slice(),
            ),
            _ => super::relu6::composed_backward::<Self>(x, grad),
        }
    }
}

impl Relu6Op for Flex {
    fn relu6_op(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::relu6_forward(x)
    }
}
