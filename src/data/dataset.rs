//! An insightface training folder: `train.rec`, `train.idx`, `property`.
//!
//! Record 0 (header0) has a label array [a, b): images are keys 1..a−1 and keys a..b−1 are
//! per-identity records whose labels are [first_image, end_image). Folders without header0
//! (flag 0 at key 0, as some other packers write) take every indexed key as an image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::irheader::IrHeader;
use super::property::{Property, PropertyError};
use super::recordio::{RecFile, RecordIoError, read_index};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    RecordIo(#[from] RecordIoError),
    #[error(transparent)]
    Property(#[from] PropertyError),
    #[error("{path}: key {key}: {message}")]
    Record {
        path: PathBuf,
        key: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
    /// A record whose label is no identity of the data set: the data and its `property`
    /// disagree, which no skipping mends.
    #[error("{path}: key {key}: {message}")]
    Label {
        path: PathBuf,
        key: u64,
        message: String,
    },
}

/// Where an image lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageEntry {
    pub key: u64,
    pub offset: u64,
}

pub struct RecDataset {
    dir: PathBuf,
    rec: RecFile,
    pub property: Property,
    /// Images in key order.
    pub images: Vec<ImageEntry>,
    /// header0's identity range [a, b), when the folder has one.
    pub identity_keys: Option<(u64, u64)>,
    index: HashMap<u64, u64>,
}

/// One decoded-header record: the identity and the encoded image bytes.
pub struct Sample {
    pub key: u64,
    pub label: u32,
    pub image: Vec<u8>,
}

impl RecDataset {
    pub fn open(dir: &Path) -> Result<RecDataset, DatasetError> {
        let property = Property::read(dir)?;
        let rec = RecFile::open(&dir.join("train.rec"))?;
        let idx_path = dir.join("train.idx");
        let entries = read_index(&idx_path)?;
        let index: HashMap<u64, u64> = entries.iter().copied().collect();
        let layout = |message: String| DatasetError::Layout {
            path: idx_path.clone(),
            message,
        };
        if let Some(&(key, offset)) = entries.iter().find(|(_, offset)| *offset >= rec.len()) {
            return Err(layout(format!(
                "key {key}: offset {offset} points past the end of {} ({} bytes)",
                rec.path().display(),
                rec.len()
            )));
        }
        let mut dataset = RecDataset {
            dir: dir.to_path_buf(),
            rec,
            property,
            images: Vec::new(),
            identity_keys: None,
            index,
        };
        let header0 = match dataset.index.get(&0) {
            Some(&offset) => Some(dataset.header_at(0, offset)?.0),
            None => None,
        };
        match header0 {
            Some(h) if h.flag > 0 => {
                if h.labels.len() < 2 {
                    return Err(dataset.record_error(0, "header0 needs two labels [a, b)".into()));
                }
                let (a, b) = (h.labels[0], h.labels[1]);
                if !(a >= 1.0
                    && b >= a
                    && a.fract() == 0.0
                    && b.fract() == 0.0
                    && b < 2f32.powi(24))
                {
                    return Err(dataset.record_error(
                        0,
                        format!("header0 range [{a}, {b}) is not a valid key range"),
                    ));
                }
                let (a, b) = (a as u64, b as u64);
                let last = entries.iter().map(|(k, _)| *k).max().unwrap_or(0);
                if b > last + 1 {
                    return Err(layout(format!(
                        "header0 range [{a}, {b}) runs past the end of the index (last key {last})"
                    )));
                }
                for key in 1..b {
                    if !dataset.index.contains_key(&key) {
                        return Err(layout(format!(
                            "key {key} (inside header0's range [1, {b})) is missing"
                        )));
                    }
                }
                dataset.images = (1..a)
                    .map(|key| ImageEntry {
                        key,
                        offset: dataset.index[&key],
                    })
                    .collect();
                dataset.identity_keys = Some((a, b));
            }
            _ => {
                let mut images: Vec<ImageEntry> = entries
                    .iter()
                    .map(|&(key, offset)| ImageEntry { key, offset })
                    .collect();
                images.sort_by_key(|e| e.key);
                dataset.images = images;
            }
        }
        if dataset.images.is_empty() {
            return Err(layout("the dataset has no images".into()));
        }
        Ok(dataset)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.property.num_classes
    }

    /// Identities per header0 (b − a), if the folder has header0.
    pub fn header_identities(&self) -> Option<u64> {
        self.identity_keys.map(|(a, b)| b - a)
    }

    fn record_error(&self, key: u64, message: String) -> DatasetError {
        DatasetError::Record {
            path: self.rec.path().to_path_buf(),
            key,
            message,
        }
    }

    fn header_at(&self, key: u64, offset: u64) -> Result<(IrHeader, Vec<u8>), DatasetError> {
        let (payload, _) = self.rec.read_at(offset)?;
        let (header, body) =
            IrHeader::unpack(&payload).map_err(|e| self.record_error(key, e.to_string()))?;
        Ok((header, body.to_vec()))
    }

    /// The `i`-th image (key order): its identity, checked against `property`, and its bytes.
    pub fn sample(&self, i: usize) -> Result<Sample, DatasetError> {
        let entry = self.images[i];
        let (header, image) = self.header_at(entry.key, entry.offset)?;
        let label = header.identity();
        if !(label >= 0.0 && label.fract() == 0.0 && (label as usize) < self.num_classes()) {
            return Err(DatasetError::Label {
                path: self.rec.path().to_path_buf(),
                key: entry.key,
                message: format!(
                    "label {label} is not an identity in [0, {}) (property says {} classes)",
                    self.num_classes(),
                    self.num_classes()
                ),
            });
        }
        Ok(Sample {
            key: entry.key,
            label: label as u32,
            image,
        })
    }

    /// The per-identity record of key `key` (header0 folders): [first_image, end_image).
    pub fn identity_range(&self, key: u64) -> Result<(u64, u64), DatasetError> {
        let offset = self.index[&key];
        let (header, _) = self.header_at(key, offset)?;
        match header.labels[..] {
            [first, end, ..] if first <= end => Ok((first as u64, end as u64)),
            _ => Err(self.record_error(key, "identity record needs labels [first, end)".into())),
        }
    }
}
