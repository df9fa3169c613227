//! Writing a whole checkpoint in one call: the main file with the head inside (one rank), or a
//! model-parallel head's shard files beside it, each written as its rank's part arrives, then
//! the main file that lists them, last (a main file on disk always has whole shards beside it).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::TensorData;

use super::shards::{HeadShard, shard_path};
use super::{Checkpoint, Meta};

/// One rank's rows of a model-parallel head: its centres and their momentum.
pub struct HeadPart {
    pub rank: usize,
    /// Its identities: `start..start + len`.
    pub start: usize,
    pub len: usize,
    pub tensors: BTreeMap<String, TensorData>,
}

/// The head of a checkpoint being written.
pub enum Head<P> {
    /// One rank's whole head, inside the main file.
    Inside(BTreeMap<String, TensorData>),
    /// Every rank's part of a model-parallel head of `world` ranks, as `parts` yields them
    /// (received from the ranks as they are taken, one at a time).
    Sharded { world: usize, parts: P },
}

/// Writes the checkpoint `path`: `meta` (its `head_shards` filled here), `tensors` (the
/// backbone and its momentum) and `head`. The outer error is the parts' own (a rank that could
/// not send): it stops the save at once. The inner one is a file that could not be written: the
/// remaining parts are still taken, so that no sender waits forever, the main file is not
/// written, and the previous checkpoints stay the newest. Ok holds the main file's CRC.
pub fn save<P>(
    path: &Path,
    meta: Meta,
    mut tensors: BTreeMap<String, TensorData>,
    head: Head<P>,
) -> Result<Result<u32>>
where
    P: Iterator<Item = Result<HeadPart>>,
{
    let head_shards = match head {
        Head::Inside(head) => {
            tensors.extend(head);
            Vec::new()
        }
        Head::Sharded { world, parts } => match write_shards(path, &meta, world, parts)? {
            Ok(shards) => shards,
            Err(e) => return Ok(Err(e)),
        },
    };
    let main = Checkpoint {
        meta: Meta {
            head_shards,
            ..meta
        },
        tensors,
        crc: 0,
    };
    Ok(main.save(path).with_context(|| context(path)))
}

/// Each part as its own shard file beside `main`, the manifest's entries returned; after a
/// write fails, the parts are still taken and the first failure is the inner Err.
fn write_shards(
    main: &Path,
    meta: &Meta,
    world: usize,
    parts: impl Iterator<Item = Result<HeadPart>>,
) -> Result<Result<Vec<HeadShard>>> {
    let mut entries = Vec::with_capacity(world);
    let mut failed: Option<anyhow::Error> = None;
    for part in parts {
        let part = part?;
        if failed.is_some() {
            continue;
        }
        let path = shard_path(main, part.rank, world);
        let file = path.file_name().expect("a file");
        let entry = HeadShard {
            file: file.to_string_lossy().into_owned(),
            rank: part.rank,
            start: part.start,
            len: part.len,
            crc: 0,
        };
        let shard = Checkpoint {
            meta: Meta {
                head_shards: vec![entry.clone()],
                ..meta.clone()
            },
            tensors: part.tensors,
            crc: 0,
        };
        match shard.save(&path) {
            Ok(crc) => entries.push(HeadShard { crc, ..entry }),
            Err(e) => failed = Some(anyhow::Error::new(e).context(context(&path))),
        }
    }
    Ok(match failed {
        Some(e) => Err(e),
        None => Ok(entries),
    })
}

fn context(path: &Path) -> String {
    format!(
        "writing checkpoint {} (the previous checkpoints are intact)",
        path.display()
    )
}
