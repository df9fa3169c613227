//! What a run carries from step to step and how it starts: fresh, `--init`, or from a
//! checkpoint. Only rank 0 reads files (its output folder); it sends every other rank what that
//! rank needs over the process group, so that machines without a shared disk resume too: the
//! backbone and its optimiser state (broadcast), each rank's centres of the model-parallel head
//! and their optimiser state (sent to it alone), the step, the loader's cursor and the skipped
//! records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Device, TensorData};

use super::TrainOptions;
use super::optimizer::{Optimizer, buffer_of};
use super::partial_fc::{ClassRange, PartialFc};
use super::run_folder::Claim;
use crate::checkpoint::shards;
use crate::checkpoint::{Checkpoint, load_named};
use crate::config::Config;
use crate::data::loader::Cursor;
use crate::distributed::Group;
use crate::model::{BackboneAndHead, NormStatistics};

pub struct State {
    pub model: BackboneAndHead,
    /// Which centres this rank holds and how a step samples them.
    pub head: PartialFc,
    pub optimizer: Optimizer,
    pub step: usize,
    pub cursor: Cursor,
    /// The best mean validation accuracy so far (rank 0's; for best.ckpt).
    pub best: Option<f64>,
    /// The run's name, in every checkpoint it writes (rank 0's; `run_folder`).
    pub run: Option<String>,
    /// Keys of the training records skipped so far as undecodable (the same on every rank).
    pub skipped: BTreeSet<u64>,
}

/// The run's state at its first step: the config's seeded initialisation, the backbone of
/// `--init`, or everything of the checkpoint rank 0's `claim` chose (its head re-cut for this
/// world size); then, as DDP does, rank 0's backbone on every rank, checked to be
/// bit-identical. `claim` is rank 0's (None on the others); `device` is this rank's (without
/// autodiff); notes for the log are pushed onto `notes`.
pub fn start_or_resume(
    config: &Config,
    num_classes: usize,
    device: &Device,
    group: &Group,
    options: &TrainOptions,
    claim: Option<Claim>,
    notes: &mut Vec<String>,
) -> Result<State> {
    let head = PartialFc::for_rank(config, num_classes, group);
    let classes = head.classes.start..head.classes.end();
    let mut state = State {
        // Seeded: two runs of one config start from the same weights, at any world size.
        model: config.init_model(num_classes, classes, &device.clone().autodiff()),
        head,
        optimizer: Optimizer::of(config),
        step: 0,
        cursor: Cursor::default(),
        best: None,
        run: None,
        skipped: BTreeSet::new(),
    };
    let (run, from) = match claim {
        Some(c) => (c.run, c.from),
        None => (None, None),
    };
    state.run = run;
    // Rank 0 says whether it resumes; the others follow.
    let resumed = group.broadcast_i64(&[i64::from(from.is_some())], "whether the run resumes")?;
    if resumed[0] == 1 {
        if let Some(path) = options.init.as_ref().filter(|_| group.is_main()) {
            notes.push(format!(
                "--init {} not used: the run resumes from its checkpoint, which started from it",
                path.display()
            ));
        }
        state = resume(state, config, num_classes, from, device, group, notes)?;
    } else if let Some(path) = &options.init {
        // Rank 0's backbone goes to every rank just below: only it reads the file.
        if group.is_main() {
            init_backbone(&mut state, path, notes)?;
        }
    }
    group.broadcast_module(&state.model.backbone)?;
    // Also on one rank: burn draws weights lazily, at first use, which is here (or in the
    // broadcast just before, in the same parameter order), so a seed gives the same start at
    // every world size.
    let checksum = crate::distributed::checksum(&state.model.backbone);
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
    if let Some(adaface) = &state.model.head.adaface {
        let norms = state.head.norm_statistics;
        notes.push(format!(
            "AdaFace head: m {}, h {}, t_alpha {}; the feature norms' running mean {:.4} and std \
             {:.4} (TensorBoard: train/adaface_norm_*)",
            adaface.m, adaface.h, adaface.t_alpha, norms.mean, norms.std
        ));
    }
    Ok(state)
}

fn init_backbone(state: &mut State, path: &Path, notes: &mut Vec<String>) -> Result<()> {
    let ckpt = Checkpoint::load(path)?;
    state.model.backbone = load_named(state.model.backbone.clone(), "backbone.", &ckpt.tensors)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    notes.push(format!(
        "backbone initialised from {} ({}, step {})",
        path.display(),
        ckpt.meta.config.network,
        ckpt.meta.step
    ));
    Ok(())
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

/// The checkpoint's state on every rank. Rank 0 holds `from` (the others None).
fn resume(
    mut state: State,
    config: &Config,
    num_classes: usize,
    from: Option<(PathBuf, Checkpoint)>,
    device: &Device,
    group: &Group,
    notes: &mut Vec<String>,
) -> Result<State> {
    if let Some((path, ckpt)) = &from {
        check_compatible(config, num_classes, path, ckpt)?;
    }
    // Rank 0's position, and which optimiser buffers exist, to all.
    let position = from.as_ref().map_or(vec![0; 4], |(_, c)| {
        let m = &c.meta;
        vec![
            m.step as i64,
            m.cursor.epoch as i64,
            m.cursor.sample as i64,
            m.world_size as i64,
        ]
    });
    let position = group.broadcast_i64(&position, "the resumed step and loader position")?;
    state.step = position[0] as usize;
    state.cursor = Cursor {
        epoch: position[1] as usize,
        sample: position[2] as usize,
    };
    let skipped: Vec<i64> = from.as_ref().map_or(Vec::new(), |(_, c)| {
        c.meta.skipped_records.iter().map(|&k| k as i64).collect()
    });
    let skipped = group.broadcast_list(&skipped, "the skipped records")?;
    state.skipped = skipped.into_iter().map(|k| k as u64).collect();
    // AdaFace's statistics, bit for bit (the same on every rank, as they were when saved).
    let norms = from
        .as_ref()
        .and_then(|(_, c)| c.meta.adaface_norms)
        .unwrap_or_default();
    let bits = [norms.mean, norms.std].map(|v| v.to_bits() as i64);
    let bits = group.broadcast_i64(&bits, "AdaFace's norm statistics")?;
    state.head.norm_statistics = NormStatistics {
        mean: f64::from_bits(bits[0] as u64),
        std: f64::from_bits(bits[1] as u64),
    };

    let mut buffers = backbone_buffers(from.as_ref().map(|(_, c)| c), group)?;
    let (weight, head_buffers) = head_rows_of_ranks(&from, state.head.classes, config, group)?;
    buffers.extend(head_buffers);
    let mut head_tensors = BTreeMap::new();
    head_tensors.insert(shards::WEIGHT.to_string(), weight);
    let BackboneAndHead { backbone, head } = state.model;
    let mismatch = |e: crate::checkpoint::TensorMismatch| match &from {
        Some((path, _)) => anyhow::anyhow!("{}: {e}", path.display()),
        None => anyhow::anyhow!("rank {}: the resumed state: {e}", group.rank()),
    };
    state.model = BackboneAndHead {
        // The other ranks get rank 0's backbone in the start's broadcast.
        backbone: match &from {
            Some((_, ckpt)) => {
                load_named(backbone, "backbone.", &ckpt.tensors).map_err(mismatch)?
            }
            None => backbone,
        },
        head: load_named(head, "head.", &head_tensors).map_err(mismatch)?,
    };
    state.optimizer.load_state(buffers, device);
    if let Some((path, ckpt)) = &from {
        // The best of this run so far, so a resumed run only replaces best.ckpt with a better one.
        let best = config.output.join("best.ckpt");
        state.best = Checkpoint::read_meta(&best)
            .ok()
            .filter(|b| b.run == ckpt.meta.run)
            .and_then(|b| b.accuracy);
        notes.push(format!(
            "resumed from {} at step {} (epoch {}, sample {}; written by {} rank(s))",
            path.display(),
            state.step,
            state.cursor.epoch,
            state.cursor.sample,
            ckpt.meta.world_size
        ));
    }
    Ok(state)
}

/// A checkpoint of another network, embedding or class count is refused by name, before its
/// tensors are compared one by one.
fn check_compatible(config: &Config, classes: usize, path: &Path, ckpt: &Checkpoint) -> Result<()> {
    let theirs = &ckpt.meta.config;
    let differ = [
        (
            "network",
            theirs.network.to_string(),
            config.network.to_string(),
        ),
        (
            "embedding_size",
            theirs.embedding_size.to_string(),
            config.embedding_size.to_string(),
        ),
        (
            "number of classes",
            ckpt.meta.num_classes.to_string(),
            classes.to_string(),
        ),
        (
            "optimizer",
            theirs.optimizer.to_string(),
            config.optimizer.to_string(),
        ),
        ("head", theirs.head.to_string(), config.head.to_string()),
    ];
    for (what, was, is) in differ {
        if was != is {
            bail!(
                "{}: a checkpoint of {what} {was}, this run's is {is}: it is of another run; \
                 give this run an `output` of its own",
                path.display()
            );
        }
    }
    Ok(())
}

/// The backbone's optimiser buffers of rank 0's checkpoint on every rank: names and sizes
/// first, then each buffer.
fn backbone_buffers(
    ckpt: Option<&Checkpoint>,
    group: &Group,
) -> Result<BTreeMap<String, TensorData>> {
    let held: BTreeMap<String, TensorData> = ckpt.map_or(BTreeMap::new(), |c| {
        c.tensors
            .iter()
            .filter(|(k, _)| buffer_of(k).is_some_and(|(_, path)| path.starts_with("backbone.")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    if group.world() == 1 {
        return Ok(held);
    }
    let index: Vec<(String, usize)> = held
        .iter()
        .map(|(k, v)| (k.clone(), v.num_elements()))
        .collect();
    let index = broadcast_json(&index, group, "the optimiser buffers' names")?;
    let mut out = BTreeMap::new();
    for (name, numel) in index {
        let mine = held.get(&name).cloned();
        let data = group.broadcast_data(mine, &[numel], &format!("broadcast of {name}"))?;
        out.insert(name, data);
    }
    Ok(out)
}

/// Rank 0's `value` on every rank, as JSON.
fn broadcast_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
    group: &Group,
    what: &str,
) -> Result<T> {
    let bytes = serde_json::to_vec(value).expect("plain data serialises");
    let bytes = group.broadcast_list(
        &bytes.iter().map(|&b| i64::from(b)).collect::<Vec<_>>(),
        what,
    )?;
    let bytes: Vec<u8> = bytes.into_iter().map(|b| b as u8).collect();
    serde_json::from_slice(&bytes).with_context(|| format!("{what} from rank 0"))
}

/// This rank's centres `range` of the head (and their optimiser buffers, if the checkpoint
/// has them): rank 0 cuts every rank's rows from the checkpoint's head (any world size wrote
/// it) and sends each its own.
fn head_rows_of_ranks(
    from: &Option<(PathBuf, Checkpoint)>,
    range: ClassRange,
    config: &Config,
    group: &Group,
) -> Result<(TensorData, BTreeMap<String, TensorData>)> {
    let e = config.embedding_size;
    let what = "the head's optimiser buffers' names";
    let Some((path, ckpt)) = from else {
        let names: Vec<String> = broadcast_json(&Vec::<String>::new(), group, what)?;
        let what = "the head's centres from rank 0";
        let weight = group.recv_data(&[range.len, e], 0, what)?;
        let mut buffers = BTreeMap::new();
        for name in names {
            buffers.insert(name, group.recv_data(&[range.len * e], 0, what)?);
        }
        return Ok((weight, buffers));
    };
    let (weight, buffers) = shards::head_rows(path, ckpt, range.start, range.len)?;
    if group.world() > 1 {
        let names: Vec<String> = buffers.keys().cloned().collect();
        broadcast_json(&names, group, what)?;
        let classes = ckpt.meta.num_classes;
        for rank in 1..group.world() {
            let theirs = ClassRange::of_rank(classes, group.world(), rank);
            let (w, mut b) = shards::head_rows(path, ckpt, theirs.start, theirs.len)?;
            let what = format!("sending rank {rank} its centres");
            group.send_data(w, rank, &what)?;
            for name in &names {
                let data = b.remove(name).expect("every shard holds the same buffers");
                group.send_data(data, rank, &what)?;
            }
        }
    }
    Ok((weight, buffers))
}

/// Rank 0 decides how the run starts from what its output folder holds (`run_folder`), before
/// any work; every rank learns whether it could, and stops with it if not.
pub(super) fn claim_folder(
    config: &Config,
    options: &TrainOptions,
    group: &Group,
    notes: &mut Vec<String>,
) -> Result<Option<Claim>> {
    let claim = group.is_main().then(|| {
        super::run_folder::claim(&config.output, &options.resume, options.overwrite, notes)
    });
    group.outcome_of_main(claim, "checking the output folder", || {
        anyhow::anyhow!("rank 0 could not start the run in its output folder (its error says why)")
    })
}
