//! BatchNorm in training as one differentiable operation that also moves the running
//! statistics, as PyTorch's `BatchNorm` does: forward y = γ·(x − μ_B)/√(σ²_B + ε) + β over the
//! batch's statistics, and `running ← (1 − momentum)·running + momentum·batch` with the
//! *unbiased* batch variance (n/(n − 1)·σ²_B, PyTorch's and MXNet's choice; burn 0.22's own
//! BatchNorm keeps the biased one).
//!
//! Why not burn's `BatchNorm::forward`: it gets (output, mean, variance) from the backend and
//! then updates the running statistics with six more tensor operations. On LibTorch each is a
//! kernel launch, and the variance itself is four more, since cuDNN's and libtorch's kernels
//! keep 1/√(σ² + ε) (and two more to undo that in the backward): about twelve launches per
//! layer and step, ~1,900 for r100, where PyTorch launches none: its kernels update the running
//! statistics in place while they compute the batch's. On LibTorch this operation hands the
//! running statistics to those kernels (cuDNN's `cudnn_batch_norm` where PyTorch would take it,
//! else `native_batch_norm`) and keeps 1/√(σ² + ε) for the backward; on burn's CPU backend it is
//! burn's arithmetic with the same update. Its inference path goes through [`BatchNormOp::batch_norm_eval_op`] for the bf16 activations
//! of mixed precision, which burn's own path would refuse on its CPU backend. The module and its record stay burn's
//! [`BatchNorm`], so checkpoints and ONNX export do not change.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, Flex, Scalar, TensorMetadata,
    backend_extension,
};
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// `bn.forward(x)`, with the training path through [`BatchNormOp`]: in training (an
/// autodiff device and a layer that is not frozen, burn's own rule) normalises by the batch's
/// statistics and updates `bn`'s running statistics; otherwise burn's inference path.
pub fn forward<const D: usize>(bn: &BatchNorm, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !(device.is_autodiff() && bn.training.is_enabled()) {
        return Tensor::from_dispatch(<Dispatch as BatchNormOp>::batch_norm_eval_op(
            x.into_dispatch(),
            bn.gamma.val().into_dispatch(),
            bn.beta.val().into_dispatch(),
            bn.running_mean.value().to_device(&device).into_dispatch(),
            bn.running_var.value().to_device(&device).into_dispatch(),
            bn.epsilon,
        ));
    }
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let (output, running_mean, running_var) = <Dispatch as BatchNormOp>::batch_norm_train_op(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        running_mean.into_dispatch(),
        running_var.into_dispatch(),
        bn.momentum,
        bn.epsilon,
    );
    bn.running_mean
        .update(Tensor::<1>::from_dispatch(running_mean).detach());
    bn.running_var
        .update(Tensor::<1>::from_dispatch(running_var).detach());
    Tensor::from_dispatch(output)
}

/// The operations, on each backend (and under autodiff, training with the backward below).
#[backend_extension(Flex, LibTorch: cfg(feature = "tch"), Autodiff)]
pub trait BatchNormOp: Backend {
    /// Normalised by the given (running) statistics. bf16 activations with fp32 parameters
    /// (Precision::Bf16) are computed at the parameters' precision, as PyTorch's autocast
    /// leaves BatchNorm: libtorch's kernel takes the mix as it is, elsewhere the activations
    /// are cast (by differentiable casts under autodiff: a frozen layer in a training graph).
    fn batch_norm_eval_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        composed_eval::<Self>(x, gamma, beta, mean, var, epsilon)
    }

    /// Normalised by the batch's statistics: (output, new running mean, new running
    /// variance). The running statistics given are not modified.
    fn batch_norm_train_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        momentum: f64,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// What the forward leaves for the backward: the batch mean and a second per-channel
/// statistic whose meaning each backend chooses (burn's: the biased variance; libtorch's:
/// 1/√(σ² + ε)), so that neither converts.
#[derive(Clone, Debug)]
pub struct Saved<B: Backend> {
    pub mean: FloatTensor<B>,
    pub spread: FloatTensor<B>,
}

/// The kernels of a concrete backend: burn's own arithmetic by default.
pub trait BatchNormKernels: Backend {
    /// (output, saved statistics, new running mean, new running variance).
    #[allow(clippy::type_complexity)]
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
        composed_forward::<Self>(x, gamma, beta, running_mean, running_var, momentum, epsilon)
    }

    /// (dx, dγ, dβ) for the output gradient `grad`.
    fn batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        saved: Saved<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(x, gamma, saved, epsilon, grad)
    }
}

/// [`BatchNormOp::batch_norm_eval_op`] by burn's `batch_norm`, at the parameters' precision.
fn composed_eval<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    epsilon: f64,
) -> FloatTensor<B> {
    let dtype = x.dtype();
    let x = cast_to::<B>(x, gamma.dtype());
    cast_to::<B>(B::batch_norm(x, gamma, beta, mean, var, epsilon), dtype)
}

/// [`BatchNormKernels::batch_norm_forward`] by burn's `batch_norm_train` and tensor operations.
#[allow(clippy::type_complexity)]
fn composed_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    running_mean: FloatTensor<B>,
    running_var: FloatTensor<B>,
    momentum: f64,
    epsilon: f64,
) -> (FloatTensor<B>, Saved<B>, FloatTensor<B>, FloatTensor<B>) {
    let samples = samples_per_channel(&x.shape());
    // bf16 activations (Precision::Bf16) with fp32 parameters: computed at the parameters'
    // precision, the output handed back at the activations'.
    let dtype = x.dtype();
    let x = cast_to::<B>(x, gamma.dtype());
    let mut batch = B::batch_norm_train(x, gamma, beta, epsilon);
    batch.output = cast_to::<B>(batch.output, dtype);
    let moved = |running: FloatTensor<B>, batch: FloatTensor<B>, factor: f64| {
        B::float_add(
            B::float_mul_scalar(running, Scalar::Float(1.0 - momentum)),
            B::float_mul_scalar(batch, Scalar::Float(momentum * factor)),
        )
    };
    let new_mean = moved(running_mean, batch.mean.clone(), 1.0);
    let new_var = moved(
        running_var,
        batch.variance.clone(),
        unbiased_factor(samples),
    );
    let saved = Saved {
        mean: batch.mean,
        spread: batch.variance,
    };
    (batch.output, saved, new_mean, new_var)
}

/// [`BatchNormKernels::batch_norm_backward`] by burn's `batch_norm_train_backward`
/// (`saved.spread` is the biased variance, as [`composed_forward`] leaves it).
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    saved: Saved<B>,
    epsilon: f64,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (dtype, compute) = (x.dtype(), gamma.dtype());
    let (x, grad) = (cast_to::<B>(x, compute), cast_to::<B>(grad, compute));
    let grads = B::batch_norm_train_backward(x, gamma, saved.mean, saved.spread, epsilon, grad);
    (
        cast_to::<B>(grads.x_grad, dtype),
        grads.gamma_grad,
        grads.beta_grad,
    )
}

/// `t` as `dtype` (itself when it already is).
pub(crate) fn cast_to<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype {
        t
    } else {
        B::float_cast(t, dtype.into())
    }
}

/// Values per channel: all but the channel axis.
fn samples_per_channel(shape: &burn::backend::Shape) -> usize {
    shape.num_elements() / shape[1].max(1)
}

/// n/(n − 1), the biased variance's correction (1 for a single value, where PyTorch's
/// unbiased variance is undefined and the trainer refuses such a batch anyway).
fn unbiased_factor(samples: usize) -> f64 {
    if samples > 1 {
        samples as f64 / (samples - 1) as f64
    } else {
        1.0
    }
}

impl BatchNormKernels for Flex {}

impl BatchNormOp for Flex {
    fn batch_norm_train_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        momentum: f64,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (output, _, mean, var) =
            Self::batch_norm_forward(x, gamma, beta, running_mean, running_var, momentum, epsilon);
        (output, mean, var)
    }
}

#[cfg(feature = "tch")]
mod libtorch {
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
            let (output, _, mean, var) = Self::batch_norm_forward(
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                momentum,
                epsilon,
            );
            (output, mean, var)
        }
    }
}

impl<B: Backend + BatchNormKernels, C: CheckpointStrategy> BatchNormOp for Autodiff<B, C> {
    fn batch_norm_train_op(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        momentum: f64,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct BatchNormBackward;

        impl<B: Backend + BatchNormKernels> Backward<B, 3> for BatchNormBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, Saved<B>, f64);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, saved, epsilon) = ops.state;
                let (grad_x, grad_gamma, grad_beta) =
                    B::batch_norm_backward(x, gamma, saved, epsilon, grad);
                for (node, grad) in [
                    (node_x, grad_x),
                    (node_gamma, grad_gamma),
                    (node_beta, grad_beta),
                ] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let (running_mean, running_var) =
            (running_mean.into_primitive(), running_var.into_primitive());
        match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (x, gamma) = (x.primitive().clone(), gamma.primitive().clone());
                let (output, saved, mean, var) = B::batch_norm_forward(
                    x.clone(),
                    gamma.clone(),
                    beta.into_primitive(),
                    running_mean,
                    running_var,
                    momentum,
                    epsilon,
                );
                let output = prep.finish((x, gamma, saved, epsilon), output);
                (output, Self::from_inner(mean), Self::from_inner(var))
            }
            OpsKind::UnTracked(prep) => {
                let (output, _, mean, var) = B::batch_norm_forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    running_mean,
                    running_var,
                    momentum,
                    epsilon,
                );
                (
                    prep.finish(output),
                    Self::from_inner(mean),
                    Self::from_inner(var),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::RunningState;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution, Tensor, TensorData};

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Per channel of `x` [N, C, ...] (row-major), in f64: (mean, unbiased variance).
    fn reference_statistics(x: &[f32], dims: &[usize]) -> Vec<(f64, f64)> {
        let (n, c) = (dims[0], dims[1]);
        let inner: usize = dims[2..].iter().product();
        (0..c)
            .map(|ch| {
                let vals: Vec<f64> = (0..n)
                    .flat_map(|i| {
                        let start = (i * c + ch) * inner;
                        x[start..start + inner].iter().map(|&v| v as f64)
                    })
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let ss: f64 = vals.iter().map(|v| (v - mean).powi(2)).sum();
                (mean, ss / (vals.len() - 1) as f64)
            })
            .collect()
    }

    /// Output and gradients (x, γ, β) equal burn's `BatchNorm` in training; the running
    /// statistics move as PyTorch's: (1 − m)·running + m·batch with the unbiased variance,
    /// checked against statistics computed here in f64.
    fn check<const D: usize>(dims: [usize; D]) {
        let device = Device::flex().autodiff();
        device.seed(7);
        let channels = dims[1];
        let x = Tensor::<D>::random(dims, Distribution::Normal(1.5, 2.0), &device);
        let upstream = Tensor::<D>::random(dims, Distribution::Uniform(-1.0, 1.0), &device);
        let gamma = Tensor::<1>::random([channels], Distribution::Uniform(0.5, 1.5), &device);
        let beta = Tensor::<1>::random([channels], Distribution::Uniform(-0.5, 0.5), &device);
        let start_mean: Vec<f32> = (0..channels).map(|c| 0.1 * c as f32 - 0.2).collect();
        let start_var: Vec<f32> = (0..channels).map(|c| 0.5 + 0.25 * c as f32).collect();
        let layer = || {
            let mut bn = BatchNormConfig::new(channels)
                .with_epsilon(2e-5)
                .with_momentum(0.1)
                .init(&device);
            bn.gamma = bn.gamma.map(|_| gamma.clone().require_grad());
            bn.beta = bn.beta.map(|_| beta.clone().require_grad());
            let stat = |v: &[f32]| {
                Tensor::<1>::from_data(TensorData::new(v.to_vec(), [channels]), &device)
            };
            bn.running_mean = RunningState::new(stat(&start_mean));
            bn.running_var = RunningState::new(stat(&start_var));
            bn
        };
        let run = |ours: bool| {
            let bn = layer();
            let x = x.clone().require_grad();
            let y = if ours {
                super::forward(&bn, x.clone())
            } else {
                bn.forward(x.clone())
            };
            let mut grads = (y.clone() * upstream.clone()).sum().backward();
            let mut grad = |p: &burn::module::Param<Tensor<1>>| {
                values(p.val().grad_remove(&mut grads).unwrap())
            };
            let (gg, gb) = (grad(&bn.gamma), grad(&bn.beta));
            (
                values(y.inner()),
                values(x.grad(&grads).unwrap()),
                gg,
                gb,
                values(bn.running_mean.value_sync()),
                values(bn.running_var.value_sync()),
            )
        };
        let (y, gx, gg, gb, mean, var) = run(true);
        let (y0, gx0, gg0, gb0, mean0, _) = run(false);
        assert!(max_diff(&y, &y0) < 1e-5, "outputs");
        assert!(max_diff(&gx, &gx0) < 1e-5, "input gradients");
        assert!(max_diff(&gg, &gg0) < 1e-3, "γ gradients {gg:?} vs {gg0:?}");
        assert!(max_diff(&gb, &gb0) < 1e-3, "β gradients {gb:?} vs {gb0:?}");
        assert!(max_diff(&mean, &mean0) < 1e-6, "running means");
        let xs = values(x.inner());
        for (c, &(m, v)) in reference_statistics(&xs, &dims).iter().enumerate() {
            let want_mean = 0.9 * start_mean[c] as f64 + 0.1 * m;
            let want_var = 0.9 * start_var[c] as f64 + 0.1 * v;
            assert!(
                (mean[c] as f64 - want_mean).abs() < 1e-5,
                "mean {c}: {} vs {want_mean}",
                mean[c]
            );
            assert!(
                (var[c] as f64 - want_var).abs() < 1e-5 * want_var,
                "variance {c}: {} vs {want_var}",
                var[c]
            );
        }
        // The unbiased variance is what moved it, not burn's biased one: they differ here
        // by n/(n − 1) of the batch's share.
        let n = (xs.len() / channels) as f64;
        let (_, v0) = reference_statistics(&xs, &dims)[0];
        let biased = 0.9 * start_var[0] as f64 + 0.1 * v0 * (n - 1.0) / n;
        assert!((var[0] as f64 - biased).abs() > 1e-3 * 0.1 * v0 / n);
    }

    #[test]
    fn feature_maps_equal_burns_batch_norm_and_move_the_running_statistics_as_pytorch() {
        check([4, 3, 5, 6]);
    }

    #[test]
    fn embeddings_equal_burns_batch_norm_and_move_the_running_statistics_as_pytorch() {
        // The last BatchNorm of the backbone normalises [N, E]: few values per channel, where
        // the unbiased correction is largest.
        check([5, 8]);
    }

    /// Outside training (no autodiff device) it is burn's inference path: the running
    /// statistics normalise and stay as they were.
    #[test]
    fn inference_uses_and_keeps_the_running_statistics() {
        let device = Device::flex();
        let mut bn = BatchNormConfig::new(2).init(&device);
        bn.running_mean =
            RunningState::new(Tensor::from_data(TensorData::from([1.0f32, -1.0]), &device));
        bn.running_var =
            RunningState::new(Tensor::from_data(TensorData::from([4.0f32, 0.25]), &device));
        let x = Tensor::<2>::from_data(TensorData::from([[3.0f32, 0.0], [1.0, -1.5]]), &device);
        let y = values(super::forward(&bn, x));
        let want = [1.0f32, 2.0, 0.0, -1.0];
        assert!(max_diff(&y, &want) < 1e-4, "{y:?}");
        assert_eq!(values(bn.running_var.value()), vec![4.0, 0.25]);
    }
}
