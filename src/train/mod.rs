//! The training loop (arcface_torch's `train_v2.py`, in Rust): SGD on backbone + margin head,
//! data parallel over the ranks of a process group (`crate::distributed`), validation every `verbose`
//! steps and each epoch end, checkpoints every `save_every` steps and each epoch end, exact
//! resume. Rank 0 alone validates, logs, reads and writes checkpoints; the others train. A stop
//! signal (`crate::signals`) ends the run after the step it arrives in, with a checkpoint.

mod inputs;
pub mod monitor;
pub mod partial_fc;
mod preempt;
pub mod run_folder;
mod save;
pub mod schedule;
pub mod sgd;
#[cfg(feature = "tch")]
mod sgd_fused;
mod skipped;
mod state;
pub mod step;
mod tensorboard;
mod validation;

pub use validation::validate;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;

use crate::config::Config;
use crate::data::loader::{Loader, LoaderConfig};
use crate::distributed::Group;
use crate::eval::embed::TargetResult;
use monitor::Monitor;
use preempt::{agree_after_step, stopped};
use save::checkpoint_now;
use schedule::Schedule;
use state::{State, claim_folder, start_or_resume};
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
/// device), `batch_size` images per rank and step.
pub fn train_with(
    config: &Config,
    device: &Device,
    group: &mut Group,
    options: &TrainOptions,
) -> Result<TrainReport> {
    crate::device::set_cudnn_benchmark(config.cudnn_benchmark);
    anyhow::ensure!(
        options.init.is_none() || matches!(options.resume, None | Some(Resume::Auto)),
        "--init starts a new run and --resume continues one: give one of them (or --resume auto, \
         which uses --init only while the run has no checkpoint)"
    );
    // Ranks started with different configs (or options) would train different models, or
    // different numbers of steps, without a word.
    let mut started = serde_json::to_vec(config).expect("a config serialises");
    started.extend(format!("{options:?}").bytes());
    group
        .agree(crc32fast::hash(&started), "the configs and options")
        .context("start every rank with the same config file and options")?;
    let mut notes = Vec::new();
    let claim = claim_folder(config, options, group, &mut notes)?;
    let (dataset, num_classes) = open_data(config, group)?;
    let targets = match group.is_main() {
        true => inputs::load_targets(config, &mut notes)?,
        false => Vec::new(),
    };
    let mut state = start_or_resume(
        config,
        num_classes,
        device,
        group,
        options,
        claim,
        &mut notes,
    )?;
    if let Some(link) = crate::distributed::link_report(group)? {
        notes.insert(0, link);
    }

    let loader_config = LoaderConfig {
        batch_size: config.batch_size,
        seed: config.seed,
        num_workers: config.num_workers,
        prefetch: 4,
        rank: group.rank(),
        world: group.world(),
        flip: true,
    };
    let loader =
        Loader::new(dataset.clone(), loader_config, state.cursor).map_err(anyhow::Error::msg)?;
    // After the loader's own check (a world the data cannot feed says so first).
    anyhow::ensure!(
        num_classes >= group.world(),
        "{num_classes} identities cannot be split over {} ranks (each rank holds a range of the \
         class centres): use at most {num_classes} ranks",
        group.world()
    );
    let per_epoch = loader.plan.batches_per_epoch();
    let total_steps = per_epoch * config.num_epoch;
    let schedule = Schedule {
        kind: config.lr_schedule,
        base_lr: config.lr,
        warmup_steps: per_epoch * config.warmup_epoch,
        total_steps,
        lr_steps: config.lr_steps.clone(),
    };
    let last_step = options
        .max_steps
        .map_or(total_steps, |m| (state.step + m).min(total_steps));

    let mut monitor = match group.is_main() {
        true => Some(Monitor::new(&config.output, total_steps, state.step)?),
        false => None,
    };
    if let Some(m) = &mut monitor {
        m.line(&format!(
            "{} images of {num_classes} identities, {per_epoch} steps per epoch of {} images, {total_steps} steps in {} epochs, {} precision",
            dataset.len(),
            loader.plan.global_batch(),
            config.num_epoch,
            config.precision
        ));
        if group.world() > 1 {
            notes.insert(
                0,
                format!(
                    "data parallel over {} ranks ({}), {} images per rank and step",
                    group.world(),
                    group.backend(),
                    config.batch_size
                ),
            );
        }
        for n in &notes {
            m.line(n);
        }
    }
    let train_device = device.clone().autodiff();
    let mut report = TrainReport::default();
    let mut rate = Rate::start();
    while state.step < last_step {
        let batch = loader.next_batch()?;
        let (epoch, lr) = (state.cursor.epoch, schedule.lr(state.step));
        let failed_at = state.step;
        let step;
        (state, step) = match one_step(state, &batch, config, group, &train_device, lr) {
            Ok(done) => done,
            Err(StepFailure::NotFinite { what, advice }) => {
                let last = report.last_checkpoint.as_ref();
                let last = last.map_or("none yet".into(), |p| p.display().to_string());
                if let Some(m) = &mut monitor {
                    m.flush();
                }
                anyhow::bail!(
                    "{what} at step {failed_at} (epoch {epoch}): training stopped; the last good checkpoint is {last}. Try {advice}"
                );
            }
            Err(StepFailure::Error(e)) => return Err(e),
        };
        report.losses.push((state.step, step.loss));
        rate.add(loader.plan.global_batch());
        if let Some(m) = &mut monitor {
            m.train_step(
                state.step,
                total_steps,
                epoch,
                lr,
                step.loss,
                step.grad_norm,
                rate.per_second(),
                config.frequent,
            );
        }
        if state.step.is_multiple_of(config.frequent) {
            rate.restart();
        }
        // A stop signal skips the step's validation and checkpoints it whether or not a save
        // was due.
        let stop = agree_after_step(&mut state, &batch, config, group, monitor.as_mut())?;
        let epoch_end = loader.plan.epoch_done(state.cursor);
        let mut accuracy = None;
        let validate_now =
            epoch_end || state.step.is_multiple_of(config.verbose) || state.step == last_step;
        if stop.is_none() && validate_now {
            if let Some(m) = &mut monitor {
                accuracy = validate_on_main(&state, &targets, config, device, m, &mut report)?;
            }
            rate.restart();
        }
        if stop.is_some()
            || epoch_end
            || state.step.is_multiple_of(config.save_every)
            || state.step == last_step
        {
            checkpoint_now(
                config,
                num_classes,
                group,
                &mut state,
                &mut report,
                monitor.as_mut(),
                accuracy,
            )
            .map_err(|e| match &stop {
                Some(why) => e.context(format!("stopping on {why} at step {}", state.step)),
                None => e,
            })?;
        }
        if let Some(why) = stop {
            return Err(stopped(config, group, &state, monitor.as_mut(), &why));
        }
    }
    group.barrier("end of training")?;
    group.finish();
    if let Some(m) = &mut monitor {
        m.bar.finish_and_clear();
        m.line(&format!("done at step {}", state.step));
        m.flush();
    }
    Ok(report)
}

/// Images per second over all ranks since the last restart.
struct Rate {
    since: Instant,
    images: usize,
}

impl Rate {
    fn start() -> Rate {
        Rate {
            since: Instant::now(),
            images: 0,
        }
    }

    fn add(&mut self, images: usize) {
        self.images += images;
    }

    fn per_second(&self) -> f64 {
        self.images as f64 / self.since.elapsed().as_secs_f64()
    }

    fn restart(&mut self) {
        *self = Rate::start();
    }
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

/// The training set and its class count; synthetic data is generated by rank 0 alone while the
/// others wait for it.
fn open_data(
    config: &Config,
    group: &Group,
) -> Result<(std::sync::Arc<crate::data::dataset::RecDataset>, usize)> {
    let opened = match group.is_main() {
        true => Some(inputs::open_dataset(config)?),
        false => None,
    };
    group.barrier("opening the training data")?;
    let (dataset, num_classes) = match opened {
        Some(o) => o,
        None => inputs::open_dataset(config)?,
    };
    std::fs::create_dir_all(&config.output)
        .with_context(|| format!("creating {}", config.output.display()))?;
    Ok((dataset, num_classes))
}
