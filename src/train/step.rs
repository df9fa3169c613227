//! One optimizer step of one rank, as arcface_torch's train_v2.py runs it: the backbone's
//! forward on this rank's batch, the model-parallel head's forward and backward
//! (`partial_fc`), the backbone's backward from the embeddings' gradient, the backbone's
//! gradients averaged over the ranks (DDP), and the optimiser (SGD or AdamW) on the backbone
//! (the same update everywhere) and on this rank's centres; with `gradient_acc`, all of it but
//! the update once per micro-batch.

use anyhow::Result;
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use super::partial_fc::PartialFc;
use super::sgd::global_grad_norm;
use super::state::State;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::distributed::Group;
use crate::model::memory_format::channels_last;
use crate::model::{BackboneAndHead, MarginSoftmax, Precision};

/// Seed path of the per-step backend seed (dropout).
const STEP_SEED: u64 = 3;

/// What one step measured.
pub struct StepOutcome {
    /// The mean loss over the ranks.
    pub loss: f64,
    /// The norm of the averaged gradient (before clipping).
    pub grad_norm: f64,
}

/// Why a step did not update the model.
pub enum StepFailure {
    /// The loss (mean over the ranks) or the gradient norm is not finite; every rank sees the
    /// same value and stops together.
    NotFinite {
        what: String,
        advice: &'static str,
    },
    Error(anyhow::Error),
}

impl From<anyhow::Error> for StepFailure {
    fn from(e: anyhow::Error) -> Self {
        StepFailure::Error(e)
    }
}

/// Seconds of a step's parts, each waited for (benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct PartTimes {
    pub forward: f64,
    /// The head's forward and backward, its collectives included.
    pub head: f64,
    /// The head's all-gathers and all-reduces.
    pub head_collectives: f64,
    pub backward: f64,
    /// The backbone's gradient all-reduce.
    pub all_reduce: f64,
}

/// What [`gradients`] gives: the mean loss over the ranks, the backbone's averaged gradients
/// and this rank's centres' gradient (one map, by parameter), and the squared norm of all of
/// them over every rank.
pub struct Gradients {
    pub loss: f64,
    pub grads: GradientsParams,
    pub norm: f64,
}

/// Forward and backward of `model` on `images` [B, 3, 112, 112] (autodiff device) and
/// `labels` at step `step`: the gradients of the whole model for the mean loss over all ranks'
/// rows. With `times`, every part is waited for and timed.
#[allow(clippy::too_many_arguments)]
pub fn gradients(
    model: &BackboneAndHead,
    head: &mut PartialFc,
    images: Tensor<4>,
    labels: &[u32],
    precision: Precision,
    group: &Group,
    step: usize,
    times: Option<&mut PartTimes>,
) -> Result<Gradients> {
    let (loss, grads) =
        forward_and_backward(model, head, images, labels, precision, group, step, times)?;
    let norm = whole_grad_norm(&model.backbone, &model.head, &grads, group)?;
    Ok(Gradients { loss, grads, norm })
}

/// [`gradients`] without the norm (a micro-batch's: the step's norm is its sum's).
#[allow(clippy::too_many_arguments)]
fn forward_and_backward(
    model: &BackboneAndHead,
    head: &mut PartialFc,
    images: Tensor<4>,
    labels: &[u32],
    precision: Precision,
    group: &Group,
    step: usize,
    mut times: Option<&mut PartTimes>,
) -> Result<(f64, GradientsParams)> {
    let start = std::time::Instant::now();
    let embeddings = model.backbone.forward_at(images, precision);
    if let Some(t) = times.as_deref_mut() {
        group.sync()?;
        t.forward += start.elapsed().as_secs_f64();
    }
    let centres = (&model.head, head);
    head_and_backbone_backward(
        &model.backbone,
        embeddings,
        centres,
        labels,
        group,
        step,
        times,
    )
}

/// [`gradients`] for any backbone: `embeddings` [B, E] are its output (autodiff) for this
/// rank's rows; `centres` this rank's part of the head. The backbone's gradients are averaged
/// over the ranks; the centres' are this rank's own.
#[allow(clippy::too_many_arguments)]
pub fn backbone_and_head_gradients<M: burn::module::Module>(
    backbone: &M,
    embeddings: Tensor<2>,
    (centres, head): (&MarginSoftmax, &mut PartialFc),
    labels: &[u32],
    group: &Group,
    step: usize,
    times: Option<&mut PartTimes>,
) -> Result<Gradients> {
    let (loss, grads) = head_and_backbone_backward(
        backbone,
        embeddings,
        (centres, head),
        labels,
        group,
        step,
        times,
    )?;
    let norm = whole_grad_norm(backbone, centres, &grads, group)?;
    Ok(Gradients { loss, grads, norm })
}

/// The head's forward and backward, then the backbone's backward from the embeddings'
/// gradient and DDP's averaging: the mean loss over the ranks and the gradients by parameter.
fn head_and_backbone_backward<M: burn::module::Module>(
    backbone: &M,
    embeddings: Tensor<2>,
    (centres, head): (&MarginSoftmax, &mut PartialFc),
    labels: &[u32],
    group: &Group,
    step: usize,
    mut times: Option<&mut PartTimes>,
) -> Result<(f64, GradientsParams)> {
    let mut clock = std::time::Instant::now();
    let mut lap = |slot: Option<&mut f64>| -> Result<()> {
        if let Some(slot) = slot {
            group.sync()?;
            *slot += clock.elapsed().as_secs_f64();
            clock = std::time::Instant::now();
        }
        Ok(())
    };
    let pass = head.forward_backward(
        centres,
        embeddings.clone().inner(),
        labels,
        group,
        step,
        times.is_some(),
    )?;
    if let Some(t) = times.as_deref_mut() {
        t.head_collectives += pass.collective_seconds;
    }
    lap(times.as_deref_mut().map(|t| &mut t.head))?;
    // A scalar whose gradient on the embeddings is the head's: the backbone's backward.
    let surrogate = (embeddings * pass.embedding_grad.autodiff()).sum();
    let mut backward = surrogate.backward();
    let mut grads = GradientsParams::from_module(&mut backward, backbone);
    lap(times.as_deref_mut().map(|t| &mut t.backward))?;
    group.average_gradients(backbone, &mut grads)?;
    lap(times.map(|t| &mut t.all_reduce))?;
    grads.register::<2>(centres.weight.id, pass.weight_grad);
    // The same on every rank: the head's cross-entropy spans them.
    Ok((pass.loss, grads))
}

/// Forward, backward, gradient averaging and the optimiser's update at learning rate `lr` on
/// `batch`;
/// `device` is this rank's (autodiff). A failed step ends the run, and its state with it.
pub fn one_step(
    mut state: State,
    batch: &Batch,
    config: &Config,
    group: &Group,
    device: &Device,
    lr: f64,
) -> Result<(State, StepOutcome), StepFailure> {
    // Dropout masks from (seed, step, rank): a resumed run draws the same ones.
    let mut path = vec![STEP_SEED, state.step as u64];
    if group.rank() > 0 {
        path.push(group.rank() as u64);
    }
    device.seed(crate::seed::mix(config.seed, &path));
    let images = channels_last(batch.images_tensor(device), config.channels_last);
    let micro_batches = config.gradient_acc.max(1);
    let Gradients {
        loss,
        mut grads,
        norm: grad_norm,
    } = if micro_batches == 1 {
        gradients(
            &state.model,
            &mut state.head,
            images,
            &batch.labels,
            config.precision,
            group,
            state.step,
            None,
        )?
    } else {
        accumulated_gradients(
            &mut state,
            images,
            &batch.labels,
            config,
            group,
            micro_batches,
        )?
    };
    if !loss.is_finite() {
        return Err(StepFailure::NotFinite {
            what: format!("loss is {loss}"),
            advice: "a lower lr, warmup_epoch >= 1, clip_grad_norm = 5, or check the data with `arcface inspect --verify`",
        });
    }
    if !grad_norm.is_finite() {
        return Err(StepFailure::NotFinite {
            what: format!("gradient norm is {grad_norm}"),
            advice: "a lower lr or clip_grad_norm = 5",
        });
    }
    // Accumulated gradients are the micro-batches' sum: the step takes their mean.
    let scale = config
        .clip_grad_norm
        .map_or(1.0, |c| (c / (grad_norm + 1e-6)).min(1.0))
        / micro_batches as f64;
    state.model = state
        .optimizer
        .step(state.model, &mut grads, lr, scale, state.step, "");
    state.step += 1;
    state.cursor = batch.next;
    Ok((state, StepOutcome { loss, grad_norm }))
}

/// `gradient_acc` > 1: the batch's `micro_batches` slices each through a forward and backward
/// (its own BatchNorm statistics, Partial FC sample and all-reduce, as arcface_torch's
/// micro-steps), the gradients summed. The loss is their mean, the mean over every row of the
/// step, and the norm, taken once, is that of the mean gradient, what clipping looks at; the
/// caller divides the sum by `micro_batches` in the update. Partial FC draws micro-batch k of step t with
/// t·K + k.
fn accumulated_gradients(
    state: &mut State,
    images: Tensor<4>,
    labels: &[u32],
    config: &Config,
    group: &Group,
    micro_batches: usize,
) -> Result<Gradients> {
    let rows = labels.len() / micro_batches;
    let mut sum = GradientsParams::new();
    let mut loss = 0.0;
    for k in 0..micro_batches {
        let (part_loss, part) = forward_and_backward(
            &state.model,
            &mut state.head,
            images.clone().narrow(0, k * rows, rows),
            &labels[k * rows..(k + 1) * rows],
            config.precision,
            group,
            state.step * micro_batches + k,
            None,
        )?;
        loss += part_loss / micro_batches as f64;
        add_gradients(&state.model, &mut sum, part);
    }
    let norm = whole_grad_norm(&state.model.backbone, &state.model.head, &sum, group)?
        / micro_batches as f64;
    Ok(Gradients {
        loss,
        grads: sum,
        norm,
    })
}

/// `sum` += `grads`, parameter by parameter of `model`.
fn add_gradients(model: &BackboneAndHead, sum: &mut GradientsParams, mut grads: GradientsParams) {
    struct Add<'a> {
        sum: &'a mut GradientsParams,
        grads: &'a mut GradientsParams,
    }
    impl burn::module::ModuleVisitor for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                let total = match self.sum.remove::<D>(param.id) {
                    Some(s) => s + g,
                    None => g,
                };
                self.sum.register::<D>(param.id, total);
            }
        }
    }
    model.visit(&mut Add {
        sum,
        grads: &mut grads,
    });
}

/// The L2 norm of the backbone's gradient (averaged: the same on every rank) and every rank's
/// centres' (each holds its own: their squared norms summed over the ranks).
fn whole_grad_norm<M: Module>(
    backbone: &M,
    centres: &MarginSoftmax,
    grads: &GradientsParams,
    group: &Group,
) -> Result<f64> {
    let backbone = global_grad_norm(backbone, grads);
    let head = grads
        .get::<2>(centres.weight.id)
        .map_or(0.0, |g| g.square().sum().into_scalar::<f32>() as f64);
    let head = group.sum(&[head], "all-reduce of the centres' gradient norm")?[0];
    Ok((backbone * backbone + head).sqrt())
}
