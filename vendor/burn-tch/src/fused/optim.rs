//! Optimiser steps over many parameters at once, in place, by libtorch's fused multi-tensor
//! kernels (`torch.optim.SGD(fused=True)`, `torch.optim.AdamW(fused=True)`): a handful of
//! launches for a whole model where one parameter at a time costs six to a dozen elementwise
//! kernels each (~2,800 launches per r100 SGD step, which left the GPU idle while the CPU queued
//! them: docs/HISTORY.md).

#[cfg(fused_ops)]
use std::ffi::c_int;

#[cfg(fused_ops)]
use super::ffi;
use super::enabled;
use crate::TchTensor;

/// The C++ side's view of a list of tensors.
#[cfg(fused_ops)]
fn pointers(list: &[TchTensor]) -> Vec<*const torch_sys::C_tensor> {
    list.iter().map(|t| t.tensor.as_ptr() as *const _).collect()
}

/// The settings of one [`sgd_in_place`] call.
pub struct SgdStep {
    /// λ.
    pub weight_decay: f64,
    /// μ (0: no buffers).
    pub momentum: f64,
    /// The learning rate.
    pub lr: f64,
    /// s, multiplying the gradients first (gradient clipping).
    pub grad_scale: f64,
    /// Each buffer becomes its first s·g + λ·w instead of being read.
    pub is_first_step: bool,
}

/// One SGD step (PyTorch's: buf = μ·buf + (s·g + λ·w), w −= lr·buf; dampening 0, no Nesterov)
/// over many parameters at once, **in place**, by libtorch's fused multi-tensor kernel. `params`
/// are updated where they are stored, as `torch.optim.SGD` updates a module's parameters;
/// `buffers` (flat, one per parameter, ignored when μ = 0) likewise. Err where the kernels are
/// off or libtorch refuses the call (then nothing was written).
pub fn sgd_in_place(
    params: &[TchTensor],
    grads: &[TchTensor],
    buffers: &[TchTensor],
    step: &SgdStep,
) -> Result<(), String> {
    if !enabled() {
        return Err("libtorch's kernels are off (ARCFACE_TCH_GENERIC)".into());
    }
    if grads.len() != params.len() || (step.momentum != 0.0 && buffers.len() != params.len()) {
        return Err(format!(
            "{} parameters, {} gradients, {} momentum buffers",
            params.len(),
            grads.len(),
            buffers.len()
        ));
    }
    #[cfg(fused_ops)]
    {
        let (p, g, b) = (pointers(params), pointers(grads), pointers(buffers));
        let error = unsafe {
            ffi::arcface_fused_sgd(
                p.as_ptr(),
                g.as_ptr(),
                if step.momentum != 0.0 { b.as_ptr() } else { std::ptr::null() },
                params.len() as i64,
                step.weight_decay,
                step.momentum,
                step.lr,
                step.grad_scale,
                step.is_first_step as c_int,
            )
        };
        ffi::take_error(error, "_fused_sgd_")
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (params, grads, buffers, step);
        Err("built without the libtorch headers".into())
    }
}

/// The settings of one [`adamw_in_place`] call.
pub struct AdamWStep {
    /// The learning rate.
    pub lr: f64,
    /// (β1, β2).
    pub betas: (f64, f64),
    /// λ, decoupled: w ← w·(1 − lr·λ).
    pub weight_decay: f64,
    /// ε.
    pub eps: f64,
    /// t, 1 for the first update: the bias corrections 1 − β^t.
    pub step: u64,
    /// s, multiplying the gradients first (gradient clipping).
    pub grad_scale: f64,
}

/// One AdamW step (PyTorch's `torch.optim.AdamW`, amsgrad off) over many parameters at once,
/// **in place**, by libtorch's fused kernel (`_fused_adamw_`, CUDA and CPU): the parameters and
/// the moments `exp_avgs`, `exp_avg_sqs` (flat, one each per parameter; zeros before the first
/// step, where the update is the same as from none) updated where they are stored. Err where
/// the kernels are off or libtorch refuses the call (then nothing was written).
pub fn adamw_in_place(
    params: &[TchTensor],
    grads: &[TchTensor],
    exp_avgs: &[TchTensor],
    exp_avg_sqs: &[TchTensor],
    step: &AdamWStep,
) -> Result<(), String> {
    if !enabled() {
        return Err("libtorch's kernels are off (ARCFACE_TCH_GENERIC)".into());
    }
    let count = params.len();
    if [grads.len(), exp_avgs.len(), exp_avg_sqs.len()] != [count; 3] {
        return Err(format!(
            "{count} parameters, {} gradients, {} and {} moments",
            grads.len(),
            exp_avgs.len(),
            exp_avg_sqs.len()
        ));
    }
    #[cfg(fused_ops)]
    {
        let (p, g) = (pointers(params), pointers(grads));
        let (m, v) = (pointers(exp_avgs), pointers(exp_avg_sqs));
        let error = unsafe {
            ffi::arcface_fused_adamw(
                p.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                count as i64,
                step.lr,
                step.betas.0,
                step.betas.1,
                step.weight_decay,
                step.eps,
                step.step as f64,
                step.grad_scale,
            )
        };
        ffi::take_error(error, "_fused_adamw_")
    }
    #[cfg(not(fused_ops))]
    {
        let _ = (params, grads, exp_avgs, exp_avg_sqs, step);
        Err("built without the libtorch headers".into())
    }
}
