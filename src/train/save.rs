//! Writing a checkpoint, every rank taking part after all reached the same step. One rank writes
//! the one file. Several: rank 0 writes every rank's head shard, receiving the others' centres
//! and momentum one rank at a time (send/recv), then the main file that lists them, last. Only
//! rank 0 needs the output folder, so machines without a shared disk train and resume alike;
//! docs/DISTRIBUTED.md has the bytes this moves at scale.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::TensorData;

use super::TrainReport;
use super::monitor::Monitor;
use super::partial_fc::ClassRange;
use super::state::State;
use crate::checkpoint::shards::{self, HeadShard};
use crate::checkpoint::{self, Checkpoint, Meta, named_tensors};
use crate::config::Config;
use crate::distributed::Group;

/// Writes `state` as the checkpoint `path` (rank 0's folder); `accuracy` is its validation's.
pub fn save(
    config: &Config,
    num_classes: usize,
    group: &Group,
    state: &State,
    path: &Path,
    accuracy: Option<f64>,
) -> Result<()> {
    let meta = |head_shards: Vec<HeadShard>| Meta {
        config: config.clone(),
        num_classes,
        step: state.step,
        cursor: state.cursor,
        world_size: group.world(),
        accuracy,
        tensors: Vec::new(),
        head_shards,
        run: state.run.clone(),
        skipped_records: state.skipped.iter().copied().collect(),
    };
    let momentum = state.sgd.state();
    let head_weight = named_tensors(&state.model.head, "head.")
        .remove(shards::WEIGHT)
        .expect("the head has a weight");
    let head_momentum = momentum.get(shards::WEIGHT).cloned();
    let mut head = BTreeMap::new();
    head.insert(shards::WEIGHT.to_string(), head_weight);
    head.extend(head_momentum.map(|m| (shards::MOMENTUM.to_string(), m)));
    // One rank: the head inside the main file; several: in shard files beside it.
    let (inside, head_shards) = match group.world() {
        1 => (head, Ok(Vec::new())),
        _ => (
            BTreeMap::new(),
            gather_shards(num_classes, group, head, path, &meta)?,
        ),
    };
    let what = "whether the checkpoint was written";
    if !group.is_main() {
        return group
            .outcome_of_main::<()>(None, what, || {
                anyhow::anyhow!(
                    "{}: rank 0 could not write the checkpoint (its log says why); the previous \
                     checkpoints are intact",
                    path.display()
                )
            })
            .map(drop);
    }
    let mut tensors = named_tensors(&state.model.backbone, "backbone.");
    tensors.extend(
        momentum
            .iter()
            .filter(|(k, _)| k.starts_with("backbone."))
            .map(|(k, v)| (format!("momentum.{k}"), v.clone())),
    );
    let written = match head_shards {
        Ok(shards) => {
            tensors.extend(inside);
            Checkpoint {
                meta: meta(shards),
                tensors,
                crc: 0,
            }
            .save(path)
            .with_context(|| context(path))
            .map(drop)
        }
        Err(e) => Err(e),
    };
    // Every rank learns whether the checkpoint exists: the others stop with rank 0 if not.
    group
        .outcome_of_main(Some(written), what, || {
            unreachable!("rank 0 has its outcome")
        })
        .map(drop)
}

fn context(path: &Path) -> String {
    format!(
        "writing checkpoint {} (the previous checkpoints are intact)",
        path.display()
    )
}

/// Rank 0: every rank's shard file written (its own, then each other's as received), the
/// manifest's entries returned; a write that fails keeps receiving, so that no rank waits
/// forever, and is the Err. The other ranks: their centres sent to rank 0 (the outer Ok is the
/// collectives', the inner one rank 0's writes, which it reports afterwards).
fn gather_shards(
    num_classes: usize,
    group: &Group,
    own: BTreeMap<String, TensorData>,
    path: &Path,
    meta: &dyn Fn(Vec<HeadShard>) -> Meta,
) -> Result<Result<Vec<HeadShard>>> {
    // Every rank has momentum after its first step, or none does (momentum = 0).
    let has_momentum = own.contains_key(shards::MOMENTUM);
    group.agree(u32::from(has_momentum), "whether the head has momentum")?;
    if !group.is_main() {
        let what = "sending this rank's centres to rank 0 for the checkpoint";
        for name in [shards::WEIGHT, shards::MOMENTUM] {
            if let Some(data) = own.get(name) {
                group.send_data(data.clone(), 0, what)?;
            }
        }
        return Ok(Ok(Vec::new()));
    }
    let mut entries = Vec::with_capacity(group.world());
    let mut failed: Option<anyhow::Error> = None;
    let width = own[shards::WEIGHT].shape()[1];
    for rank in 0..group.world() {
        let range = ClassRange::of_rank(num_classes, group.world(), rank);
        let tensors = match rank {
            0 => own.clone(),
            _ => receive(group, rank, range, width, has_momentum)?,
        };
        if failed.is_some() {
            continue;
        }
        let shard_path = shards::shard_path(path, rank, group.world());
        let file = shard_path.file_name().expect("a file");
        let entry = HeadShard {
            file: file.to_string_lossy().into_owned(),
            rank,
            start: range.start,
            len: range.len,
            crc: 0,
        };
        let written = Checkpoint {
            meta: meta(vec![entry.clone()]),
            tensors,
            crc: 0,
        }
        .save(&shard_path);
        match written {
            Ok(crc) => entries.push(HeadShard { crc, ..entry }),
            Err(e) => failed = Some(anyhow::Error::new(e).context(context(&shard_path))),
        }
    }
    Ok(match failed {
        Some(e) => Err(e),
        None => Ok(entries),
    })
}

/// Rank `rank`'s centres `range` (and their momentum), as it sends them.
fn receive(
    group: &Group,
    rank: usize,
    range: ClassRange,
    width: usize,
    has_momentum: bool,
) -> Result<BTreeMap<String, TensorData>> {
    let what = format!("receiving rank {rank}'s centres for the checkpoint");
    let mut tensors = BTreeMap::new();
    let weight = group.recv_data(&[range.len, width], rank, &what)?;
    tensors.insert(shards::WEIGHT.to_string(), weight);
    if has_momentum {
        let momentum = group.recv_data(&[range.len * width], rank, &what)?;
        tensors.insert(shards::MOMENTUM.to_string(), momentum);
    }
    Ok(tensors)
}

/// A checkpoint of the step every rank has just finished, then rank 0's pruning and best.ckpt.
pub(super) fn checkpoint_now(
    config: &Config,
    num_classes: usize,
    group: &Group,
    state: &mut State,
    report: &mut TrainReport,
    monitor: Option<&mut Monitor>,
    accuracy: Option<f64>,
) -> Result<()> {
    let path = checkpoint::step_path(&config.output, state.step);
    // Every rank has finished this step: the checkpoint is of a step all reached.
    group.barrier(&format!("checkpoint at step {}", state.step))?;
    save(config, num_classes, group, state, &path, accuracy)?;
    if let Some(m) = monitor {
        after_save(config, state, &path, accuracy, m)?;
    }
    report.last_checkpoint = Some(path);
    Ok(())
}

/// Rank 0's part after a checkpoint is written: the pruning of old ones, best.ckpt (the main
/// file: the backbone for eval and export; its head shards stay those of its step) when the
/// accuracy is a new best.
fn after_save(
    config: &Config,
    state: &mut State,
    path: &std::path::Path,
    accuracy: Option<f64>,
    monitor: &mut Monitor,
) -> Result<()> {
    checkpoint::prune(&config.output, config.keep_checkpoints, &state.run)?;
    if let Some(acc) = accuracy.filter(|&a| state.best.is_none_or(|b| a > b)) {
        state.best = Some(acc);
        let best = config.output.join("best.ckpt");
        checkpoint::copy_atomic(path, &best)?;
        monitor.line(&format!(
            "new best mean accuracy {acc:.5}: {}",
            best.display()
        ));
    }
    monitor.flush();
    Ok(())
}
