//! What a run carries from step to step, how it starts (fresh, `--init`, or `--resume`) and how
//! it is saved: the model (the backbone, and this rank's centres of the model-parallel head),
//! the optimizer's momentum, the step and the loader's cursor.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;

use super::partial_fc::PartialFc;
use super::sgd::{Sgd, SgdSettings};
use super::{Resume, TrainOptions};
use crate::checkpoint::shards::{self, HeadShard};
use crate::checkpoint::{self, Checkpoint, Meta, load_named, named_tensors};
use crate::config::Config;
use crate::data::loader::Cursor;
use crate::dist::Group;
use crate::model::Trainee;

pub struct State {
    pub model: Trainee,
    /// Which centres this rank holds and how a step samples them.
    pub head: PartialFc,
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
/// `--init`, or everything of `--resume` (its head re-cut for this world size); then, as DDP
/// does, rank 0's backbone on every rank, checked to be bit-identical. `device` is this rank's
/// (without autodiff); notes for the log are pushed onto `notes`.
pub fn start_or_resume(
    config: &Config,
    num_classes: usize,
    device: &Device,
    group: &Group,
    options: &TrainOptions,
    notes: &mut Vec<String>,
) -> Result<State> {
    let resume_from = resume_path(config, &options.resume)?;
    let head = PartialFc::for_rank(config, num_classes, group);
    let classes = head.classes.start..head.classes.end();
    let mut state = State {
        // Seeded: two runs of one config start from the same weights, at any world size.
        model: Trainee::init(config, num_classes, classes, &device.clone().autodiff()),
        head,
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
    group.broadcast_module(&state.model.backbone)?;
    // Also on one rank: burn draws weights lazily, at first use, which is here (or in the
    // broadcast just before, in the same parameter order), so a seed gives the same start at
    // every world size.
    let checksum = crate::dist::checksum(&state.model.backbone);
    group.agree(checksum, "the start's backbone weights and buffers")?;
    if group.world() > 1 {
        let range = state.head.classes;
        notes.push(format!(
            "identical backbone on all {} ranks (checksum {checksum:08x} of every weight and \
             buffer); the head model parallel, this rank's centres {}..{} of {num_classes}, {}",
            group.world(),
            range.start,
            range.end(),
            sampling(&state.head)
        ));
    } else if config.sample_rate < 1.0 {
        notes.push(format!("partial FC: {}", sampling(&state.head)));
    }
    Ok(state)
}

fn sampling(head: &PartialFc) -> String {
    match head.sample_rate < 1.0 {
        true => format!(
            "{} centres per step (sample_rate {}) and every positive",
            head.num_sample(),
            head.sample_rate
        ),
        false => "every centre every step (sample_rate 1)".into(),
    }
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
    let range = state.head.classes;
    let (weight, head_momentum) = shards::head_rows(path, &ckpt, range.start, range.len)?;
    let mut head_tensors = std::collections::BTreeMap::new();
    head_tensors.insert(shards::WEIGHT.to_string(), weight);
    let Trainee { backbone, head } = state.model;
    state.model = Trainee {
        backbone: load_named(backbone, "backbone.", &ckpt.tensors).map_err(|e| mismatch(&e))?,
        head: load_named(head, "head.", &head_tensors).map_err(|e| mismatch(&e))?,
    };
    let mut momentum: std::collections::BTreeMap<String, _> = ckpt
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("momentum.backbone."))
        .filter_map(|(k, v)| {
            k.strip_prefix("momentum.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    if let Some(m) = head_momentum {
        momentum.insert(shards::WEIGHT.to_string(), m);
    }
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

/// Writes `state` as the checkpoint `path`, every rank of `group` taking part after all
/// reached the same step: one rank writes the one file; several write their head shards, then
/// rank 0 the main file listing them, last. Each rank then prunes its own old shards.
pub fn save(
    config: &Config,
    num_classes: usize,
    group: &Group,
    state: &State,
    path: &Path,
    accuracy: Option<f64>,
) -> Result<()> {
    let meta = |tensors_of_shard: Vec<HeadShard>| Meta {
        config: config.clone(),
        num_classes,
        step: state.step,
        cursor: state.cursor,
        world_size: group.world(),
        accuracy,
        tensors: Vec::new(),
        head_shards: tensors_of_shard,
    };
    let context = |p: &Path| {
        format!(
            "writing checkpoint {} (the previous checkpoints are intact)",
            p.display()
        )
    };
    let momentum = state.sgd.state();
    let mut tensors = named_tensors(&state.model.backbone, "backbone.");
    tensors.extend(
        momentum
            .iter()
            .filter(|(k, _)| k.starts_with("backbone."))
            .map(|(k, v)| (format!("momentum.{k}"), v.clone())),
    );
    let head_weight = named_tensors(&state.model.head, "head.")
        .remove(shards::WEIGHT)
        .expect("the head has a weight");
    let head_momentum = momentum.get(shards::WEIGHT).cloned();
    let mut head_shards = Vec::new();
    if group.world() == 1 {
        tensors.insert(shards::WEIGHT.into(), head_weight);
        tensors.extend(head_momentum.map(|m| (shards::MOMENTUM.to_string(), m)));
    } else {
        let range = state.head.classes;
        let shard_path = shards::shard_path(path, group.rank(), group.world());
        let entry = HeadShard {
            file: shard_path
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned(),
            rank: group.rank(),
            start: range.start,
            len: range.len,
            crc: 0,
        };
        let mut shard_tensors = std::collections::BTreeMap::new();
        shard_tensors.insert(shards::WEIGHT.to_string(), head_weight);
        shard_tensors.extend(head_momentum.map(|m| (shards::MOMENTUM.to_string(), m)));
        let written = Checkpoint {
            meta: meta(vec![entry.clone()]),
            tensors: shard_tensors,
            crc: 0,
        }
        .save(&shard_path);
        // Every rank learns whether every shard is on disk, and rank 0 their CRCs, before the
        // main file may exist; a rank that failed says why, the others name it.
        let crc = written.as_ref().map_or(-1, |&c| i64::from(c));
        let crcs = group.all_gather(crc, "gathering the head shards' CRCs")?;
        if let Err(e) = written {
            return Err(anyhow::Error::new(e).context(context(&shard_path)));
        }
        if let Some(rank) = crcs.iter().position(|&c| c < 0) {
            bail!(
                "{}: rank {rank} could not write its head shard (its log says why); the \
                 previous checkpoints are intact",
                path.display()
            );
        }
        for (rank, crc) in crcs.into_iter().enumerate() {
            let shard = shards::shard_path(path, rank, group.world());
            let range =
                crate::train::partial_fc::ClassRange::of_rank(num_classes, group.world(), rank);
            head_shards.push(HeadShard {
                file: shard
                    .file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .into_owned(),
                rank,
                start: range.start,
                len: range.len,
                crc: crc as u32,
            });
        }
    }
    if group.is_main() {
        Checkpoint {
            meta: meta(head_shards),
            tensors,
            crc: 0,
        }
        .save(path)
        .with_context(|| context(path))?;
    }
    if group.world() > 1 {
        let dir = path.parent().unwrap_or(Path::new("."));
        shards::prune_own(dir, group.rank(), state.step, config.keep_checkpoints)?;
    }
    Ok(())
}
