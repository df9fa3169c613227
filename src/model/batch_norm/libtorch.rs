//! The LibTorch kernels: libtorch's own BatchNorm (cuDNN's or native), running statistics
//! updated inside.

use burn::backend::LibTorch;
use burn::backend::tensor::FloatTensor;
use burn_tch::TchTensor;
use burn_tch::fused::{self, RunningStats};

use super::{BatchNormKernels, BatchNormOp, Saved};

// With ARCFACE_TCH_GENERIC=1 (libtorch's kernels off, for A/B runs) the defaults: burn's
// arithmetic.
impl BatchNormKernels for LibTorch {
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
        if !fused::enabled() {
            return super::composed_forward::<Self>(
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                momentum,
                epsilon,
            );
        }
        // The kernels update the statistics in place; the tensors given may share their
        // storage with what a checkpoint or another replica still reads, so they update
        // copies: one launch each (tch's `copy` would zero-fill first), against burn's
        // dozen.
        let copy = |t: &tch::Tensor| {
            let mut c = t.empty_like();
            c.copy_(t);
            c
        };
        let (mean, var) = (copy(&running_mean.tensor), copy(&running_var.tensor));
        let running = RunningStats {
            mean: &mean,
            var: &var,
            momentum,
        };
        let (output, batch_mean, invstd) =
            fused::batch_norm_statistics(&x, &gamma, &beta, Some(running), epsilon)
                .expect("libtorch's BatchNorm kernels are enabled");
        let saved = Saved {
            mean: TchTensor::new(batch_mean),
            spread: TchTensor::new(invstd),
        };
        (
            TchTensor::new(output),
            saved,
            TchTensor::new(mean),
            TchTensor::new(var),
        )
    }

    fn batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        saved: Saved<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !fused::enabled() {
            return super::composed_backward::<Self>(x, gamma, saved, epsilon, grad);
        }
        fused::batch_norm_backward(
            &x,
            &gamma,
            &saved.mean.tensor,
            &saved.spread.tensor,
            epsilon,
            &grad,
        )
        .expect("libtorch's BatchNorm kernels are enabled")
    }
}

impl BatchNormOp for LibTorch {
    fn batch_norm_eval_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        match fused::batch_norm_inference(&x, &gamma, &beta, &mean, &var, epsilon) {
            Some(output) => output,
            None => super::composed_eval::<Self>(x, gamma, beta, mean, var, epsilon),
        }
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
        super::train_op::<Self>(x, gamma, beta, running_mean, running_var, momentum, epsilon)
    }
}
