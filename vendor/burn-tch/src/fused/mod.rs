//! arcface's addition to burn-tch: convolution gradients and BatchNorm (forward statistics and
//! backward) by libtorch's own kernels (cuDNN / native CUDA on a GPU), through burn 0.22's
//! backend hooks `conv2d_x_backward`, `conv2d_weight_backward`, `batch_norm` (inference),
//! `batch_norm_train` and `batch_norm_train_backward`, which upstream burn-tch leaves to burn's generic compositions
//! (a 112×112-"kernel" convolution for every weight gradient, a dozen elementwise kernels per
//! BatchNorm each way).
//!
//! `ARCFACE_TCH_GENERIC=1` switches back to burn's compositions, for A/B measurements in one
//! binary and as an escape hatch.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

pub mod composed;
pub mod generic;
mod optim;
pub mod profiler;

pub use optim::{AdamWStep, SgdStep, adamw_in_place, sgd_in_place};

use burn_backend::ops::ConvOptions;

use crate::TchTensor;

/// Whether the libtorch kernels are used (compiled in, and not switched off).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        cfg!(fused_ops) && std::env::var_os("ARCFACE_TCH_GENERIC").is_none_or(|v| v == "0")
    })
}

/// Peak bytes (allocated, reserved) of libtorch's CUDA caching allocator on GPU `device` since
/// the last [`reset_cuda_memory_peaks`]: what `torch.cuda.max_memory_allocated` and
/// `max_memory_reserved` report. Err where there is no CUDA allocator (or no shim).
pub fn cuda_memory_peaks(device: usize) -> Result<(u64, u64), String> {
    cuda_memory_call(device, false)
}

/// Starts [`cuda_memory_peaks`] over from what is allocated now
/// (`torch.cuda.reset_peak_memory_stats`).
pub fn reset_cuda_memory_peaks(device: usize) -> Result<(), String> {
    cuda_memory_call(device, true).map(|_| ())
}

fn cuda_memory_call(device: usize, reset: bool) -> Result<(u64, u64), String> {
    #[cfg(fused_ops)]
    {
        let (mut allocated, mut reserved) = (0i64, 0i64);
        let error = unsafe {
            ffi::arcface_cuda_memory_peaks(
                device as i64,
                c_int::from(reset),
                &mut allocated,
                &mut reserved,
            )
        };
        ffi::take_error(error, "CUDA allocator statistics")?;
        Ok((allocated.max(0) as u64, reserved.max(0) as u64))
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (device, reset);
        Err("libtorch's shim is not built in".into())
    }
}

/// Whether libtorch's CPU convolutions may use oneDNN (`torch.backends.mkldnn.enabled`; on by
/// default). Without the shim compiled in: false, nothing to switch.
pub fn mkldnn_enabled() -> bool {
    #[cfg(fused_ops)]
    {
        unsafe { ffi::arcface_mkldnn_enabled() != 0 }
    }
    #[cfg(not(fused_ops))]
    {
        false
    }
}

/// Switches oneDNN for libtorch's CPU convolutions on or off, process-wide (as
/// `torch.backends.mkldnn.enabled = on`); a no-op without the shim.
pub fn set_mkldnn_enabled(on: bool) {
    #[cfg(fused_ops)]
    unsafe {
        ffi::arcface_set_mkldnn_enabled(c_int::from(on))
    };
    #[cfg(not(fused_ops))]
    let _ = on;
}

#[cfg(fused_ops)]
pub(crate) mod ffi {
    use super::*;
    use torch_sys::C_tensor;

    unsafe extern "C" {
        pub fn arcface_free_error(message: *mut c_char);
        pub fn arcface_cuda_memory_peaks(
            device: i64,
            reset: c_int,
            allocated: *mut i64,
            reserved: *mut i64,
        ) -> *mut c_char;
        pub fn arcface_set_mkldnn_enabled(on: c_int);
        pub fn arcface_mkldnn_enabled() -> c_int;
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
        pub fn arcface_fused_sgd(
            params: *const *const C_tensor,
            grads: *const *const C_tensor,
            buffers: *const *const C_tensor,
            count: i64,
            weight_decay: f64,
            momentum: f64,
            lr: f64,
            grad_scale: f64,
            is_first_step: c_int,
        ) -> *mut c_char;
        pub fn arcface_fused_adamw(
            params: *const *const C_tensor,
            grads: *const *const C_tensor,
            exp_avgs: *const *const C_tensor,
            exp_avg_sqs: *const *const C_tensor,
            count: i64,
            lr: f64,
            beta1: f64,
            beta2: f64,
            weight_decay: f64,
            eps: f64,
            step: f64,
            grad_scale: f64,
        ) -> *mut c_char;
    }

    /// The C++ side's result (fused_ops.cpp, profiler.cpp): Ok for a null pointer, else
    /// libtorch's message, prefixed with `what`, and the C string freed.
    pub fn take_error(error: *mut c_char, what: &str) -> Result<(), String> {
        if error.is_null() {
            return Ok(());
        }
        let text = unsafe { CStr::from_ptr(error) }
            .to_string_lossy()
            .into_owned();
        unsafe { arcface_free_error(error) };
        Err(format!("libtorch {what}: {text}"))
    }

    /// Panics with libtorch's message, as tch's own wrappers do.
    pub fn check(error: *mut c_char, what: &str) {
        if let Err(message) = take_error(error, what) {
            panic!("{message}");
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
    let want_input = which == ConvGrad::Input;
    let (grad_input, grad_weight) =
        conv2d_gradients(x, weight, output_grad, options, want_input, !want_input)?;
    if want_input { grad_input } else { grad_weight }
}

/// The input and weight gradients of a 2-D convolution (those wanted) by one call of libtorch's
/// `convolution_backward`, as PyTorch's autograd takes them: one dispatch instead of two. None
/// where the options are outside what it takes (asymmetric padding) or the kernels are off.
pub fn conv2d_gradients(
    x: &TchTensor,
    weight: &TchTensor,
    output_grad: &TchTensor,
    options: &ConvOptions<2>,
    want_input: bool,
    want_weight: bool,
) -> Option<(Option<TchTensor>, Option<TchTensor>)> {
    if !enabled() || options.padding.iter().any(|(begin, end)| begin != end) {
        return None;
    }
    if !(want_input || want_weight) {
        return Some((None, None));
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
                want_input as c_int,
                want_weight as c_int,
                &mut grad_input,
                &mut grad_weight,
            )
        };
        ffi::check(error, "convolution_backward");
        let take = |wanted: bool, tensor| {
            wanted.then(|| TchTensor::new(unsafe { tch::Tensor::from_ptr(tensor) }))
        };
        Some((take(want_input, grad_input), take(want_weight, grad_weight)))
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (x, weight, output_grad);
        None
    }
}

/// BatchNorm with given statistics (inference) by libtorch's `batch_norm`: one kernel (cuDNN's
/// on a GPU) where burn's composition runs four passes over the activations.
pub fn batch_norm_inference(
    x: &TchTensor,
    gamma: &TchTensor,
    beta: &TchTensor,
    mean: &TchTensor,
    variance: &TchTensor,
    epsilon: f64,
) -> Option<TchTensor> {
    if !enabled() {
        return None;
    }
    Some(TchTensor::new(tch::Tensor::batch_norm(
        &x.tensor,
        Some(&gamma.tensor),
        Some(&beta.tensor),
        Some(&mean.tensor),
        Some(&variance.tensor),
        false,
        0.0,
        epsilon,
        true,
    )))
}

/// Where PyTorch's `batch_norm` picks cuDNN in training, and so do we: CUDA, fp32 (PyTorch
/// takes native kernels for bf16), NCHW-contiguous. One kernel each way where native runs three
/// forward: measured on an H200, r100 batch 128, BatchNorm 55 ms of GPU time per step native
/// and 34 ms through cuDNN (docs/PERFORMANCE.md).
fn uses_cudnn_batch_norm(x: &TchTensor) -> bool {
    x.tensor.device().is_cuda()
        && x.tensor.kind() == tch::Kind::Float
        && x.tensor.dim() >= 3
        && x.tensor.is_contiguous()
        && tch::Cuda::cudnn_is_available()
}

/// BatchNorm with batch statistics by libtorch's kernels (cuDNN's or `native_batch_norm`): (output, mean, biased
/// variance), as burn's `batch_norm_train` returns them.
pub fn batch_norm_train(
    x: &TchTensor,
    gamma: &TchTensor,
    beta: &TchTensor,
    epsilon: f64,
) -> Option<(TchTensor, TchTensor, TchTensor)> {
    let (output, mean, invstd) = batch_norm_statistics(x, gamma, beta, None, epsilon)?;
    // Both kernels keep 1/√(var + ε); burn's callers want the variance itself.
    // (Clamped: for a constant channel rounding can leave a tiny negative.)
    let variance = (invstd.square().reciprocal() - epsilon).clamp_min(0.0);
    Some((
        TchTensor::new(output),
        TchTensor::new(mean),
        TchTensor::new(variance),
    ))
}

/// Running statistics for [`batch_norm_statistics`] to update in place, as PyTorch's
/// `BatchNorm` does inside the same kernel: `stat ← (1 − momentum)·stat + momentum·batch`,
/// with the unbiased batch variance.
pub struct RunningStats<'a> {
    /// Running mean, [C], updated in place.
    pub mean: &'a tch::Tensor,
    /// Running (unbiased) variance, [C], updated in place.
    pub var: &'a tch::Tensor,
    /// The batch's weight in the update.
    pub momentum: f64,
}

/// BatchNorm with batch statistics by libtorch's kernels (cuDNN's where PyTorch would take
/// them, else `native_batch_norm`): (output, batch mean, 1/√(biased variance + ε)), the pair
/// [`batch_norm_backward`] takes. `running`, when given, is updated in place.
pub fn batch_norm_statistics(
    x: &TchTensor,
    gamma: &TchTensor,
    beta: &TchTensor,
    running: Option<RunningStats<'_>>,
    epsilon: f64,
) -> Option<(tch::Tensor, tch::Tensor, tch::Tensor)> {
    if !enabled() {
        return None;
    }
    let (running_mean, running_var, momentum) = match &running {
        Some(r) => (Some(r.mean), Some(r.var), r.momentum),
        None => (None, None, 0.0),
    };
    let cudnn = if uses_cudnn_batch_norm(x) {
        x.tensor
            .f_cudnn_batch_norm(
                &gamma.tensor,
                Some(&beta.tensor),
                running_mean,
                running_var,
                true,
                momentum,
                epsilon,
            )
            .ok()
            .map(|(output, mean, invstd, _reserve)| (output, mean, invstd))
    } else {
        None
    };
    Some(cudnn.unwrap_or_else(|| {
        x.tensor.native_batch_norm(
            Some(&gamma.tensor),
            Some(&beta.tensor),
            running_mean,
            running_var,
            true,
            momentum,
            epsilon,
        )
    }))
}

/// Gradients of [`batch_norm_train`] (input, γ, β) by libtorch's kernels (cuDNN's or
/// `native_batch_norm_backward`).
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
    let invstd = (&variance.tensor + epsilon).rsqrt();
    batch_norm_backward(x, gamma, &mean.tensor, &invstd, epsilon, output_grad)
}

/// Gradients (input, γ, β) of [`batch_norm_statistics`] from the mean and 1/√(var + ε) it
/// returned, by cuDNN's or `native_batch_norm_backward`.
pub fn batch_norm_backward(
    x: &TchTensor,
    gamma: &TchTensor,
    mean: &tch::Tensor,
    invstd: &tch::Tensor,
    epsilon: f64,
    output_grad: &TchTensor,
) -> Option<(TchTensor, TchTensor, TchTensor)> {
    if !enabled() {
        return None;
    }
    if uses_cudnn_batch_norm(x) {
        // cuDNN's normal (not persistent) spatial mode, PyTorch's for NCHW, needs no reserve
        // space from the forward pass; should this cuDNN want one, native's kernel below
        // computes the same gradients.
        let reserve = tch::Tensor::empty([0], (tch::Kind::Uint8, x.tensor.device()));
        if let Ok((gi, gw, gb)) = x.tensor.f_cudnn_batch_norm_backward(
            &output_grad.tensor,
            &gamma.tensor,
            None::<&tch::Tensor>,
            None::<&tch::Tensor>,
            Some(mean),
            Some(invstd),
            epsilon,
            &reserve,
        ) {
            return Some((TchTensor::new(gi), TchTensor::new(gw), TchTensor::new(gb)));
        }
    }
    #[cfg(fused_ops)]
    {
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
                mean.as_ptr(),
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
        let _ = (x, gamma, mean, invstd, epsilon, output_grad);
        None
    }
}
