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
        // The kernels update the statistics in place. A tensor this call alone holds
        // (`forward` takes them out of the layer) is updated where it lies, as PyTorch's
        // are; one that is shared (a `valid()` copy of the model still reads it) is copied
        // first: one launch (tch's `copy` would zero-fill first).
        let own = |t: TchTensor| {
            if t.can_mut() {
                return t;
            }
            let mut c = t.tensor.empty_like();
            c.copy_(&t.tensor);
            TchTensor::new(c)
        };
        let (mean, var) = (own(running_mean), own(running_var));
        let running = RunningStats {
            mean: &mean.tensor,
            var: &var.tensor,
            momentum,
        };
        let (output, batch_mean, invstd) =
            fused::batch_norm_statistics(&x, &gamma, &beta, Some(running), epsilon)
                .expect("libtorch's BatchNorm kernels are enabled");
        let saved = Saved {
            mean: TchTensor::new(batch_mean),
            spread: TchTensor::new(invstd),
        };
        (TchTensor::new(output), saved, mean, var)
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
