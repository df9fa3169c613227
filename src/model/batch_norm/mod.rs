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
//! else `native_batch_norm`) and keeps 1/√(σ² + ε) for the backward; on burn's CPU backend our
//! kernels (crates/cpu-kernels through `src/model/flex/`) with the same update, and elsewhere
//! burn's arithmetic.
//!
//! Inference goes through an operation of ours too ([`BatchNormOp::batch_norm_eval_op`]), for
//! the bf16 activations of mixed precision: libtorch's kernel takes them with fp32 parameters,
//! burn's CPU backend would refuse the mix. The module and its record stay burn's [`BatchNorm`],
//! so checkpoints and ONNX export do not change.
// burn-tch (LibTorch) is deprecated upstream; see device.rs.
#![cfg_attr(feature = "tch", allow(deprecated))]

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, AutodiffBackend, Backend, DType, Dispatch, Scalar, TensorMetadata, backend_extension,
};
use burn::module::{Module, ModuleMapper, Param, RunningState};
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// `bn.forward(x)` through [`BatchNormOp`]: in training (an autodiff device and a layer that is
/// not frozen, burn's own rule) normalises by the batch's statistics and updates `bn`'s running
/// statistics; otherwise normalises by the running statistics.
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
    // The statistics are taken out of the layer for the operation and the new ones put
    // back below (at once: no value is left pending to sync). Taken, the layer's tensors are
    // held by this call alone, so libtorch's kernels update them in place as PyTorch's do,
    // instead of copies first (burn-tch's `can_mut` rule: one launch per statistic, 308 per
    // r100 step); a tensor someone else also holds (a `valid()` copy) is still copied.
    let take = |state| replace(state, Tensor::empty([0], &device)).to_device(&device);
    let (running_mean, running_var) = (take(&bn.running_mean), take(&bn.running_var));
    let (output, running_mean, running_var) = <Dispatch as BatchNormOp>::batch_norm_train_op(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        running_mean.into_dispatch(),
        running_var.into_dispatch(),
        bn.momentum,
        bn.epsilon,
    );
    replace(&bn.running_mean, Tensor::from_dispatch(running_mean));
    replace(&bn.running_var, Tensor::from_dispatch(running_var));
    Tensor::from_dispatch(output)
}

/// Makes `value` the running statistic `state` holds, at once, and returns the one it held
/// (moved out: `state` no longer shares it).
///
/// Not `RunningState::update`: that keeps the value pending per thread, and the next read on
/// the thread folds it in as the mean of the threads' pending values, dividing by their count
/// even when it is 1: one more kernel per statistic and step, 308 per r100 step on LibTorch.
/// Writing through `Module::map` sets the shared value directly. That is right here because
/// each model is trained by one thread (one process per device: src/distributed/), so each statistic
/// has one writer.
///
/// `forward` takes a layer's statistics out with an empty tensor in their place and puts the
/// new ones in when the operation returns. In between, on the same thread, nothing reads them;
/// should the operation panic, the step fails, and a failed step ends training before anything
/// saves the model (src/train/mod.rs).
fn replace(state: &RunningState<Tensor<1>>, value: Tensor<1>) -> Tensor<1> {
    struct Replace {
        new: Option<Tensor<1>>,
        old: Option<Tensor<1>>,
    }
    impl ModuleMapper for Replace {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // Converted between Tensor<1> and Tensor<D> as they are (D is 1), not by views.
            assert_eq!(D, 1, "a running statistic has one axis");
            let new = self.new.take().expect("a running statistic is one tensor");
            param.map(|old| {
                self.old = Some(Tensor::from_dispatch(old.into_dispatch()));
                Tensor::from_dispatch(new.detach().into_dispatch())
            })
        }
    }
    let mut replace = Replace {
        new: Some(value),
        old: None,
    };
    // RunningState's clones share its value: mapping the clone writes the layer's.
    let _ = state.clone().map(&mut replace);
    replace.old.expect("a running statistic is one tensor")
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
    /// variance). The running statistics given are consumed, as burn's operations consume
    /// their inputs: a backend may write the new ones over them where no other tensor shares
    /// their storage (LibTorch does), never otherwise.
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
pub(super) fn composed_eval<B: Backend>(
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
pub(super) fn composed_forward<B: Backend>(
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
pub(super) fn composed_backward<B: Backend>(
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
pub(super) fn unbiased_factor(samples: usize) -> f64 {
    if samples > 1 {
        samples as f64 / (samples - 1) as f64
    } else {
        1.0
    }
}

/// [`BatchNormOp::batch_norm_train_op`] of a concrete backend: its forward kernel, the saved
/// statistics dropped (nothing differentiates there).
pub(super) fn train_op<B: BatchNormKernels>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    running_mean: FloatTensor<B>,
    running_var: FloatTensor<B>,
    momentum: f64,
    epsilon: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (output, _, mean, var) =
        B::batch_norm_forward(x, gamma, beta, running_mean, running_var, momentum, epsilon);
    (output, mean, var)
}

#[cfg(feature = "tch")]
mod libtorch;

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
mod tests;
