//! MXNet / dmlc RecordIO: `.rec` (records) and `.idx` (`key\toffset` lines).
//!
//! Each part of a record: u32 LE magic 0xCED7230A, u32 LE `cflag << 29 | len`, `len` bytes,
//! zero padding to a multiple of 4. cflag 0 is a whole record; 1/2/3 the first/middle/last part
//! of a record that the writer split where a 4-byte-aligned word of the payload equalled the
//! magic (the word is dropped and the reader puts it back). No crate reads this format without
//! MXNet, so the ~150 lines are ours.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub const MAGIC: u32 = 0xCED7_230A;
const MAGIC_BYTES: [u8; 4] = MAGIC.to_le_bytes();
/// Lengths live in the low 29 bits of the second word.
const MAX_LEN: usize = (1 << 29) - 1;

#[derive(Debug, thiserror::Error)]
pub enum RecordIoError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        // Not named `source`: thiserror would then make it the error's cause too, and a
        // chain printed with `{:#}` would say it twice.
        error: std::io::Error,
    },
    #[error("{path}: offset {offset}: {message}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("{path}: line {line}: {message}")]
    Index {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{path}: record {key} is too large for RecordIO ({len} bytes; the limit is 2^29 − 1 per part)"
    )]
    TooLarge { path: PathBuf, key: u64, len: usize },
}

impl RecordIoError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |error| RecordIoError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// A memory-mapped `.rec` file: nothing is read into RAM until a record is asked for.
pub struct RecFile {
    path: PathBuf,
    map: Mmap,
}

impl RecFile {
    pub fn open(path: &Path) -> Result<RecFile, RecordIoError> {
        let file = File::open(path).map_err(RecordIoError::io(path))?;
        // SAFETY: the map is read-only; a dataset file changed by another process while we
        // train is outside what any reader can defend against (MXNet's included).
        let map = unsafe { Mmap::map(&file) }.map_err(RecordIoError::io(path))?;
        Ok(RecFile {
            path: path.to_path_buf(),
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn corrupt(&self, offset: u64, message: impl Into<String>) -> RecordIoError {
        RecordIoError::Corrupt {
            path: self.path.clone(),
            offset,
            message: message.into(),
        }
    }

    /// The record starting at `offset`, and the offset just past it.
    pub fn read_at(&self, offset: u64) -> Result<(Vec<u8>, u64), RecordIoError> {
        read_record(&self.map, offset).map_err(|(at, message)| self.corrupt(at, message))
    }

    /// Every record in file order with its offset, without an index.
    pub fn scan(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), RecordIoError>> + '_ {
        let mut offset = 0u64;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || offset >= self.len() {
                return None;
            }
            match self.read_at(offset) {
                Ok((record, next)) => {
                    let at = offset;
                    offset = next;
                    Some(Ok((at, record)))
                }
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        })
    }
}

/// Reads the record starting at `offset` of `data`: its payload (split parts joined, magic
/// restored) and the offset just past it; on damage, the offset of the bad part and why.
pub fn read_record(data: &[u8], offset: u64) -> Result<(Vec<u8>, u64), (u64, String)> {
    let mut pos = usize::try_from(offset).unwrap_or(usize::MAX);
    let mut record = Vec::new();
    let mut expect_continuation = false;
    loop {
        let part_start = pos as u64;
        let header = pos
            .checked_add(8)
            .and_then(|end| data.get(pos..end))
            .ok_or((
                part_start,
                "truncated: no record header here (the file ends or the offset points past it)"
                    .to_string(),
            ))?;
        let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
        if magic != MAGIC {
            return Err((
                part_start,
                format!(
                    "wrong magic {magic:#010x} (expected {MAGIC:#010x}): not the start of a record"
                ),
            ));
        }
        let lrec = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let (cflag, len) = (lrec >> 29, (lrec & ((1 << 29) - 1)) as usize);
        let body = data.get(pos + 8..pos + 8 + len).ok_or_else(|| {
            (
                part_start,
                format!(
                    "record length {len} runs past the end of the file ({} bytes)",
                    data.len()
                ),
            )
        })?;
        match (expect_continuation, cflag) {
            (false, 0 | 1) | (true, 2 | 3) => {}
            _ => {
                return Err((
                    part_start,
                    format!("unexpected part flag {cflag} (a split record must go 1, 2…, 3)"),
                ));
            }
        }
        record.extend_from_slice(body);
        pos = (pos + 8 + len.div_ceil(4) * 4).min(data.len());
        match cflag {
            0 | 3 => return Ok((record, pos as u64)),
            _ => {
                record.extend_from_slice(&MAGIC_BYTES);
                expect_continuation = true;
            }
        }
    }
}

/// Writes `.rec` and `.idx` together, as MXNet's `MXIndexedRecordIO`.
pub struct RecordWriter {
    rec_path: PathBuf,
    idx_path: PathBuf,
    rec: BufWriter<File>,
    idx: BufWriter<File>,
    offset: u64,
}

impl RecordWriter {
    pub fn create(rec_path: &Path, idx_path: &Path) -> Result<RecordWriter, RecordIoError> {
        let rec = File::create(rec_path).map_err(RecordIoError::io(rec_path))?;
        let idx = File::create(idx_path).map_err(RecordIoError::io(idx_path))?;
        Ok(RecordWriter {
            rec_path: rec_path.to_path_buf(),
            idx_path: idx_path.to_path_buf(),
            rec: BufWriter::new(rec),
            idx: BufWriter::new(idx),
            offset: 0,
        })
    }

    /// Appends one record under `key`, splitting it at aligned magic words as dmlc does.
    pub fn write(&mut self, key: u64, payload: &[u8]) -> Result<(), RecordIoError> {
        let start = self.offset;
        let mut parts: Vec<(u32, &[u8])> = Vec::new();
        let mut begin = 0;
        let aligned = payload.len() / 4 * 4;
        for i in (0..aligned).step_by(4) {
            if payload[i..i + 4] == MAGIC_BYTES {
                parts.push((if begin == 0 { 1 } else { 2 }, &payload[begin..i]));
                begin = i + 4;
            }
        }
        parts.push((if begin == 0 { 0 } else { 3 }, &payload[begin..]));
        if let Some(&(_, body)) = parts.iter().find(|(_, body)| body.len() > MAX_LEN) {
            return Err(RecordIoError::TooLarge {
                path: self.rec_path.clone(),
                key,
                len: body.len(),
            });
        }
        let mut written = 0u64;
        let mut write_parts = || -> std::io::Result<()> {
            for &(cflag, body) in &parts {
                let lrec = (cflag << 29) | body.len() as u32;
                let pad = body.len().div_ceil(4) * 4 - body.len();
                self.rec.write_all(&MAGIC_BYTES)?;
                self.rec.write_all(&lrec.to_le_bytes())?;
                self.rec.write_all(body)?;
                self.rec.write_all(&[0u8; 3][..pad])?;
                written += 8 + (body.len() + pad) as u64;
            }
            Ok(())
        };
        write_parts().map_err(RecordIoError::io(&self.rec_path))?;
        self.offset += written;
        writeln!(self.idx, "{key}\t{start}").map_err(RecordIoError::io(&self.idx_path))
    }

    /// Flushes both files to disk.
    pub fn finish(mut self) -> Result<(), RecordIoError> {
        self.rec
            .flush()
            .map_err(RecordIoError::io(&self.rec_path))?;
        self.idx
            .flush()
            .map_err(RecordIoError::io(&self.idx_path))?;
        self.rec
            .get_ref()
            .sync_all()
            .map_err(RecordIoError::io(&self.rec_path))?;
        self.idx
            .get_ref()
            .sync_all()
            .map_err(RecordIoError::io(&self.idx_path))
    }
}

/// Parses an `.idx` file into (key, offset) pairs in file order; duplicate keys are an error.
pub fn read_index(path: &Path) -> Result<Vec<(u64, u64)>, RecordIoError> {
    let text = std::fs::read_to_string(path).map_err(RecordIoError::io(path))?;
    parse_index(&text, path)
}

/// Parses `.idx` text; `path` only names the source in errors.
pub fn parse_index(text: &str, path: &Path) -> Result<Vec<(u64, u64)>, RecordIoError> {
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| RecordIoError::Index {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let mut fields = line.split('\t');
        let (Some(key), Some(offset), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad(format!("expected `key<TAB>offset`, found {line:?}")));
        };
        let key: u64 = key
            .trim()
            .parse()
            .map_err(|_| bad(format!("key {key:?} is not an integer")))?;
        let offset: u64 = offset
            .trim()
            .parse()
            .map_err(|_| bad(format!("offset {offset:?} is not an integer")))?;
        if !seen.insert(key) {
            return Err(bad(format!("duplicate key {key}")));
        }
        entries.push((key, offset));
    }
    Ok(entries)
}
