//! arcface's addition to burn-tch: convolution gradients and BatchNorm (forward statistics and
//! backward) by libtorch's own kernels (cuDNN / native CUDA on a GPU), through burn 0.22's
//! backend hooks `conv2d_x_backward`, `conv2d_weight_backward`, `batch_norm_train` and
//! `batch_norm_train_backward`, which upstream burn-tch leaves to burn's generic compositions
//! (a 112×112-"kernel" convolution for every weight gradient, a dozen elementwise kernels per
//! BatchNorm each way).
//!
//! `ARCFACE_TCH_GENERIC=1` switches back to burn's compositions, for A/B measurements in one
//! binary and as an escape hatch.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

pub mod generic;

use burn_backend::ops::{BatchNormTrain, BatchNormTrainBackward, ConvOptions};
use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, Scalar, Shape, TensorMetadata};

use crate::TchTensor;

/// Whether the libtorch kernels are used (compiled in, and not switched off).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        cfg!(fused_ops) && std::env::var_os("ARCFACE_TCH_GENERIC").is_none_or(|v| v == "0")
    })
}

#[cfg(fused_ops)]
mod ffi {
    use super::*;
    use torch_sys::C_tensor;

    unsafe extern "C" {
        pub fn arcface_free_error(message: *mut c_char);
        pub fn arcface_convolution_backward(
            grad_output: *const C_tensor,
            input: *const C_tensor,
            weight: *const C_tensor,
            stride: *const i64,
            padding: *const i64,
            dilation: *const i64,
            dims: i64,
            groups: i64,
            want_input: c_int,
            want_weight: c_int,
            grad_input: *mut *mut C_tensor,
            grad_weight: *mut *mut C_tensor,
        ) -> *mut c_char;
        pub fn arcface_batch_norm_backward(
            grad_output: *const C_tensor,
            input: *const C_tensor,
            weight: *const C_tensor,
            save_mean: *const C_tensor,
            save_invstd: *const C_tensor,
            epsilon: f64,
            grad_input: *mut *mut C_tensor,
            grad_weight: *mut *mut C_tensor,
            grad_bias: *mut *mut C_tensor,
        ) -> *mut c_char;
    }

    /// Panics with libtorch's message, as tch's own wrappers do.
    pub fn check(error: *mut c_char, what: &str) {
        if !error.is_null() {
            let text = unsafe { CStr::from_ptr(error) }
                .to_string_lossy()
                .into_owned();
            unsafe { arcface_free_error(error) };
            panic!("libtorch {what}: {text}");
        }
    }
}

/// Which gradient of a convolution.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ConvGrad {
    /// With respect to the convolution's input.
    Input,
    /// With respect to its weight.
    Weight,
}

/// One gradient of a 2-D convolution by libtorch's `convolution_backward`; None where the
/// options are outside what it takes (asymmetric padding) or the kernels are off.
pub fn conv2d_backward(
    x: &TchTensor,
    weight: &TchTensor,
    output_grad: &TchTensor,
    options: &ConvOptions<2>,
    which: ConvGrad,
) -> Option<TchTensor> {
    if !enabled() || options.padding.iter().any(|(begin, end)| begin != end) {
        return None;
    }
    #[cfg(fused_ops)]
    {
        let stride = options.stride.map(|v| v as i64);
        let padding = options.padding.map(|(v, _)| v as i64);
        let dilation = options.dilation.map(|v| v as i64);
        let mut grad_input = std::ptr::null_mut();
        let mut grad_weight = std::ptr::null_mut();
        let error = unsafe {
            ffi::arcface_convolution_backward(
                output_grad.tensor.as_ptr(),
                x.tensor.as_ptr(),
                weight.tensor.as_ptr(),
                stride.as_ptr(),
                padding.as_ptr(),
                dilation.as_ptr(),
                2,
                options.groups as i64,
                (which == ConvGrad::Input) as c_int,
                (which == ConvGrad::Weight) as c_int,
                &mut grad_input,
                &mut grad_weight,
            )
        };
        ffi::check(error, "convolution_backward");
        let out = match which {
            ConvGrad::Input => grad_input,
            ConvGrad::Weight => grad_weight,
        };
        Some(TchTensor::new(unsafe { tch::Tensor::from_ptr(out) }))
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (x, weight, output_grad, which);
        None
    }
}

/// BatchNorm with batch statistics by libtorch's `native_batch_norm`: (output, mean, biased
/// variance), as burn's `batch_norm_train` returns them.
pub fn batch_norm_train(
    x: &TchTensor,
    gamma: &TchTensor,
    beta: &TchTensor,
    epsilon: f64,
) -> Option<(TchTensor, TchTensor, TchTensor)> {
    if !enabled() {
        return None;
    }
    let (output, mean, invstd) = x.tensor.native_batch_norm(
        Some(&gamma.tensor),
        Some(&beta.tensor),
        None::<&tch::Tensor>,
        None::<&tch::Tensor>,
        true,
        0.0,
        epsilon,
    );
    // native_batch_norm keeps 1/√(var + ε); burn's callers want the variance itself.
    // (Clamped: for a constant channel rounding can leave a tiny negative.)
    let variance = (invstd.square().reciprocal() - epsilon).clamp_min(0.0);
    Some((
        TchTensor::new(output),
        TchTensor::new(mean),
        TchTensor::new(variance),
    ))
}

/// Gradients of [`batch_norm_train`] (input, γ, β) by libtorch's `native_batch_norm_backward`.
pub fn batch_norm_train_backward(
    x: &TchTensor,
    gamma: &TchTensor,
    mean: &TchTensor,
    variance: &TchTensor,
    epsilon: f64,
    output_grad: &TchTensor,
) -> Option<(TchTensor, TchTensor, TchTensor)> {
    if !enabled() {
        return None;
    }
    #[cfg(fused_ops)]
    {
        let invstd = (&variance.tensor + epsilon).rsqrt();
        let (mut gi, mut gw, mut gb) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        let error = unsafe {
            ffi::arcface_batch_norm_backward(
                output_grad.tensor.as_ptr(),
                x.tensor.as_ptr(),
                gamma.tensor.as_ptr(),
                mean.tensor.as_ptr(),
                invstd.as_ptr(),
                epsilon,
                &mut gi,
                &mut gw,
                &mut gb,
            )
        };
        ffi::check(error, "native_batch_norm_backward");
        let take = |p| TchTensor::new(unsafe { tch::Tensor::from_ptr(p) });
        Some((take(gi), take(gw), take(gb)))
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (x, gamma, mean, variance, epsilon, output_grad);
        None
    }
}

// burn 0.22.1's default `batch_norm_train` / `batch_norm_train_backward` (burn-backend,
// `ModuleOps`), copied verbatim: a trait override cannot call the default it replaces, and the
// ARCFACE_TCH_GENERIC switch must give exactly burn's composition.

/// burn's default composition of `ModuleOps::batch_norm_train`.
pub fn batch_norm_train_composed<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> BatchNormTrain<B> {
    let shape = x.shape();
    let channels = shape[1];
    let samples_per_channel = shape.num_elements() / channels;
    let flattened = Shape::new([channels, samples_per_channel]);
    let mut per_channel = vec![1; shape.num_dims()];
    per_channel[1] = channels;

    // Use mean directly to avoid overflowing intermediate sums in f16.
    let mean = B::float_mean_dim(
        B::float_reshape(B::float_swap_dims(x.clone(), 0, 1), flattened.clone()),
        1,
    );
    let mean = B::float_reshape(mean, Shape::from(per_channel));
    let centered = B::float_sub(x.clone(), mean.clone());
    let variance = B::float_mean_dim(
        B::float_reshape(
            B::float_swap_dims(B::float_mul(centered.clone(), centered), 0, 1),
            flattened,
        ),
        1,
    );
    let mean = B::float_reshape(mean, Shape::new([channels]));
    let variance = B::float_reshape(variance, Shape::new([channels]));
    let output = B::batch_norm(x, gamma, beta, mean.clone(), variance.clone(), epsilon);

    BatchNormTrain::new(output, mean, variance)
}

/// burn's default composition of `ModuleOps::batch_norm_train_backward`.
pub fn batch_norm_train_backward_composed<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    output_grad: FloatTensor<B>,
) -> BatchNormTrainBackward<B> {
    let shape = x.shape();
    let rank = shape.num_dims();
    let channels = shape[1];
    let flattened = Shape::new([channels, shape.num_elements() / channels]);
    let mut per_channel = vec![1; rank];
    per_channel[1] = channels;
    let per_channel = Shape::from(per_channel);

    let inv_std = B::float_reshape(
        B::float_recip(B::float_sqrt(B::float_add_scalar(
            variance,
            Scalar::Float(epsilon),
        ))),
        per_channel.clone(),
    );
    let normalized = B::float_mul(
        B::float_sub(x, B::float_reshape(mean, per_channel.clone())),
        inv_std.clone(),
    );

    let output_grad_flat = B::float_reshape(
        B::float_swap_dims(output_grad.clone(), 0, 1),
        flattened.clone(),
    );
    let normalized_grad_flat = B::float_reshape(
        B::float_swap_dims(B::float_mul(output_grad.clone(), normalized.clone()), 0, 1),
        flattened,
    );
    let beta_grad = B::float_sum_dim(output_grad_flat.clone(), 1);
    let gamma_grad = B::float_sum_dim(normalized_grad_flat.clone(), 1);

    // Compute means independently: parameter-gradient sums can overflow in f16.
    let mean_grad =
        B::float_reshape(B::float_mean_dim(output_grad_flat, 1), per_channel.clone());
    let mean_normalized_grad = B::float_reshape(
        B::float_mean_dim(normalized_grad_flat, 1),
        per_channel.clone(),
    );
    let centred_grad = B::float_sub(output_grad, mean_grad);
    let projected = B::float_mul(normalized, mean_normalized_grad);
    let scale = B::float_mul(B::float_reshape(gamma, per_channel), inv_std);
    let x_grad = B::float_mul(scale, B::float_sub(centred_grad, projected));

    BatchNormTrainBackward::new(
        x_grad,
        B::float_reshape(gamma_grad, Shape::new([channels])),
        B::float_reshape(beta_grad, Shape::new([channels])),
    )
}
