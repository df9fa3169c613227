//! The head of a model-parallel run in shard files: `<main file>.head-<r>-of-<W>` holds rank r's
//! centres and their momentum (the checkpoint format, one entry in `head_shards` describing
//! itself). Rank 0 writes every shard, the others' received over the process group
//! (`train::save`), then the main file, which lists each with its class range and CRC, last. A
//! checkpoint exists when its main file does (`list` sees only those), so a rank killed at any
//! moment of a save leaves the previous checkpoint the newest; a shard that is missing, or not
//! the one the manifest wrote (another save's, damaged), is an error naming the file.
//!
//! Any world size reads any checkpoint: the rows a rank needs are cut from the shards (or from
//! the head inside a one-rank checkpoint) that overlap them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::{Checkpoint, CheckpointError, io_err};

/// One rank's shard of the head, as the main file lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadShard {
    /// The file's name, in the main file's folder.
    pub file: String,
    pub rank: usize,
    /// Its identities: `start..start + len`.
    pub start: usize,
    pub len: usize,
    /// The shard file's CRC-32 as written (0 inside the shard file itself).
    pub crc: u32,
}

/// The weight and momentum names of the head in checkpoints.
pub const WEIGHT: &str = "head.weight";
pub const MOMENTUM: &str = "momentum.head.weight";

/// Where rank `rank` of `world` writes its shard of the checkpoint `main`.
pub fn shard_path(main: &Path, rank: usize, world: usize) -> PathBuf {
    let name = main
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    main.with_file_name(format!("{name}.head-{rank}-of-{world}"))
}

/// Deletes the shard files beside the main file `main` (any world size): a pruned checkpoint's.
pub fn remove_shards_of(main: &Path) -> Result<(), CheckpointError> {
    let Some(name) = main.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    let prefix = format!("{name}.head-");
    let dir = main.parent().unwrap_or(Path::new("."));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

/// Deletes `path`; already gone is fine (on a shared folder rank 0 prunes every rank's shards
/// of an old checkpoint while each rank prunes its own).
fn remove(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// Every shard the main file `path` lists, checked against the manifest (present, the same
/// CRC and step): a sharded checkpoint is whole only with all of them.
pub fn verify_all(path: &Path, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
    for shard in &ckpt.meta.head_shards {
        load_shard(path, ckpt, shard)?;
    }
    Ok(())
}

/// The shard file `shard` of the checkpoint `ckpt` (read from `path`), checked as
/// [`verify_all`] says.
fn load_shard(
    path: &Path,
    ckpt: &Checkpoint,
    shard: &HeadShard,
) -> Result<Checkpoint, CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = dir.join(&shard.file);
    let mismatch = |message: String| CheckpointError::Mismatch {
        path: file.clone(),
        message,
    };
    let c = match Checkpoint::load(&file) {
        Ok(c) => c,
        Err(CheckpointError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(mismatch(format!(
                "head shard of rank {} missing, named by {}: copy every `.head-*` file beside it",
                shard.rank,
                path.display()
            )));
        }
        Err(e) => return Err(e),
    };
    if c.crc != shard.crc || c.meta.step != ckpt.meta.step {
        return Err(mismatch(format!(
            "not the shard {} lists (CRC {:08x} and step {}, the manifest says {:08x} and step \
             {}): a shard of another save",
            path.display(),
            c.crc,
            c.meta.step,
            shard.crc,
            ckpt.meta.step
        )));
    }
    Ok(c)
}

fn mismatch(path: &Path, message: String) -> CheckpointError {
    CheckpointError::Mismatch {
        path: path.to_path_buf(),
        message,
    }
}

/// Whether a checkpoint tensor is an optimiser buffer of the head's centres
/// ("momentum.head.weight", "exp_avg.head.weight", …): cut by rows with them.
pub fn is_head_buffer(name: &str) -> bool {
    name.len() > WEIGHT.len() && name.ends_with(&format!(".{WEIGHT}"))
}

/// The head's rows `start..start + len` of checkpoint `ckpt` (read from `path`) as
/// ([len, E] weight, its optimiser buffers by name, [len · E] each): from the file itself when
/// the head is inside, else from the overlapping shards, each checked against the manifest.
pub fn head_rows(
    path: &Path,
    ckpt: &Checkpoint,
    start: usize,
    len: usize,
) -> Result<(TensorData, BTreeMap<String, TensorData>), CheckpointError> {
    let classes = ckpt.meta.num_classes;
    if start + len > classes {
        return Err(mismatch(
            path,
            format!(
                "rows {start}..{} asked of a head of {classes} classes",
                start + len
            ),
        ));
    }
    let mut rows = Rows {
        weight: Vec::new(),
        buffers: None,
        width: None,
    };
    if ckpt.meta.head_shards.is_empty() {
        rows.take(path, ckpt, 0..classes, start..start + len)?;
    } else {
        let mut covered = 0;
        for shard in &ckpt.meta.head_shards {
            covered += shard.len;
            let (from, to) = (
                start.max(shard.start),
                (start + len).min(shard.start + shard.len),
            );
            if from >= to {
                continue;
            }
            let file = path.parent().unwrap_or(Path::new(".")).join(&shard.file);
            let c = load_shard(path, ckpt, shard)?;
            rows.take(&file, &c, shard.start..shard.start + shard.len, from..to)?;
        }
        if covered != classes {
            return Err(mismatch(
                path,
                format!("its shards hold {covered} classes, the checkpoint {classes}"),
            ));
        }
    }
    let e = rows.width.unwrap_or(0);
    let buffers = rows
        .buffers
        .unwrap_or_default()
        .into_iter()
        .map(|(name, values)| (name, TensorData::new(values, [len * e])))
        .collect();
    Ok((TensorData::new(rows.weight, [len, e]), buffers))
}

/// Head rows collected from one file after another.
struct Rows {
    weight: Vec<f32>,
    /// The optimiser buffers' rows, by name: the first file's names, which every other must
    /// hold too.
    buffers: Option<BTreeMap<String, Vec<f32>>>,
    /// The embedding width, once a file has told it.
    width: Option<usize>,
}

impl Rows {
    /// Rows `wanted` of the file `file` (checkpoint `c`), which holds rows `held`.
    fn take(
        &mut self,
        file: &Path,
        c: &Checkpoint,
        held: std::ops::Range<usize>,
        wanted: std::ops::Range<usize>,
    ) -> Result<(), CheckpointError> {
        let rows = held.len();
        let w = c
            .tensors
            .get(WEIGHT)
            .ok_or_else(|| mismatch(file, format!("tensor `{WEIGHT}` is missing")))?;
        let shape = w.shape().to_vec();
        if shape.len() != 2 || shape[0] != rows {
            return Err(mismatch(
                file,
                format!("`{WEIGHT}` has shape {shape:?}, the manifest says {rows} rows"),
            ));
        }
        let e = shape[1];
        if *self.width.get_or_insert(e) != e {
            return Err(mismatch(
                file,
                format!("`{WEIGHT}` is {e} wide, other shards not"),
            ));
        }
        let span = (wanted.start - held.start) * e..(wanted.end - held.start) * e;
        let values = w.as_slice::<f32>().expect("checkpoints hold f32");
        self.weight.extend_from_slice(&values[span.clone()]);
        let names: Vec<&String> = c.tensors.keys().filter(|k| is_head_buffer(k)).collect();
        let buffers = self
            .buffers
            .get_or_insert_with(|| names.iter().map(|&n| (n.clone(), Vec::new())).collect());
        if !names.iter().copied().eq(buffers.keys()) {
            return Err(mismatch(
                file,
                format!(
                    "the head's optimiser buffers are {names:?} here, {:?} in other shards",
                    buffers.keys().collect::<Vec<_>>()
                ),
            ));
        }
        for (name, out) in buffers.iter_mut() {
            let m = c.tensors[name]
                .as_slice::<f32>()
                .expect("checkpoints hold f32");
            if m.len() != rows * e {
                return Err(mismatch(
                    file,
                    format!("`{name}` has {} values, the weight {}", m.len(), rows * e),
                ));
            }
            out.extend_from_slice(&m[span.clone()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::checkpoint::{Meta, step_path};
    use crate::config::Config;
    use crate::data::loader::Cursor;

    const CLASSES: usize = 10;
    const E: usize = 3;

    fn meta(step: usize, head_shards: Vec<HeadShard>) -> Meta {
        Meta {
            config: Config::default(),
            num_classes: CLASSES,
            step,
            cursor: Cursor::default(),
            world_size: 2,
            accuracy: None,
            tensors: Vec::new(),
            head_shards,
            run: None,
            skipped_records: Vec::new(),
            adaface_norms: None,
        }
    }

    /// Centre c's values are c·10 + column; momentum the negatives.
    fn rows(start: usize, len: usize, sign: f32) -> TensorData {
        let v: Vec<f32> = (start..start + len)
            .flat_map(|c| (0..E).map(move |j| sign * (c * 10 + j) as f32))
            .collect();
        TensorData::new(v, [len, E])
    }

    /// A 2-rank checkpoint of step 6 (classes 0..5 and 5..10) written as training writes it.
    fn sharded(dir: &Path) -> PathBuf {
        let main = step_path(dir, 6);
        let mut entries = Vec::new();
        for (rank, (start, len)) in [(0, 5), (5, 5)].into_iter().enumerate() {
            let path = shard_path(&main, rank, 2);
            let entry = HeadShard {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                rank,
                start,
                len,
                crc: 0,
            };
            let mut tensors = BTreeMap::new();
            tensors.insert(WEIGHT.to_string(), rows(start, len, 1.0));
            // SGD's one buffer and AdamW's second, each [len · E].
            for (name, sign) in [(MOMENTUM, -1.0), ("exp_avg_sq.head.weight", -2.0)] {
                let m = rows(start, len, sign);
                tensors.insert(
                    name.to_string(),
                    TensorData::new(m.try_to_vec::<f32>().unwrap(), [len * E]),
                );
            }
            let crc = Checkpoint {
                meta: meta(6, vec![entry.clone()]),
                tensors,
                crc: 0,
            }
            .save(&path)
            .unwrap();
            entries.push(HeadShard { crc, ..entry });
        }
        Checkpoint {
            meta: meta(6, entries),
            tensors: BTreeMap::new(),
            crc: 0,
        }
        .save(&main)
        .unwrap();
        main
    }

    fn cut(
        main: &Path,
        start: usize,
        len: usize,
    ) -> Result<(TensorData, BTreeMap<String, TensorData>), CheckpointError> {
        head_rows(main, &Checkpoint::load(main).unwrap(), start, len)
    }

    /// Any world size's ranges, across the shards' boundary too: the rows of the whole head.
    #[test]
    fn rows_are_cut_from_the_shards_at_any_world_size() {
        let dir = tempfile::tempdir().unwrap();
        let main = sharded(dir.path());
        for world in [1, 2, 3, 4] {
            for rank in 0..world {
                let (base, extra) = (CLASSES / world, CLASSES % world);
                let start = base * rank + rank.min(extra);
                let len = base + usize::from(rank < extra);
                let (w, buffers) = cut(&main, start, len).unwrap();
                assert_eq!(w, rows(start, len, 1.0), "world {world} rank {rank}");
                assert_eq!(buffers.len(), 2);
                for (name, sign) in [(MOMENTUM, -1.0), ("exp_avg_sq.head.weight", -2.0)] {
                    assert_eq!(
                        buffers[name].try_to_vec::<f32>().unwrap(),
                        rows(start, len, sign).try_to_vec::<f32>().unwrap()
                    );
                }
            }
        }
    }

    /// A missing shard, one of another save, or a damaged one: errors naming the shard file.
    #[test]
    fn missing_or_foreign_shards_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let main = sharded(dir.path());
        let second = shard_path(&main, 1, 2);
        let kept = std::fs::read(&second).unwrap();
        std::fs::remove_file(&second).unwrap();
        let err = cut(&main, 0, CLASSES).unwrap_err().to_string();
        assert!(
            err.contains(&second.display().to_string()) && err.contains("missing"),
            "{err}"
        );
        // Rows of rank 0's shard alone still read.
        assert!(cut(&main, 0, 5).is_ok());
        // Another save's shard in its place (a step 9 written over it).
        let mut tensors = BTreeMap::new();
        tensors.insert(WEIGHT.to_string(), rows(5, 5, 1.0));
        Checkpoint {
            meta: meta(9, Vec::new()),
            tensors,
            crc: 0,
        }
        .save(&second)
        .unwrap();
        let err = cut(&main, 0, CLASSES).unwrap_err().to_string();
        assert!(err.contains("a shard of another save"), "{err}");
        // Damaged.
        let mut bytes = kept;
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        std::fs::write(&second, bytes).unwrap();
        let err = cut(&main, 0, CLASSES).unwrap_err().to_string();
        assert!(
            err.contains(&second.display().to_string()) && err.contains("damaged"),
            "{err}"
        );
    }

    /// A pruned checkpoint's shards go with it, of any world size; another step's stay.
    #[test]
    fn a_pruned_checkpoints_shards_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        for step in [6, 9] {
            for rank in 0..2 {
                std::fs::write(shard_path(&step_path(dir.path(), step), rank, 2), b"").unwrap();
            }
        }
        remove_shards_of(&step_path(dir.path(), 6)).unwrap();
        assert!(!shard_path(&step_path(dir.path(), 6), 0, 2).exists());
        assert!(shard_path(&step_path(dir.path(), 9), 0, 2).exists());
    }
}
