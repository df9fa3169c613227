//! `arcface pack` (identity folders → insightface's train.rec/.idx/property) and
//! `arcface pack-pairs` (a pairs list → a validation .bin in the MS1M style).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use rayon::prelude::*;

use super::bin::PairSet;
use super::dataset::image_folder;
use super::image::{FACE_SIZE, decode_rgb, encode_jpeg, to_face_size};
use super::irheader::IrHeader;
use super::property::Property;
use super::recordio::RecordWriter;

/// insightface packs at JPEG quality 95.
const QUALITY: u8 = 95;

/// The bytes to store for an image file: the file itself when it already is a 112×112 JPEG
/// (re-encoding would only lose quality), else decoded, resized if needed, JPEG q95.
pub fn face_jpeg(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rgb = decode_rgb(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let is_jpeg = matches!(image::guess_format(&bytes), Ok(image::ImageFormat::Jpeg));
    if is_jpeg && rgb.dimensions() == (FACE_SIZE, FACE_SIZE) {
        return Ok(bytes);
    }
    Ok(encode_jpeg(&to_face_size(rgb), QUALITY))
}

/// Packs `images` (one folder per identity, sorted by name → labels 0, 1, …) into `out`.
/// Writes to temporary names and renames at the end, so a failure leaves no half dataset.
pub fn pack_folder(
    images: &Path,
    out: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<(usize, usize)> {
    // The folder as training reads one (src/data/dataset.rs): the same labels and keys.
    let files: Vec<(usize, PathBuf)> = image_folder(images)?
        .into_iter()
        .map(|(path, label)| (label as usize, path))
        .collect();
    let identities = files.last().map_or(0, |f| f.0 + 1);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (rec, idx) = (out.join("train.rec.tmp"), out.join("train.idx.tmp"));
    let mut writer = RecordWriter::create(&rec, &idx)?;
    let n = files.len() as u64;
    let (a, b) = (1 + n, 1 + n + identities as u64);
    writer.write(
        0,
        &IrHeader::with_labels(vec![a as f32, b as f32], 0).pack(&[]),
    )?;
    progress.set_length(n);
    let mut ranges = vec![(u64::MAX, 0u64); identities];
    let mut key = 1u64;
    for chunk in files.chunks(512) {
        let encoded: Vec<Vec<u8>> = chunk
            .par_iter()
            .map(|(_, path)| face_jpeg(path))
            .collect::<Result<_>>()?;
        for ((label, _), jpeg) in chunk.iter().zip(encoded) {
            writer.write(key, &IrHeader::scalar(*label as f32, key).pack(&jpeg))?;
            let r = &mut ranges[*label];
            *r = (r.0.min(key), key + 1);
            key += 1;
        }
        progress.inc(chunk.len() as u64);
    }
    for (i, &(first, end)) in ranges.iter().enumerate() {
        let k = a + i as u64;
        writer.write(
            k,
            &IrHeader::with_labels(vec![first as f32, end as f32], k).pack(&[]),
        )?;
    }
    writer.finish()?;
    let property = Property {
        num_classes: identities,
        height: FACE_SIZE as usize,
        width: FACE_SIZE as usize,
    };
    property.write(out)?;
    for (from, to) in [(&rec, out.join("train.rec")), (&idx, out.join("train.idx"))] {
        std::fs::rename(from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    }
    Ok((files.len(), identities))
}

/// Reads `pathA<TAB>pathB<TAB>1|0` lines (paths relative to `images`) into a pair set.
pub fn pack_pairs(
    pairs: &Path,
    images: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<PairSet> {
    let text = std::fs::read_to_string(pairs)
        .with_context(|| format!("cannot read {}", pairs.display()))?;
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [a, b, same] = fields[..] else {
            bail!(
                "{}: line {}: expected `pathA<TAB>pathB<TAB>1|0`, found {line:?}",
                pairs.display(),
                i + 1
            );
        };
        let same = match same.trim() {
            "1" => true,
            "0" => false,
            other => bail!(
                "{}: line {}: third field must be 1 or 0, found {other:?}",
                pairs.display(),
                i + 1
            ),
        };
        list.push((images.join(a), images.join(b), same));
    }
    ensure!(!list.is_empty(), "{}: no pairs", pairs.display());
    progress.set_length(list.len() as u64);
    let encoded: Vec<(Vec<u8>, Vec<u8>)> = list
        .par_iter()
        .map(|(a, b, _)| {
            let pair = (face_jpeg(a)?, face_jpeg(b)?);
            progress.inc(1);
            Ok(pair)
        })
        .collect::<Result<_>>()?;
    let mut set = PairSet {
        images: Vec::with_capacity(2 * list.len()),
        issame: Vec::new(),
    };
    for ((a, b), (_, _, same)) in encoded.into_iter().zip(&list) {
        set.images.push(a);
        set.images.push(b);
        set.issame.push(*same);
    }
    Ok(set)
}
