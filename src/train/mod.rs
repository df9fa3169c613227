//! The training loop (arcface_torch's `train.py`, in Rust): SGD on backbone + margin head,
//! validation every `verbose` steps and each epoch end, checkpoints every `save_every` steps and
//! each epoch end, exact resume.

pub mod checkpoint;
mod inputs;
pub mod monitor;
pub mod replicas;
pub mod schedule;
pub mod sgd;
#[cfg(feature = "tch")]
mod sgd_fused;
mod tensorboard;
mod validation;

pub use validation::validate;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use crate::config::Config;
use crate::data::loader::{Cursor, Loader, LoaderConfig};
use crate::eval::embed::TargetResult;
use crate::model::Trainee;
use crate::model::memory_format::channels_last;
use checkpoint::{Checkpoint, Meta, load_named, named_tensors};
use monitor::Monitor;
use replicas::Replicas;
use schedule::Schedule;
use sgd::{Sgd, SgdSettings, global_grad_norm};

/// Seed path of the per-step backend seed (dropout).
const STEP_SEED: u64 = 3;

/// Where to resume from.
#[derive(Debug, Clone)]
pub enum Resume {
    /// The newest step checkpoint in the config's output folder.
    Latest,
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
}

struct State {
    model: Trainee,
    sgd: Sgd,
    step: usize,
    cursor: Cursor,
    best: Option<f64>,
}

fn save(
    config: &Config,
    num_classes: usize,
    state: &State,
    path: &Path,
    accuracy: Option<f64>,
) -> Result<()> {
    let mut tensors = named_tensors(&state.model.backbone, "backbone.");
    tensors.extend(named_tensors(&state.model.head, "head."));
    tensors.extend(
        state
            .sgd
            .state()
            .into_iter()
            .map(|(k, v)| (format!("momentum.{k}"), v)),
    );
    let meta = Meta {
        config: config.clone(),
        num_classes,
        step: state.step,
        cursor: state.cursor,
        accuracy,
        tensors: Vec::new(),
    };
    Checkpoint { meta, tensors }.save(path).with_context(|| {
        format!(
            "writing checkpoint {} (the previous checkpoints are intact)",
            path.display()
        )
    })
}

/// The checkpoint to resume from, if any.
fn resume_path(config: &Config, resume: &Option<Resume>) -> Result<Option<PathBuf>> {
    Ok(match resume {
        None => None,
        Some(Resume::Path(p)) => Some(p.clone()),
        Some(Resume::Latest) => match checkpoint::list(&config.output).pop() {
            Some(p) => Some(p),
            None => bail!("--resume: no step-*.ckpt in {}", config.output.display()),
        },
    })
}

/// The error that ends a run on a non-finite loss or gradient.
fn stopped(
    what: &str,
    step: usize,
    epoch: usize,
    last: &Option<PathBuf>,
    advice: &str,
) -> anyhow::Error {
    let last = last
        .as_ref()
        .map_or("none yet".into(), |p| p.display().to_string());
    anyhow::anyhow!(
        "{what} at step {step} (epoch {epoch}): training stopped; the last good checkpoint is {last}. Try {advice}"
    )
}

/// Trains as `config` says on one device.
pub fn train(config: &Config, device: &Device, options: &TrainOptions) -> Result<TrainReport> {
    train_replicas(config, std::slice::from_ref(device), options)
}

/// Trains as `config` says, data parallel over `devices` (one replica each, `batch_size` images
/// per replica and step; see `replicas.rs`). Checkpoints, validation and the optimizer live on
/// the first device.
pub fn train_replicas(
    config: &Config,
    devices: &[Device],
    options: &TrainOptions,
) -> Result<TrainReport> {
    let device = devices
        .first()
        .ok_or_else(|| anyhow::anyhow!("no device to train on"))?;
    crate::device::set_cudnn_benchmark(config.cudnn_benchmark);
    let (dataset, num_classes) = inputs::open_dataset(config)?;
    std::fs::create_dir_all(&config.output)
        .with_context(|| format!("creating {}", config.output.display()))?;
    let mut notes = Vec::new();
    let targets = inputs::load_targets(config, &mut notes)?;

    let resume_from = resume_path(config, &options.resume)?;
    let train_devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let train_device = train_devices[0].clone();
    let make = |d: &Device| Trainee::init(config, num_classes, d);
    // Seeded initialisation: two runs of one config start from the same weights.
    device.seed(config.seed);
    let mut state = State {
        model: make(&train_device),
        sgd: Sgd::new(SgdSettings {
            momentum: config.momentum,
            weight_decay: config.weight_decay,
            no_decay_on_norm_and_prelu: !config.decay_norm_and_prelu,
        }),
        step: 0,
        cursor: Cursor::default(),
        best: None,
    };
    if let Some(path) = &options.init {
        if resume_from.is_some() {
            bail!("--init starts a new run and --resume continues one: give one of them");
        }
        let ckpt = Checkpoint::load(path)?;
        state.model.backbone = load_named(state.model.backbone, "backbone.", &ckpt.tensors)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        notes.push(format!(
            "backbone initialised from {} ({}, step {})",
            path.display(),
            ckpt.meta.config.network,
            ckpt.meta.step
        ));
    }
    if let Some(path) = resume_from {
        let ckpt = Checkpoint::load(&path)?;
        let mismatch = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
        if ckpt.meta.num_classes != num_classes {
            return Err(mismatch(&format!(
                "checkpoint has {} classes, the data {num_classes}",
                ckpt.meta.num_classes
            )));
        }
        state.model.backbone = load_named(state.model.backbone, "backbone.", &ckpt.tensors)
            .map_err(|e| mismatch(&e))?;
        state.model.head =
            load_named(state.model.head, "head.", &ckpt.tensors).map_err(|e| mismatch(&e))?;
        let momentum = ckpt
            .tensors
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix("momentum.")
                    .map(|k| (k.to_string(), v.clone()))
            })
            .collect();
        state.sgd.load_state(momentum, device);
        state.step = ckpt.meta.step;
        state.cursor = ckpt.meta.cursor;
        // The best so far, so a resumed run only replaces best.ckpt with a better one.
        let best = config.output.join("best.ckpt");
        state.best = Checkpoint::load(&best).ok().and_then(|b| b.meta.accuracy);
        notes.push(format!(
            "resumed from {} at step {} (epoch {}, batch {})",
            path.display(),
            state.step,
            state.cursor.epoch,
            state.cursor.batch
        ));
    }

    // One loader per replica, each reading its slice of every global batch.
    let world = devices.len();
    let loaders = (0..world)
        .map(|rank| {
            let loader_config = LoaderConfig {
                batch_size: config.batch_size,
                seed: config.seed,
                num_workers: config.num_workers.div_ceil(world),
                prefetch: 4,
                rank,
                world,
                flip: true,
            };
            Loader::new(dataset.clone(), loader_config, state.cursor).map_err(anyhow::Error::msg)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut replicas = Replicas::new(&train_devices, make);
    if world > 1 {
        notes.push(format!(
            "data parallel over {world} devices ({}), {} images per device and step",
            devices
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            config.batch_size
        ));
    }
    let per_epoch = loaders[0].plan.batches_per_epoch();
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

    let mut monitor = Monitor::new(&config.output, total_steps, state.step)?;
    monitor.line(&format!(
        "{} images of {num_classes} identities, {per_epoch} steps per epoch of {} images, {total_steps} steps in {} epochs, {} precision",
        dataset.len(),
        config.batch_size * world,
        config.num_epoch,
        config.precision
    ));
    for n in &notes {
        monitor.line(n);
    }
    let mut report = TrainReport::default();
    let mut window = (Instant::now(), 0usize);
    while state.step < last_step {
        // Dropout masks from (seed, step, replica): a resumed run draws the same ones. (Replicas
        // sharing one CPU device share its generator, so there thread order decides.)
        for (rank, d) in devices.iter().enumerate() {
            if devices[..rank].contains(d) {
                continue;
            }
            let mut path = vec![STEP_SEED, state.step as u64];
            if rank > 0 {
                path.push(rank as u64);
            }
            d.seed(crate::seed::mix(config.seed, &path));
        }
        let batches = loaders
            .iter()
            .map(|l| l.next_batch())
            .collect::<Result<Vec<_>, _>>()?;
        let shards: Vec<_> = batches
            .iter()
            .zip(&train_devices)
            .map(|(b, d)| {
                let images = channels_last(b.images_tensor(d), config.channels_last);
                (images, b.labels_tensor(d))
            })
            .collect();
        let (loss_value, mut grads) =
            replicas.forward_backward(&state.model, shards, |model, (images, labels)| {
                model.loss(images, labels, config.precision)
            })?;
        let epoch = state.cursor.epoch;
        if !loss_value.is_finite() {
            monitor.flush();
            return Err(stopped(
                &format!("loss is {loss_value}"),
                state.step,
                epoch,
                &report.last_checkpoint,
                "a lower lr, warmup_epoch >= 1, clip_grad_norm = 5, or check the data with `arcface inspect --verify`",
            ));
        }
        let grad_norm = global_grad_norm(&state.model, &grads);
        if !grad_norm.is_finite() {
            monitor.flush();
            return Err(stopped(
                &format!("gradient norm is {grad_norm}"),
                state.step,
                epoch,
                &report.last_checkpoint,
                "a lower lr or clip_grad_norm = 5",
            ));
        }
        let scale = config
            .clip_grad_norm
            .map_or(1.0, |c| (c / (grad_norm + 1e-6)).min(1.0));
        let lr = schedule.lr(state.step);
        state.model = state.sgd.step(state.model, &mut grads, lr, scale, "");
        state.step += 1;
        state.cursor = batches[0].next;
        report.losses.push((state.step, loss_value));

        window.1 += batches.iter().map(|b| b.len()).sum::<usize>();
        let img_per_s = window.1 as f64 / window.0.elapsed().as_secs_f64();
        monitor.step(state.step, epoch, loss_value, img_per_s);
        if state.step.is_multiple_of(config.frequent) {
            monitor.scalar("train/loss", loss_value, state.step);
            monitor.scalar("train/lr", lr, state.step);
            monitor.scalar("train/img_per_s", img_per_s, state.step);
            monitor.scalar("train/grad_norm", grad_norm, state.step);
            monitor.line(&format!(
                "step {}/{total_steps} epoch {epoch} loss {loss_value:.4} lr {lr:.5} grad_norm {grad_norm:.3} {img_per_s:.1} img/s",
                state.step
            ));
            // TensorBoard shows the curve as it grows.
            monitor.flush();
            window = (Instant::now(), 0);
        }
        let epoch_end = state.cursor.batch == per_epoch;
        let mut accuracy = None;
        if epoch_end || state.step.is_multiple_of(config.verbose) || state.step == last_step {
            if !targets.is_empty() {
                let results = validate(
                    &state.model.backbone,
                    &targets,
                    config.batch_size,
                    config.channels_last,
                    device,
                )?;
                monitor.validation(state.step, &results);
                accuracy = validation::mean_accuracy(&results);
                report.validations.push((state.step, results));
            }
            window = (Instant::now(), 0);
        }
        if epoch_end || state.step.is_multiple_of(config.save_every) || state.step == last_step {
            let path = checkpoint::step_path(&config.output, state.step);
            save(config, num_classes, &state, &path, accuracy)?;
            checkpoint::prune(&config.output, config.keep_checkpoints)?;
            report.last_checkpoint = Some(path.clone());
            if let Some(acc) = accuracy.filter(|&a| state.best.is_none_or(|b| a > b)) {
                state.best = Some(acc);
                let best = config.output.join("best.ckpt");
                checkpoint::copy_atomic(&path, &best)?;
                monitor.line(&format!(
                    "new best mean accuracy {acc:.5}: {}",
                    best.display()
                ));
            }
            monitor.flush();
        }
    }
    monitor.bar.finish_and_clear();
    monitor.line(&format!("done at step {}", state.step));
    monitor.flush();
    Ok(report)
}
