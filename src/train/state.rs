//! What a run carries from step to step, how it starts (fresh, `--init`, or `--resume`) and how
//! it is saved: the model, the optimizer's momentum, the step and the loader's cursor.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use super::checkpoint::{self, Checkpoint, Meta, load_named, named_tensors};
use super::sgd::{Sgd, SgdSettings};
use super::{Resume, TrainOptions};
use crate::config::Config;
use crate::data::loader::Cursor;
use crate::dist::Group;
use crate::model::Trainee;

pub struct State {
    pub model: Trainee,
    pub sgd: Sgd,
    pub step: usize,
    pub cursor: Cursor,
    /// The best mean validation accuracy so far (rank 0's; for best.ckpt).
    pub best: Option<f64>,
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

/// The run's state at its first step: the config's seeded initialisation, the backbone of
/// `--init`, or everything of `--resume`; then, as DDP does, rank 0's weights and buffers on
/// every rank, checked to be bit-identical. `device` is this rank's (without autodiff); notes
/// for the log are pushed onto `notes`.
pub fn start_or_resume(
    config: &Config,
    num_classes: usize,
    device: &Device,
    group: &Group,
    options: &TrainOptions,
    notes: &mut Vec<String>,
) -> Result<State> {
    let resume_from = resume_path(config, &options.resume)?;
    // Seeded initialisation: two runs of one config start from the same weights.
    device.seed(config.seed);
    let mut state = State {
        model: Trainee::init(config, num_classes, &device.clone().autodiff()),
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
        state = resume(state, config, num_classes, &path, device, notes)?;
    }
    // Each rank read its own copy of the checkpoint (a shared output folder, or one copied to
    // every machine): the same one, or the ranks would start from different places.
    let position = format!(
        "{} {} {}",
        state.step, state.cursor.epoch, state.cursor.sample
    );
    group
        .agree(crc32fast::hash(position.as_bytes()), "the resumed step and loader position")
        .context("--resume found different checkpoints on the ranks' machines: give every machine the same output folder (a shared file system) or --resume FILE")?;
    group.broadcast_module(&state.model)?;
    // Also on one rank: burn draws weights lazily, at first use, which is here (or in the
    // broadcast just before, in the same parameter order), so a seed gives the same start at
    // every world size.
    let checksum = crate::dist::checksum(&state.model);
    group.agree(checksum, "the start's weights and buffers")?;
    if group.world() > 1 {
        notes.push(format!(
            "identical start on all {} ranks (checksum {checksum:08x} of every weight and buffer)",
            group.world()
        ));
    }
    Ok(state)
}

fn resume(
    mut state: State,
    config: &Config,
    num_classes: usize,
    path: &Path,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<State> {
    let ckpt = Checkpoint::load(path)?;
    let mismatch = |what: &str| anyhow::anyhow!("{}: {what}", path.display());
    if ckpt.meta.num_classes != num_classes {
        return Err(mismatch(&format!(
            "checkpoint has {} classes, the data {num_classes}",
            ckpt.meta.num_classes
        )));
    }
    let Trainee { backbone, head } = state.model;
    state.model = Trainee {
        backbone: load_named(backbone, "backbone.", &ckpt.tensors).map_err(|e| mismatch(&e))?,
        head: load_named(head, "head.", &ckpt.tensors).map_err(|e| mismatch(&e))?,
    };
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
        "resumed from {} at step {} (epoch {}, sample {}; written by {} rank(s))",
        path.display(),
        state.step,
        state.cursor.epoch,
        state.cursor.sample,
        ckpt.meta.world_size
    ));
    Ok(state)
}

/// Writes `state` to `path` (rank 0, after the others reached the same step).
pub fn save(
    config: &Config,
    num_classes: usize,
    world_size: usize,
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
        world_size,
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
