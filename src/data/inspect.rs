//! `arcface inspect`: what a dataset folder or .bin holds, and everything wrong with it.

use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use super::bin::PairSet;
use super::dataset::RecDataset;
use super::image::decode_face;

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Rec {
        images: usize,
        identities: usize,
        image_size: [usize; 2],
        decoded: usize,
        errors: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        labels: Option<Vec<u32>>,
    },
    Bin {
        pairs: usize,
        same: usize,
        decoded: usize,
        errors: Vec<String>,
    },
}

impl Report {
    pub fn errors(&self) -> &[String] {
        match self {
            Report::Rec { errors, .. } | Report::Bin { errors, .. } => errors,
        }
    }
}

/// Inspects a folder (train.rec/.idx/property) or a .bin file. `verify` decodes every image;
/// `labels` lists the identity of every image in key order (folders only).
pub fn inspect(
    path: &Path,
    verify: bool,
    labels: bool,
    progress: &indicatif::ProgressBar,
) -> Report {
    if path.is_dir() {
        inspect_rec(path, verify, labels, progress)
    } else {
        inspect_bin(path, verify, progress)
    }
}

fn inspect_rec(
    dir: &Path,
    verify: bool,
    want_labels: bool,
    progress: &indicatif::ProgressBar,
) -> Report {
    let dataset = match RecDataset::open(dir) {
        Ok(d) => d,
        Err(e) => {
            return Report::Rec {
                images: 0,
                identities: 0,
                image_size: [0, 0],
                decoded: 0,
                errors: vec![e.to_string()],
                labels: None,
            };
        }
    };
    let mut errors = Vec::new();
    let identities = match dataset.header_identities() {
        Some(k) => {
            if k as usize != dataset.num_classes() {
                errors.push(format!(
                    "{}: property says {} identities, header0 has {k}",
                    dir.join("property").display(),
                    dataset.num_classes()
                ));
            }
            k as usize
        }
        None => dataset.num_classes(),
    };
    let mut labels = None;
    let mut decoded = 0;
    if verify || want_labels {
        progress.set_length(dataset.len() as u64);
        let results: Vec<anyhow::Result<(u32, bool)>> = (0..dataset.len())
            .into_par_iter()
            .map(|i| {
                let sample = dataset.sample(i)?;
                let ok = if verify {
                    decode_face(&sample.image).with_context(|| {
                        format!(
                            "{}: key {}",
                            dataset.source_of(sample.key).display(),
                            sample.key
                        )
                    })?;
                    true
                } else {
                    false
                };
                progress.inc(1);
                Ok((sample.label, ok))
            })
            .collect();
        let mut list = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok((label, ok)) => {
                    list.push(label);
                    decoded += usize::from(ok);
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if verify {
            errors.extend(check_identity_records(&dataset, &list));
        }
        labels = want_labels.then_some(list);
    }
    Report::Rec {
        images: dataset.len(),
        identities,
        image_size: [dataset.property.height, dataset.property.width],
        decoded,
        errors,
        labels,
    }
}

/// Each identity record's [first, end) must hold exactly the images labelled with it.
/// With header0, images are keys 1..a−1 in order, so image key k is at index k − 1.
fn check_identity_records(dataset: &RecDataset, labels: &[u32]) -> Vec<String> {
    let Some((a, b)) = dataset.identity_keys else {
        return Vec::new();
    };
    if labels.len() != dataset.len() {
        return Vec::new(); // Unreadable images were reported already.
    }
    let mut count = vec![0usize; dataset.num_classes().max((b - a) as usize)];
    for &l in labels {
        if let Some(c) = count.get_mut(l as usize) {
            *c += 1;
        }
    }
    let mut errors = Vec::new();
    for (identity, key) in (a..b).enumerate() {
        let (first, end) = match dataset.identity_range(key) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let bad = if first < 1 || end > a {
            Some(format!(
                "range [{first}, {end}) is outside the image keys [1, {a})"
            ))
        } else if let Some(k) =
            (first..end).find(|&k| labels[(k - 1) as usize] as usize != identity)
        {
            Some(format!(
                "image key {k} in its range has label {}",
                labels[(k - 1) as usize]
            ))
        } else if count[identity] as u64 != end - first {
            Some(format!(
                "{} images carry the label, the range holds {}",
                count[identity],
                end - first
            ))
        } else {
            None
        };
        if let Some(why) = bad {
            errors.push(format!(
                "{}: identity record key {key} (identity {identity}, images [{first}, {end})): {why}",
                dataset.dir().join("train.rec").display()
            ));
        }
    }
    errors
}

fn inspect_bin(path: &Path, verify: bool, progress: &indicatif::ProgressBar) -> Report {
    let set = match PairSet::read(path) {
        Ok(s) => s,
        Err(e) => {
            return Report::Bin {
                pairs: 0,
                same: 0,
                decoded: 0,
                errors: vec![e.to_string()],
            };
        }
    };
    let mut errors = Vec::new();
    let mut decoded = 0;
    if verify {
        progress.set_length(set.images.len() as u64);
        let results: Vec<anyhow::Result<()>> = set
            .images
            .par_iter()
            .enumerate()
            .map(|(i, bytes)| {
                progress.inc(1);
                decode_face(bytes)
                    .map(|_| ())
                    .with_context(|| format!("{}: pair {} image {i}", path.display(), i / 2))
            })
            .collect();
        for r in results {
            match r {
                Ok(()) => decoded += 1,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
    }
    Report::Bin {
        pairs: set.pairs(),
        same: set.same(),
        decoded,
        errors,
    }
}
