//! IJB-B / IJB-C 1:1 verification as arcface_torch's eval_ijbc.py computes it: each crop aligned
//! by the similarity transform of its five points onto the ArcFace template (112×112, zero
//! border), embedded with its mirror; per image the sum of the two (or the plain one), its norm
//! kept (or L2 normalised), times the detector score; per template, the images of
//! one media averaged and the media summed, L2 normalised; a pair's score the cosine of its
//! templates; the ROC as scikit-learn's `roc_curve` (drop_intermediate), its AUC, and TAR at each
//! FAR taken at the nearest FPR (ties to the larger TPR), as eval_ijbc's table.

pub mod meta;
pub mod npy;
pub mod roc;

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

pub use meta::IjbSet;

use crate::data::image::to_chw;
use crate::embedder::{Embedder, IMAGE_VALUES};

/// eval_ijbc.py's FARs, with the keys Python prints them as.
pub const FARS: [(&str, f64); 6] = [
    ("1e-06", 1e-6),
    ("1e-05", 1e-5),
    ("0.0001", 1e-4),
    ("0.001", 1e-3),
    ("0.01", 1e-2),
    ("0.1", 1e-1),
];

/// eval_ijbc.py's modes (its defaults: all true).
#[derive(Debug, Clone, Copy)]
pub struct Protocol {
    /// Add the mirror image's embedding (use_flip_test).
    pub flip: bool,
    /// Keep each image feature's norm (use_norm_score, test mode N1); else L2-normalise it.
    pub norm_score: bool,
    /// Multiply by the detector's score (use_detector_score).
    pub detector_score: bool,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            flip: true,
            norm_score: true,
            detector_score: true,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IjbResult {
    pub name: String,
    pub images: usize,
    pub templates: usize,
    pub pairs: usize,
    pub auc: f64,
    pub tar_at_far: BTreeMap<String, f64>,
    #[serde(skip)]
    pub roc: roc::Roc,
    /// Seconds of each stage: image features, template features, pair scores, ROC.
    #[serde(skip)]
    pub seconds: [f64; 4],
}

/// Every crop of `set` aligned and embedded with its mirror, `batch` crops at a time, with a
/// progress bar: [N, 2E] as eval_ijbc.py's `img_feats` (the plain embedding, then the mirror's).
pub fn embed(set: &IjbSet, embedder: &Embedder, batch: usize) -> Result<Vec<f32>> {
    let n = set.crops.len();
    let e = embedder.embedding_size();
    let bar = crate::progress::bar(n as u64, &format!("embedding {} crops", set.name));
    let mut features = Vec::with_capacity(n * 2 * e);
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let faces = (start..end)
            .into_par_iter()
            .map(|i| {
                let path = set.crop_path(i);
                let image = crate::infer::read_image(&path)?;
                crate::infer::align_face(&image, &set.landmarks[i]).with_context(|| {
                    format!(
                        "{}: its five landmarks coincide; no alignment",
                        path.display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut both = [Vec::new(), Vec::new()];
        for (k, flip) in [false, true].into_iter().enumerate() {
            let mut data = vec![0f32; faces.len() * IMAGE_VALUES];
            data.par_chunks_mut(IMAGE_VALUES)
                .zip(&faces)
                .for_each(|(out, rgb)| to_chw(rgb, flip, out));
            both[k] = embedder.embed(&data)?;
        }
        for r in 0..faces.len() {
            features.extend_from_slice(&both[0][r * e..(r + 1) * e]);
            features.extend_from_slice(&both[1][r * e..(r + 1) * e]);
        }
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    Ok(features)
}

/// Per image: [N, D] in f64 from eval_ijbc's `img_feats` [N, 2D] under `protocol`.
pub fn image_features(raw: &[f32], scores: &[f32], protocol: Protocol) -> Vec<f64> {
    let n = scores.len();
    let d = raw.len() / n / 2;
    let mut out = vec![0f64; n * d];
    out.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
        let x = &raw[i * 2 * d..(i + 1) * 2 * d];
        for (j, v) in row.iter_mut().enumerate() {
            *v = x[j] as f64 + if protocol.flip { x[d + j] as f64 } else { 0.0 };
        }
        if !protocol.norm_score {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
        }
        if protocol.detector_score {
            row.iter_mut().for_each(|v| *v *= scores[i] as f64);
        }
    });
    out
}

/// Per template (ascending ids): the mean of each media's images, summed over its media, L2
/// normalised (a zero vector stays zero, as sklearn's normalize): ([T] ids, [T, D]).
pub fn template_features(
    images: &[f64],
    d: usize,
    templates: &[u64],
    medias: &[u64],
) -> (Vec<u64>, Vec<f64>) {
    let mut by_template: BTreeMap<u64, BTreeMap<u64, Vec<usize>>> = BTreeMap::new();
    for (i, (&t, &m)) in templates.iter().zip(medias).enumerate() {
        by_template
            .entry(t)
            .or_default()
            .entry(m)
            .or_default()
            .push(i);
    }
    let ids: Vec<u64> = by_template.keys().copied().collect();
    let groups: Vec<&BTreeMap<u64, Vec<usize>>> = by_template.values().collect();
    let mut feats = vec![0f64; ids.len() * d];
    feats
        .par_chunks_mut(d)
        .zip(groups)
        .for_each(|(row, media)| {
            for members in media.values() {
                let mut mean = vec![0f64; d];
                for &i in members {
                    for (m, v) in mean.iter_mut().zip(&images[i * d..(i + 1) * d]) {
                        *m += v;
                    }
                }
                for (r, m) in row.iter_mut().zip(&mean) {
                    *r += m / members.len() as f64;
                }
            }
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                row.iter_mut().for_each(|v| *v /= norm);
            }
        });
    (ids, feats)
}

/// The cosine of each pair's template features (normalised rows), in parallel chunks: the
/// memory is the output's.
pub fn pair_scores(ids: &[u64], feats: &[f64], d: usize, pairs: &[(u64, u64, bool)]) -> Vec<f64> {
    let row: std::collections::HashMap<u64, usize> =
        ids.iter().enumerate().map(|(k, &t)| (t, k)).collect();
    let mut scores = vec![0f64; pairs.len()];
    scores
        .par_chunks_mut(100_000)
        .zip(pairs.par_chunks(100_000))
        .for_each(|(out, chunk)| {
            for (s, (t1, t2, _)) in out.iter_mut().zip(chunk) {
                let (a, b) = (row[t1] * d, row[t2] * d);
                *s = feats[a..a + d]
                    .iter()
                    .zip(&feats[b..b + d])
                    .map(|(x, y)| x * y)
                    .sum();
            }
        });
    scores
}

/// The whole protocol on eval_ijbc's `img_feats` [N, 2D] of `set`.
pub fn evaluate_features(set: &IjbSet, raw: &[f32], protocol: Protocol) -> Result<IjbResult> {
    let n = set.crops.len();
    anyhow::ensure!(
        raw.len().is_multiple_of(2 * n.max(1)) && !raw.is_empty(),
        "{} values of features for {n} crops: expected [crops, 2 × embedding] (plain, then mirrored)",
        raw.len()
    );
    let d = raw.len() / n / 2;
    let mut clock = std::time::Instant::now();
    let mut seconds = [0.0; 4];
    let mut lap = |k: usize| {
        seconds[k] = clock.elapsed().as_secs_f64();
        clock = std::time::Instant::now();
    };
    let images = image_features(raw, &set.scores, protocol);
    lap(0);
    let (ids, feats) = template_features(&images, d, &set.templates, &set.medias);
    drop(images);
    lap(1);
    let scores = pair_scores(&ids, &feats, d, &set.pairs);
    lap(2);
    let labels: Vec<bool> = set.pairs.iter().map(|p| p.2).collect();
    let roc = roc::roc_curve(&labels, &scores);
    lap(3);
    let tar_at_far = FARS
        .iter()
        .map(|&(key, far)| (key.to_string(), roc::tar_at_far(&roc, far)))
        .collect();
    Ok(IjbResult {
        name: set.name.clone(),
        images: n,
        templates: ids.len(),
        pairs: set.pairs.len(),
        auc: roc::auc(&roc.fpr, &roc.tpr),
        tar_at_far,
        roc,
        seconds,
    })
}
