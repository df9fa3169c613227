//! Validation `.bin` files: a pickle of `(bins, issame_list)`, `bins` holding 2N encoded images
//! (pair i is images 2i and 2i+1). Three styles exist in the wild: Python 2 protocol 2 (`str`
//! as BINSTRING / SHORT_BINSTRING: insightface's MS1M files), Python 3 bytes, and numpy uint8
//! arrays of the encoded image. Read by our own pickle machine (`pickle.rs` says why not
//! serde-pickle).
//!
//! The writer is ours too: the MS1M style is protocol 2 with BINSTRING, which Python 2 and 3
//! (`encoding="bytes"`) both read, and which no maintained Rust pickle crate writes.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::pickle::{self, Value};

#[derive(Debug, thiserror::Error)]
pub enum BinError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        // Not named `source`: thiserror would then make it the error's cause too, and a
        // chain printed with `{:#}` would say it twice.
        error: std::io::Error,
    },
    #[error("{path}: not a readable pickle: {message}")]
    Pickle { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Shape { path: PathBuf, message: String },
}

/// A verification set: `images[2i]` and `images[2i + 1]` are pair i, `issame[i]` its truth.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSet {
    pub images: Vec<Vec<u8>>,
    pub issame: Vec<bool>,
}

impl PairSet {
    pub fn pairs(&self) -> usize {
        self.issame.len()
    }

    pub fn same(&self) -> usize {
        self.issame.iter().filter(|&&s| s).count()
    }

    /// Reads a .bin of any of the three styles.
    pub fn read(path: &Path) -> Result<PairSet, BinError> {
        let bytes = std::fs::read(path).map_err(|error| BinError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_pickle(&bytes, path)
    }

    /// Parses pickle bytes; `path` only names the source in errors.
    pub fn from_pickle(bytes: &[u8], path: &Path) -> Result<PairSet, BinError> {
        let shape = |message: String| BinError::Shape {
            path: path.to_path_buf(),
            message,
        };
        let document = pickle::load(bytes).map_err(|e| BinError::Pickle {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let (bins, issame) = match &document.root {
            Value::Tuple(items) if items.len() == 2 => (items[0].clone(), items[1].clone()),
            Value::List(items) if items.borrow().len() == 2 => {
                let items = items.borrow();
                (items[0].clone(), items[1].clone())
            }
            other => {
                return Err(shape(format!(
                    "expected a pickled (bins, issame_list) pair, found {}",
                    other.describe()
                )));
            }
        };
        let Value::List(bins) = &bins else {
            return Err(shape(format!(
                "bins: expected a list of encoded images, found {}",
                bins.describe()
            )));
        };
        let mut images = Vec::with_capacity(bins.borrow().len());
        let mut total = 0usize;
        for (i, v) in bins.borrow().iter().enumerate() {
            let Some(data) = v.array_bytes() else {
                return Err(shape(format!(
                    "bins[{i}] (pair {}): expected encoded image bytes, found {}",
                    i / 2,
                    v.describe()
                )));
            };
            total += data.len();
            // Images stored once each never add up to more than the file; more means the
            // pickle repeats references to expand itself.
            if total > bytes.len() {
                return Err(shape(format!(
                    "bins[{i}]: the images add up to more bytes than the file holds (repeated references)"
                )));
            }
            images.push(data.to_vec());
        }
        let issame = flags(&issame).map_err(|m| shape(format!("issame_list: {m}")))?;
        if !images.len().is_multiple_of(2) {
            return Err(shape(format!(
                "bins holds {} images, an odd number: images come in pairs",
                images.len()
            )));
        }
        if images.len() / 2 != issame.len() {
            return Err(shape(format!(
                "bins holds {} pairs but issame_list has {} entries",
                images.len() / 2,
                issame.len()
            )));
        }
        Ok(PairSet { images, issame })
    }

    /// Writes the MS1M style (Python 2 protocol 2, BINSTRING, a list of bools), atomically.
    pub fn write(&self, path: &Path) -> Result<(), BinError> {
        let io = |error| BinError::Io {
            path: path.to_path_buf(),
            error,
        };
        crate::fs::write_atomically(path, |out| write_protocol2(out, &self.images, &self.issame))
            .map_err(io)
    }
}

fn flags(v: &Value) -> Result<Vec<bool>, String> {
    if let Value::Object(_) = v {
        // A numpy bool array: one byte per entry.
        let data = v.array_bytes().ok_or("a numpy array without data")?;
        return data
            .iter()
            .map(|&b| match b {
                0 | 1 => Ok(b == 1),
                _ => Err(format!("numpy array byte {b} is not a bool")),
            })
            .collect();
    }
    let Value::List(items) = v else {
        return Err(format!("expected a list of bools, found {}", v.describe()));
    };
    items
        .borrow()
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Bool(b) => Ok(*b),
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => Err(format!(
                "entry {i}: expected a bool, found {}",
                other.describe()
            )),
        })
        .collect()
}

/// `pickle.dump((bins, issame), f, protocol=2)` as Python 2 writes it for `str` images.
fn write_protocol2(
    out: &mut impl Write,
    images: &[Vec<u8>],
    issame: &[bool],
) -> std::io::Result<()> {
    const PROTO: u8 = 0x80;
    const EMPTY_LIST: u8 = b']';
    const MARK: u8 = b'(';
    const APPENDS: u8 = b'e';
    const SHORT_BINSTRING: u8 = b'U';
    const BINSTRING: u8 = b'T';
    const NEWTRUE: u8 = 0x88;
    const NEWFALSE: u8 = 0x89;
    const TUPLE2: u8 = 0x86;
    const STOP: u8 = b'.';
    // Python batches appends by 1000 items.
    const BATCH: usize = 1000;

    out.write_all(&[PROTO, 2, EMPTY_LIST])?;
    for chunk in images.chunks(BATCH) {
        out.write_all(&[MARK])?;
        for image in chunk {
            if image.len() < 256 {
                out.write_all(&[SHORT_BINSTRING, image.len() as u8])?;
            } else {
                let len = u32::try_from(image.len())
                    .map_err(|_| std::io::Error::other("an image over 4 GiB cannot be pickled"))?;
                out.write_all(&[BINSTRING])?;
                out.write_all(&len.to_le_bytes())?;
            }
            out.write_all(image)?;
        }
        out.write_all(&[APPENDS])?;
    }
    out.write_all(&[EMPTY_LIST])?;
    for chunk in issame.chunks(BATCH) {
        out.write_all(&[MARK])?;
        out.write_all(
            &chunk
                .iter()
                .map(|&s| if s { NEWTRUE } else { NEWFALSE })
                .collect::<Vec<_>>(),
        )?;
        out.write_all(&[APPENDS])?;
    }
    out.write_all(&[TUPLE2, STOP])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_round_trips_through_the_reader() {
        let set = PairSet {
            images: vec![vec![1, 2, 3], vec![0xff; 300], vec![], vec![9; 255]],
            issame: vec![true, false],
        };
        let mut bytes = Vec::new();
        write_protocol2(&mut bytes, &set.images, &set.issame).unwrap();
        assert_eq!(
            PairSet::from_pickle(&bytes, Path::new("x.bin")).unwrap(),
            set
        );
    }

    #[test]
    fn odd_image_count_is_an_error() {
        let mut bytes = Vec::new();
        write_protocol2(&mut bytes, &[vec![1], vec![2], vec![3]], &[true]).unwrap();
        let err = PairSet::from_pickle(&bytes, Path::new("x.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.bin") && err.contains("odd"), "{err}");
    }
}
