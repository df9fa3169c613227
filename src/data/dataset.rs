//! A training set: an insightface folder (`train.rec`, `train.idx`, `property`) or an image
//! folder (`<identity>/<images>`, as torchvision's ImageFolder and `arcface pack` read it).
//!
//! RecordIO: record 0 (header0) has a label array [a, b): images are keys 1..a−1 and keys
//! a..b−1 are per-identity records whose labels are [first_image, end_image). Folders without
//! header0 (flag 0 at key 0, as some other packers write) take every indexed key as an image.
//!
//! Image folder: the identity folders sorted by name are labels 0, 1, …, as ImageFolder numbers
//! them; their image files (torchvision's extensions, hidden files skipped) sorted by name, one
//! after the other, are keys 1, 2, …: the keys and labels `arcface pack` gives the same folder,
//! so both make the same batches. An image not 112×112 is resized when loaded (`decode_face`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::image::FACE_SIZE;
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
    storage: Storage,
    pub property: Property,
    /// Images in key order.
    pub images: Vec<ImageEntry>,
    /// header0's identity range [a, b), when the folder has one.
    pub identity_keys: Option<(u64, u64)>,
    /// What a person should know about the data (an image folder of other sizes).
    pub notes: Vec<String>,
}

enum Storage {
    Rec {
        rec: RecFile,
        index: HashMap<u64, u64>,
    },
    /// Image i (key i + 1): its file and identity.
    Folder(Vec<(PathBuf, u32)>),
}

/// torchvision's IMG_EXTENSIONS: the files ImageFolder takes as images.
const IMAGE_EXTENSIONS: [&str; 9] = [
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// The folders (`want_dirs`) or image files of `dir`, sorted by name, hidden ones skipped.
pub fn sorted_entries(dir: &Path, want_dirs: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let hidden = name.as_ref().is_some_and(|n| n.starts_with('.'));
        let image = path.extension().is_some_and(|e| {
            IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())
        });
        if !hidden && path.is_dir() == want_dirs && (want_dirs || image) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// `dir`'s identity folders and their image files, labelled in name order; errors name the
/// folder with no identities, or the identity folder with no images.
pub fn image_folder(dir: &Path) -> Result<Vec<(PathBuf, u32)>, DatasetError> {
    let layout = |path: &Path, message: &str| DatasetError::Layout {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let listing = |path: &Path, e: std::io::Error| layout(path, &format!("cannot list it: {e}"));
    let identities = sorted_entries(dir, true).map_err(|e| listing(dir, e))?;
    if identities.is_empty() {
        return Err(layout(
            dir,
            "no train.rec and no identity folders (expected train.rec/.idx/property or \
             <identity>/<images>)",
        ));
    }
    let mut files = Vec::new();
    for (label, folder) in identities.iter().enumerate() {
        let images = sorted_entries(folder, false).map_err(|e| listing(folder, e))?;
        if images.is_empty() {
            return Err(layout(
                folder,
                &format!(
                    "identity folder without images ({})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        files.extend(images.into_iter().map(|f| (f, label as u32)));
    }
    Ok(files)
}

/// One decoded-header record: the identity and the encoded image bytes.
pub struct Sample {
    pub key: u64,
    pub label: u32,
    pub image: Vec<u8>,
}

impl RecDataset {
    /// A RecordIO folder where `dir` holds train.rec, else an image folder.
    pub fn open(dir: &Path) -> Result<RecDataset, DatasetError> {
        if !dir.join("train.rec").exists() && dir.is_dir() {
            return Self::open_image_folder(dir);
        }
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
            storage: Storage::Rec { rec, index },
            property,
            images: Vec::new(),
            identity_keys: None,
            notes: Vec::new(),
        };
        let header0 = match dataset.offset_of(0) {
            Some(offset) => Some(dataset.header_at(0, offset)?.0),
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
                    if dataset.offset_of(key).is_none() {
                        return Err(layout(format!(
                            "key {key} (inside header0's range [1, {b})) is missing"
                        )));
                    }
                }
                dataset.images = (1..a)
                    .map(|key| ImageEntry {
                        key,
                        offset: dataset.offset_of(key).expect("checked above"),
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

    fn open_image_folder(dir: &Path) -> Result<RecDataset, DatasetError> {
        let files = image_folder(dir)?;
        let side = FACE_SIZE as usize;
        let mut notes = Vec::new();
        if let Ok((w, h)) = image::image_dimensions(&files[0].0)
            && (w, h) != (FACE_SIZE, FACE_SIZE)
        {
            notes.push(format!(
                "{} is {w}×{h}: images that are not {side}×{side} are resized as they load",
                files[0].0.display()
            ));
        }
        let identities = files.last().map_or(0, |f| f.1 as usize + 1);
        Ok(RecDataset {
            dir: dir.to_path_buf(),
            images: (1..=files.len() as u64)
                .map(|key| ImageEntry { key, offset: 0 })
                .collect(),
            storage: Storage::Folder(files),
            property: Property {
                num_classes: identities,
                height: side,
                width: side,
            },
            identity_keys: None,
            notes,
        })
    }

    /// The offset of `key` in train.rec (None: not indexed, or an image folder).
    fn offset_of(&self, key: u64) -> Option<u64> {
        match &self.storage {
            Storage::Rec { index, .. } => index.get(&key).copied(),
            Storage::Folder(_) => None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where record `key` is read from, for errors: train.rec, or an image folder's file.
    pub fn source_of(&self, key: u64) -> PathBuf {
        match &self.storage {
            Storage::Rec { rec, .. } => rec.path().to_path_buf(),
            Storage::Folder(files) => files
                .get(key as usize - 1)
                .map_or_else(|| self.dir.clone(), |f| f.0.clone()),
        }
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
            path: self.source_of(key),
            key,
            message,
        }
    }

    fn header_at(&self, key: u64, offset: u64) -> Result<(IrHeader, Vec<u8>), DatasetError> {
        let Storage::Rec { rec, .. } = &self.storage else {
            return Err(self.record_error(key, "an image folder has no records".into()));
        };
        let (payload, _) = rec.read_at(offset)?;
        let (header, body) =
            IrHeader::unpack(&payload).map_err(|e| self.record_error(key, e.to_string()))?;
        Ok((header, body.to_vec()))
    }

    /// The `i`-th image (key order): its identity, checked against `property`, and its bytes.
    pub fn sample(&self, i: usize) -> Result<Sample, DatasetError> {
        let entry = self.images[i];
        if let Storage::Folder(files) = &self.storage {
            let (path, label) = &files[i];
            let image = std::fs::read(path).map_err(|e| DatasetError::Record {
                path: path.clone(),
                key: entry.key,
                message: format!("cannot read it: {e}"),
            })?;
            return Ok(Sample {
                key: entry.key,
                label: *label,
                image,
            });
        }
        let (header, image) = self.header_at(entry.key, entry.offset)?;
        let label = header.identity();
        if !(label >= 0.0 && label.fract() == 0.0 && (label as usize) < self.num_classes()) {
            return Err(DatasetError::Label {
                path: self.source_of(entry.key),
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
        let offset = self
            .offset_of(key)
            .ok_or_else(|| self.record_error(key, "not in the index".into()))?;
        let (header, _) = self.header_at(key, offset)?;
        match header.labels[..] {
            [first, end, ..] if first <= end => Ok((first as u64, end as u64)),
            _ => Err(self.record_error(key, "identity record needs labels [first, end)".into())),
        }
    }
}
