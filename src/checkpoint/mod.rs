//! Checkpoints, written by training and read by eval, infer, export, import and resume: one
//! self-describing file per checkpoint holding the backbone, the head, the optimizer's momentum
//! buffers, the step, epoch and loader cursor, and the config used. A run of several ranks keeps
//! the head's centres on the ranks (model parallel): each writes its shard beside the main
//! file, which lists them and is written last (`shards`).
//!
//! Layout: `ARCFCKPT`, u32 LE version, u64 LE length of a JSON header, the header, the tensors
//! (f32 LE, in header order), and a CRC-32 of everything before it. Written to a temporary file,
//! fsynced and renamed (`crate::fs::write_atomically`), so a kill at any moment leaves the
//! previous checkpoint intact; the CRC detects a damaged file. Every random draw of training is
//! counter-based on (seed, step), so (seed, step, cursor) is the whole random state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::loader::Cursor;

mod named;
pub mod save;
pub mod shards;

pub use named::{TensorMismatch, load_named, named_gradients, named_tensors};

const MAGIC: &[u8; 8] = b"ARCFCKPT";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Everything but the tensor bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub config: Config,
    pub num_classes: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// The loader position to continue from.
    pub cursor: Cursor,
    /// The ranks that trained it (1 for files from before distributed training).
    #[serde(default = "one")]
    pub world_size: usize,
    /// Mean validation accuracy at this checkpoint, if validated.
    pub accuracy: Option<f64>,
    pub tensors: Vec<TensorEntry>,
    /// The head's centres and their momentum in shard files, one per rank (empty: in this
    /// file). In a shard file: the one entry describing itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub head_shards: Vec<shards::HeadShard>,
    /// The training run this checkpoint belongs to, named when the run started fresh and kept
    /// by every resume (None: written before runs were named). Pruning and best.ckpt touch
    /// only the files of their own run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Keys of the training records that failed to decode and were skipped so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_records: Vec<u64>,
    /// An AdaFace head's running statistics of the feature norms (None: another head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaface_norms: Option<crate::model::NormStatistics>,
}

fn one() -> usize {
    1
}

/// A header written before the cursor counted samples (`{"epoch", "batch"}`, global batches of
/// batch_size × the config's device count): the same position in samples.
fn migrate_cursor(header: &mut serde_json::Value) {
    let batch_size = header["config"]["batch_size"].as_u64();
    let devices = header["config"]["device"]
        .as_str()
        .and_then(|d| d.parse::<crate::device::DeviceSpec>().ok())
        .map_or(1, |spec| match spec {
            crate::device::DeviceSpec::Cuda(list) => list.len() as u64,
            _ => 1,
        });
    let cursor = &mut header["cursor"];
    if let (Some(batch), None, Some(batch_size)) =
        (cursor["batch"].as_u64(), cursor.get("sample"), batch_size)
    {
        cursor["sample"] = (batch * batch_size * devices).into();
    }
}

pub struct Checkpoint {
    pub meta: Meta,
    pub tensors: BTreeMap<String, TensorData>,
    /// The file's CRC-32 when loaded (0 for one not yet written).
    pub crc: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        // Not named `source`: thiserror would then make it the error's cause too, and a
        // chain printed with `{:#}` would say it twice.
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Mismatch { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |error| CheckpointError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl Checkpoint {
    /// Writes atomically (`crate::fs::write_atomically`): a kill at any moment leaves the
    /// previous file at `path`, or none. Returns the file's CRC-32 (its last four bytes).
    pub fn save(&self, path: &Path) -> Result<u32, CheckpointError> {
        let mut meta = self.meta.clone();
        meta.tensors = self
            .tensors
            .iter()
            .map(|(name, data)| TensorEntry {
                name: name.clone(),
                shape: data.shape().to_vec(),
            })
            .collect();
        let header = serde_json::to_vec(&meta).expect("checkpoint metadata serialises");
        let mut crc = 0;
        crate::fs::write_atomically(path, |out| {
            // The CRC is computed as the bytes go out: r100's checkpoint is ~0.6 GB, not to be
            // held twice.
            let mut hasher = crc32fast::Hasher::new();
            let mut put = |bytes: &[u8]| -> std::io::Result<()> {
                hasher.update(bytes);
                out.write_all(bytes)
            };
            put(MAGIC)?;
            put(&VERSION.to_le_bytes())?;
            put(&(header.len() as u64).to_le_bytes())?;
            put(&header)?;
            for data in self.tensors.values() {
                let values = data
                    .as_slice::<f32>()
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                put(&bytes)?;
            }
            crc = hasher.finalize();
            out.write_all(&crc.to_le_bytes())
        })
        .map_err(io_err(path))?;
        Ok(crc)
    }

    /// The header alone (no CRC check: that needs the whole file, [`Checkpoint::load`]).
    pub fn read_meta(path: &Path) -> Result<Meta, CheckpointError> {
        use std::io::Read;
        let damaged = |message: &str| damaged(path, message);
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        let mut start = [0u8; 20];
        file.read_exact(&mut start)
            .map_err(|_| damaged("not an arcface checkpoint (too short)"))?;
        let header_len = header_length(&start, path)?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        if header_len as u64 > file_len {
            return Err(damaged("header runs past the end"));
        }
        let mut header = vec![0u8; header_len];
        file.read_exact(&mut header)
            .map_err(|_| damaged("header runs past the end"))?;
        parse_header(&header, path)
    }

    pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let damaged = |message: &str| damaged(path, message);
        if bytes.len() < 24 || &bytes[..8] != MAGIC {
            return Err(damaged("not an arcface checkpoint (wrong magic)"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let crc = u32::from_le_bytes(crc.try_into().unwrap());
        if crc32fast::hash(body) != crc {
            return Err(damaged(
                "checksum mismatch: the file is damaged or truncated; use an earlier checkpoint",
            ));
        }
        let header_len = header_length(&body[..20], path)?;
        let header = body
            .get(20..20 + header_len)
            .ok_or_else(|| damaged("header runs past the end"))?;
        let meta = parse_header(header, path)?;
        let mut pos = 20 + header_len;
        let mut tensors = BTreeMap::new();
        for entry in &meta.tensors {
            let n: usize = entry.shape.iter().product();
            let raw = body
                .get(pos..pos + 4 * n)
                .ok_or_else(|| damaged(&format!("tensor `{}` runs past the end", entry.name)))?;
            let values: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            tensors.insert(
                entry.name.clone(),
                TensorData::new(values, entry.shape.clone()),
            );
            pos += 4 * n;
        }
        Ok(Checkpoint { meta, tensors, crc })
    }

    /// Tensors under `prefix` (e.g. "backbone.") with the prefix kept.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, TensorData> {
        self.tensors
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn damaged(path: &Path, message: &str) -> CheckpointError {
    CheckpointError::Damaged {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The header's length from the first 20 bytes of the file `path` (magic, format version,
/// length).
fn header_length(start: &[u8], path: &Path) -> Result<usize, CheckpointError> {
    if &start[..8] != MAGIC {
        return Err(damaged(path, "not an arcface checkpoint (wrong magic)"));
    }
    let version = u32::from_le_bytes(start[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(damaged(
            path,
            &format!("checkpoint format version {version}, this build reads {VERSION}"),
        ));
    }
    Ok(u64::from_le_bytes(start[12..20].try_into().unwrap()) as usize)
}

/// The JSON header of the file `path`, older layouts migrated.
fn parse_header(header: &[u8], path: &Path) -> Result<Meta, CheckpointError> {
    let bad = |e: serde_json::Error| damaged(path, &format!("bad header: {e}"));
    let mut header: serde_json::Value = serde_json::from_slice(header).map_err(bad)?;
    migrate_cursor(&mut header);
    serde_json::from_value(header).map_err(bad)
}

/// Copies a written checkpoint to `to`, atomically as [`Checkpoint::save`] writes.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    let mut source = std::fs::File::open(from).map_err(io_err(from))?;
    crate::fs::write_atomically(to, |out| std::io::copy(&mut source, out).map(drop))
        .map_err(io_err(to))
}

/// `<dir>/step-<step>.ckpt`, zero-padded so names sort by step.
pub fn step_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("step-{step:09}.ckpt"))
}

/// Step checkpoints in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("step-") && name.ends_with(".ckpt")
        })
        .collect();
    found.sort();
    found
}

/// Keeps the newest `keep` step checkpoints of run `run`; the head shards of the others go
/// with them. Files of another run, and files whose header cannot be read, are not touched.
pub fn prune(dir: &Path, keep: usize, run: &Option<String>) -> Result<(), CheckpointError> {
    let own: Vec<PathBuf> = list(dir)
        .into_iter()
        .filter(|p| Checkpoint::read_meta(p).is_ok_and(|m| &m.run == run))
        .collect();
    for old in &own[..own.len().saturating_sub(keep)] {
        std::fs::remove_file(old).map_err(io_err(old))?;
        shards::remove_shards_of(old)?;
    }
    Ok(())
}

/// Checks a checkpoint whole: the main file's CRC and every head shard it lists (present, its
/// CRC and step those of the manifest). Returns the loaded main file.
pub fn verify(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let ckpt = Checkpoint::load(path)?;
    shards::verify_all(path, &ckpt)?;
    Ok(ckpt)
}

/// The checkpoint file `path` names: the file itself, or for a folder (a training run's
/// `output`) its best.ckpt, else its newest step checkpoint. For a folder, also which one was
/// taken, for the user.
pub fn resolve(path: &Path) -> Result<(PathBuf, Option<String>), CheckpointError> {
    if !path.is_dir() {
        return Ok((path.to_path_buf(), None));
    }
    let best = path.join("best.ckpt");
    let (file, why) = if best.is_file() {
        (best, "its best.ckpt")
    } else if let Some(newest) = list(path).pop() {
        (
            newest,
            "its newest step checkpoint (no best.ckpt: nothing validated yet)",
        )
    } else {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            message: "a folder without best.ckpt or step-*.ckpt: give a checkpoint file or the \
                      `output` folder of a training run"
                .into(),
        });
    };
    let note = format!("{}: {why}, {}", path.display(), file.display());
    Ok((file, Some(note)))
}

/// The backbone stored in a checkpoint (a file, or a training output folder: [`resolve`], said
/// on stderr), in inference mode on `device`, with its metadata.
pub fn load_backbone(
    path: &Path,
    device: &burn::tensor::Device,
) -> anyhow::Result<(crate::model::Backbone, Meta)> {
    let (path, note) = resolve(path)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    let path = path.as_path();
    let ckpt = Checkpoint::load(path)?;
    let model = ckpt.meta.config.backbone().init(device);
    let model = load_named(model, "backbone.", &ckpt.tensors)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((model.valid(), ckpt.meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A training output folder means its best.ckpt, else its newest step checkpoint; a folder
    /// with neither is an error naming it. (Only names are looked at here.)
    #[test]
    fn a_folder_resolves_to_best_then_the_newest_step() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("without best.ckpt or step-*.ckpt"), "{err}");
        for step in [3, 12] {
            std::fs::write(step_path(dir.path(), step), b"").unwrap();
        }
        let (file, note) = resolve(dir.path()).unwrap();
        assert_eq!(file, step_path(dir.path(), 12));
        assert!(note.unwrap().contains("newest step checkpoint"));
        std::fs::write(dir.path().join("best.ckpt"), b"").unwrap();
        let (file, note) = resolve(dir.path()).unwrap();
        assert_eq!(file, dir.path().join("best.ckpt"));
        assert!(note.unwrap().contains("its best.ckpt"));
        // A file is itself, without a note.
        let one = step_path(dir.path(), 3);
        assert_eq!(resolve(&one).unwrap(), (one, None));
    }
}
