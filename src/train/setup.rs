//! Everything before a run's first step: the ranks agree on what they train, the output folder
//! is claimed, the data opened, the model started or resumed, and the loader, schedule and rank
//! 0's monitor set up, with what the user should know said once.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::Device;

use super::TrainOptions;
use super::inputs;
use super::monitor::Monitor;
use super::schedule::Schedule;
use super::state::{State, claim_folder, start_or_resume};
use crate::config::Config;
use crate::data::bin::PairSet;
use crate::data::dataset::RecDataset;
use crate::data::loader::{Loader, LoaderConfig};
use crate::distributed::Group;

/// A started run, besides the model's state.
pub struct Run {
    pub loader: Loader,
    pub schedule: Schedule,
    /// The validation sets (rank 0's; none on the others).
    pub targets: Vec<(String, PairSet)>,
    /// Rank 0's log, progress bar and TensorBoard files.
    pub monitor: Option<Monitor>,
    pub num_classes: usize,
    pub total_steps: usize,
    /// Where this run stops: the config's end, or sooner with `max_steps`.
    pub last_step: usize,
    pub rate: Rate,
}

impl Run {
    /// Validation after every epoch, every `verbose` steps and at the last step.
    pub fn validation_due(&self, step: usize, epoch_end: bool, config: &Config) -> bool {
        epoch_end || step.is_multiple_of(config.verbose) || step == self.last_step
    }

    /// A checkpoint after every epoch, every `save_every` steps and at the last step.
    pub fn save_due(&self, step: usize, epoch_end: bool, config: &Config) -> bool {
        epoch_end || step.is_multiple_of(config.save_every) || step == self.last_step
    }
}

/// Starts or resumes the run `options` ask for.
pub fn set_up(
    config: &Config,
    device: &Device,
    group: &mut Group,
    options: &TrainOptions,
) -> Result<(Run, State)> {
    crate::device::set_cudnn_benchmark(config.cudnn_benchmark);
    agree_on_start(config, options, group)?;
    let mut notes = Vec::new();
    let claim = claim_folder(config, options, group, &mut notes)?;
    let (dataset, num_classes) = open_data(config, group)?;
    notes.extend(dataset.notes.iter().cloned());
    let targets = match group.is_main() {
        true => inputs::load_targets(config, &mut notes)?,
        false => Vec::new(),
    };
    let state = start_or_resume(
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
    let loader = open_loader(config, dataset.clone(), group, &state)?;
    let augment = config.augmentations();
    if !augment.is_off() {
        notes.push(format!(
            "augmentations before the flip, with their probabilities: {}",
            augment.describe()
        ));
    }
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
        poly_power: config.poly_power,
    };
    let last_step = options
        .max_steps
        .map_or(total_steps, |m| (state.step + m).min(total_steps));
    let monitor = match group.is_main() {
        true => {
            let mut m = Monitor::new(&config.output, total_steps, state.step)?;
            m.line(&format!(
                "{} images of {num_classes} identities, {per_epoch} steps per epoch of {} images{}, {total_steps} steps in {} epochs, {} precision",
                dataset.len(),
                loader.plan.global_batch(),
                micro_batches(config),
                config.num_epoch,
                config.precision
            ));
            if group.world() > 1 {
                notes.insert(0, data_parallel(config, group));
            }
            for n in &notes {
                m.line(n);
            }
            Some(m)
        }
        false => None,
    };
    let run = Run {
        loader,
        schedule,
        targets,
        monitor,
        num_classes,
        total_steps,
        last_step,
        rate: Rate::start(),
    };
    Ok((run, state))
}

/// Ranks started with different configs (or options) would train different models, or
/// different numbers of steps, without a word: they compare a checksum first.
fn agree_on_start(config: &Config, options: &TrainOptions, group: &mut Group) -> Result<()> {
    anyhow::ensure!(
        options.init.is_none() || matches!(options.resume, None | Some(super::Resume::Auto)),
        "--init starts a new run and --resume continues one: give one of them (or --resume auto, \
         which uses --init only while the run has no checkpoint)"
    );
    let mut started = serde_json::to_vec(config).expect("a config serialises");
    started.extend(format!("{options:?}").bytes());
    group
        .agree(crc32fast::hash(&started), "the configs and options")
        .context("start every rank with the same config file and options")?;
    Ok(())
}

/// The training set and its class count; synthetic data is generated by rank 0 alone while the
/// others wait for it.
fn open_data(config: &Config, group: &Group) -> Result<(Arc<RecDataset>, usize)> {
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

/// This rank's share of the batches, from where the state's cursor says.
fn open_loader(
    config: &Config,
    dataset: Arc<RecDataset>,
    group: &Group,
    state: &State,
) -> Result<Loader> {
    let loader_config = LoaderConfig {
        // A step's micro-batches come as one batch, cut in the step.
        batch_size: config.batch_size * config.gradient_acc,
        seed: config.seed,
        num_workers: config.num_workers,
        prefetch: 4,
        rank: group.rank(),
        world: group.world(),
        flip: true,
        augment: config.augmentations(),
    };
    Loader::new(dataset, loader_config, state.cursor)
}

fn data_parallel(config: &Config, group: &Group) -> String {
    format!(
        "data parallel over {} ranks ({}), {} images per rank and step{}",
        group.world(),
        group.backend(),
        config.batch_size * config.gradient_acc,
        micro_batches(config)
    )
}

/// ", in K micro-batches of N" where the config accumulates gradients.
fn micro_batches(config: &Config) -> String {
    match config.gradient_acc {
        1 => String::new(),
        k => format!(" in {k} micro-batches of {}", config.batch_size),
    }
}

/// Images per second over all ranks since the last restart.
pub struct Rate {
    since: Instant,
    images: usize,
}

impl Rate {
    pub fn start() -> Rate {
        Rate {
            since: Instant::now(),
            images: 0,
        }
    }

    pub fn add(&mut self, images: usize) {
        self.images += images;
    }

    pub fn per_second(&self) -> f64 {
        self.images as f64 / self.since.elapsed().as_secs_f64()
    }

    pub fn restart(&mut self) {
        *self = Rate::start();
    }
}
