//! Writing a checkpoint, every rank taking part after all reached the same step. One rank writes
//! the one file. Several: rank 0 receives the others' centres and their optimiser buffers one rank at a time
//! (send/recv) as the checkpoint room writes each rank's head shard, then the main file that
//! lists them, last (`checkpoint::save`). Only
//! rank 0 needs the output folder, so machines without a shared disk train and resume alike;
//! docs/DISTRIBUTED.md has the bytes this moves at scale.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use burn::tensor::TensorData;

use super::TrainReport;
use super::monitor::Monitor;
use super::partial_fc::ClassRange;
use super::state::State;
use crate::checkpoint::save::{Head, HeadPart};
use crate::checkpoint::shards;
use crate::checkpoint::{self, Meta, named_tensors};
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
    let meta = Meta {
        config: config.clone(),
        num_classes,
        step: state.step,
        cursor: state.cursor,
        world_size: group.world(),
        accuracy,
        tensors: Vec::new(),
        head_shards: Vec::new(),
        run: state.run.clone(),
        skipped_records: state.skipped.iter().copied().collect(),
        adaface_norms: state.model.head.adaface.map(|_| state.head.norm_statistics),
    };
    let buffers = state.optimizer.state();
    let head_weight = named_tensors(&state.model.head, "head.")
        .remove(shards::WEIGHT)
        .expect("the head has a weight");
    let mut head = BTreeMap::new();
    head.insert(shards::WEIGHT.to_string(), head_weight);
    // The centres' buffers, once the optimiser has stepped (none before the first step).
    let head_buffers: Vec<String> = state
        .optimizer
        .head_buffers()
        .into_iter()
        .filter(|name| buffers.contains_key(name))
        .collect();
    for name in &head_buffers {
        head.insert(name.clone(), buffers[name].clone());
    }
    let what = "whether the checkpoint was written";
    if group.world() > 1 {
        // Every rank has stepped as many times as the others: the same buffers everywhere.
        group.agree(
            head_buffers.len() as u32,
            "which optimiser buffers the head has",
        )?;
        if !group.is_main() {
            let sending = "sending this rank's centres to rank 0 for the checkpoint";
            for name in std::iter::once(shards::WEIGHT.to_string()).chain(head_buffers) {
                let data = head.remove(&name).expect("listed");
                group.send_data(data, 0, sending)?;
            }
            return group
                .outcome_of_main::<()>(None, what, || {
                    anyhow::anyhow!(
                        "{}: rank 0 could not write the checkpoint (its log says why); the \
                         previous checkpoints are intact",
                        path.display()
                    )
                })
                .map(drop);
        }
    }
    let mut tensors = named_tensors(&state.model.backbone, "backbone.");
    tensors.extend(buffers.into_iter().filter(|(k, _)| {
        crate::train::optimizer::buffer_of(k).is_some_and(|(_, path)| path.starts_with("backbone."))
    }));
    // One rank: the head inside the main file; several: each rank's part received in turn and
    // written as a shard beside it.
    let world = group.world();
    let parts = match world {
        1 => Head::Inside(head),
        _ => {
            let width = head[shards::WEIGHT].shape()[1];
            let mut own = Some(head);
            Head::Sharded {
                world,
                parts: (0..world).map(move |rank| {
                    let range = ClassRange::of_rank(num_classes, world, rank);
                    let tensors = match own.take() {
                        Some(own) => own,
                        None => receive(group, rank, range, width, &head_buffers)?,
                    };
                    Ok(HeadPart {
                        rank,
                        start: range.start,
                        len: range.len,
                        tensors,
                    })
                }),
            }
        }
    };
    let written = checkpoint::save::save(path, meta, tensors, parts)?.map(drop);
    // Every rank learns whether the checkpoint exists: the others stop with rank 0 if not.
    group
        .outcome_of_main(Some(written), what, || {
            unreachable!("rank 0 has its outcome")
        })
        .map(drop)
}

/// Rank `rank`'s centres `range` and their optimiser buffers `names`, as it sends them.
fn receive(
    group: &Group,
    rank: usize,
    range: ClassRange,
    width: usize,
    names: &[String],
) -> Result<BTreeMap<String, TensorData>> {
    let what = format!("receiving rank {rank}'s centres for the checkpoint");
    let mut tensors = BTreeMap::new();
    let weight = group.recv_data(&[range.len, width], rank, &what)?;
    tensors.insert(shards::WEIGHT.to_string(), weight);
    for name in names {
        let buffer = group.recv_data(&[range.len * width], rank, &what)?;
        tensors.insert(name.clone(), buffer);
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
