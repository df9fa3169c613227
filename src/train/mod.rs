//! The training loop (arcface_torch's `train_v2.py`, in Rust): SGD or AdamW on backbone + margin head,
//! data parallel over the ranks of a process group (`crate::distributed`), validation every `verbose`
//! steps and each epoch end, checkpoints every `save_every` steps and each epoch end, exact
//! resume. Rank 0 alone validates, logs, reads and writes checkpoints; the others train. A stop
//! signal (`crate::signals`) ends the run after the step it arrives in, with a checkpoint.

mod adamw;
#[cfg(feature = "tch")]
mod in_place;
mod inputs;
pub mod monitor;
pub mod optimizer;
pub mod partial_fc;
mod preempt;
pub mod run_folder;
mod save;
pub mod schedule;
mod setup;
pub mod sgd;
mod skipped;
mod state;
pub mod step;
mod tensorboard;
mod update;
mod validation;

pub use validation::validate;

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;

use crate::config::Config;
use crate::data::loader::Batch;
use crate::distributed::Group;
use crate::eval::embed::TargetResult;
use monitor::Monitor;
use preempt::{agree_after_step, stopped};
use save::checkpoint_now;
use setup::{Run, set_up};
use state::State;
use step::{StepFailure, one_step};

/// Where to resume from.
#[derive(Debug, Clone)]
pub enum Resume {
    /// The newest whole step checkpoint in the config's output folder (`--resume`); none is an
    /// error.
    Latest,
    /// The same, or a fresh start where the folder has no checkpoint yet (`--resume auto`: the
    /// one command line a restarting launcher repeats).
    Auto,
    Path(PathBuf),
}

#[derive(Debug, Default)]
pub struct TrainReport {
    /// (step, loss) of every step this run did.
    pub losses: Vec<(usize, f64)>,
    /// (step, results) of every validation.
    pub validations: Vec<(usize, Vec<TargetResult>)>,
    pub last_checkpoint: Option<PathBuf>,
}

/// Stops after this many steps of this run (tests, smoke checks); None runs the config's epochs.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: Option<Resume>,
    pub max_steps: Option<usize>,
    /// Start the backbone from this checkpoint's (fine-tuning; e.g. one made by `arcface
    /// import`); the head, optimizer and step start fresh.
    pub init: Option<PathBuf>,
    /// A fresh run in a folder that holds an earlier one removes that run's files first
    /// (`--overwrite`); else it is refused.
    pub overwrite: bool,
}

/// Trains as `config` says, alone on `device`.
pub fn train(config: &Config, device: &Device, options: &TrainOptions) -> Result<TrainReport> {
    train_with(config, device, &mut Group::single(device), options)
}

/// Trains as `config` says as one rank of `group` on `device` (its own: one process per
/// device), `batch_size` images per rank and step. As train_v2.py: start or resume, then per
/// step the batch, one step, and validation and a checkpoint when due.
pub fn train_with(
    config: &Config,
    device: &Device,
    group: &mut Group,
    options: &TrainOptions,
) -> Result<TrainReport> {
    let (mut run, mut state) = set_up(config, device, group, options)?;
    let train_device = device.clone().autodiff();
    let mut report = TrainReport::default();
    while state.step < run.last_step {
        let batch = run.loader.next_batch()?;
        state = step_and_log(
            &mut run,
            state,
            &batch,
            config,
            group,
            &train_device,
            &mut report,
        )?;
        // A stop signal skips the step's validation and checkpoints it whether or not a save
        // was due.
        let stop = agree_after_step(&mut state, &batch, config, group, run.monitor.as_mut())?;
        let epoch_end = run.loader.plan.epoch_done(state.cursor);
        let mut accuracy = None;
        if stop.is_none() && run.validation_due(state.step, epoch_end, config) {
            if let Some(m) = &mut run.monitor {
                accuracy = validate_on_main(&state, &run.targets, config, device, m, &mut report)?;
            }
            run.rate.restart();
        }
        if stop.is_some() || run.save_due(state.step, epoch_end, config) {
            let monitor = run.monitor.as_mut();
            checkpoint_now(
                config,
                run.num_classes,
                group,
                &mut state,
                &mut report,
                monitor,
                accuracy,
            )
            .map_err(|e| match &stop {
                Some(why) => e.context(format!("stopping on {why} at step {}", state.step)),
                None => e,
            })?;
        }
        if let Some(why) = stop {
            return Err(stopped(config, group, &state, run.monitor.as_mut(), &why));
        }
    }
    group.barrier("end of training")?;
    group.finish();
    if let Some(m) = &mut run.monitor {
        m.bar.finish_and_clear();
        m.line(&format!("done at step {}", state.step));
        m.flush();
    }
    Ok(report)
}

/// One optimiser step on `batch` at the schedule's rate, its loss kept and shown; a loss or
/// gradient that is not finite ends the run naming the last good checkpoint.
fn step_and_log(
    run: &mut Run,
    state: State,
    batch: &Batch,
    config: &Config,
    group: &mut Group,
    train_device: &Device,
    report: &mut TrainReport,
) -> Result<State> {
    let (epoch, lr) = (state.cursor.epoch, run.schedule.lr(state.step));
    let failed_at = state.step;
    let (state, step) = match one_step(state, batch, config, group, train_device, lr) {
        Ok(done) => done,
        Err(StepFailure::NotFinite { what, advice }) => {
            let last = report.last_checkpoint.as_ref();
            let last = last.map_or("none yet".into(), |p| p.display().to_string());
            if let Some(m) = &mut run.monitor {
                m.flush();
            }
            anyhow::bail!(
                "{what} at step {failed_at} (epoch {epoch}): training stopped; the last good checkpoint is {last}. Try {advice}"
            );
        }
        Err(StepFailure::Error(e)) => return Err(e),
    };
    report.losses.push((state.step, step.loss));
    run.rate.add(run.loader.plan.global_batch());
    if let Some(m) = &mut run.monitor {
        let rate = run.rate.per_second();
        m.train_step(
            state.step,
            run.total_steps,
            epoch,
            lr,
            step.loss,
            step.grad_norm,
            rate,
            config.frequent,
        );
        let adaface = state.model.head.adaface.map(|_| state.head.norm_statistics);
        m.norm_statistics(state.step, config.frequent, adaface);
    }
    if state.step.is_multiple_of(config.frequent) {
        run.rate.restart();
    }
    Ok(state)
}

/// Rank 0's validation of every target (none configured: nothing), reported and kept; the mean
/// accuracy, for best.ckpt.
fn validate_on_main(
    state: &State,
    targets: &[(String, crate::data::bin::PairSet)],
    config: &Config,
    device: &Device,
    monitor: &mut Monitor,
    report: &mut TrainReport,
) -> Result<Option<f64>> {
    if targets.is_empty() {
        return Ok(None);
    }
    let results = validate(
        &state.model.backbone,
        targets,
        config.batch_size,
        config.channels_last,
        device,
    )?;
    monitor.validation(state.step, &results);
    let accuracy = validation::mean_accuracy(&results);
    report.validations.push((state.step, results));
    Ok(accuracy)
}
