//! Embedding a verification set with a model and scoring it as insightface's `test()`:
//! embedding = l2norm(e(image) + e(flipped image)), XNorm = mean L2 norm of the unflipped raw
//! embeddings, the 10-fold accuracy, and TAR at FAR = 1e-3 (`calculate_val`).

use anyhow::Context;
use rayon::prelude::*;
use serde::Serialize;

use super::verify::{Verification, folds, l2_normalize, squared_distance, verify};
use crate::data::bin::PairSet;
use crate::data::image::{decode_face_exact, to_chw};
use crate::embedder::{Embedder, IMAGE_VALUES};

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: String,
    pub pairs: usize,
    pub accuracy: f64,
    pub std: f64,
    pub threshold: f64,
    pub xnorm: f64,
    #[serde(rename = "tar_at_far_1e-3")]
    pub tar_at_far_1e3: f64,
    #[serde(skip)]
    pub verification: Verification,
}

/// One embedding per row.
pub type Embeddings = Vec<Vec<f32>>;

/// Raw embeddings of `images` (encoded) and of their mirror images, `batch` images at a time.
pub fn embed_images(
    embedder: &Embedder,
    images: &[Vec<u8>],
    batch: usize,
) -> anyhow::Result<(Embeddings, Embeddings)> {
    let batch = batch.max(1);
    let mut plain = Vec::with_capacity(images.len());
    let mut flipped = Vec::with_capacity(images.len());
    let e = embedder.embedding_size();
    for (chunk_index, chunk) in images.chunks(batch).enumerate() {
        let decoded = chunk
            .par_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let index = chunk_index * batch + i;
                decode_face_exact(bytes)
                    .with_context(|| format!("image {index} (pair {})", index / 2))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for flip in [false, true] {
            let mut data = vec![0f32; chunk.len() * IMAGE_VALUES];
            data.par_chunks_mut(IMAGE_VALUES)
                .zip(&decoded)
                .for_each(|(out, rgb)| to_chw(rgb, flip, out));
            let values = embedder.embed(&data)?;
            let rows = values.chunks_exact(e).map(<[f32]>::to_vec);
            if flip {
                flipped.extend(rows)
            } else {
                plain.extend(rows)
            }
        }
    }
    Ok((plain, flipped))
}

/// Scores `set` under `name` with `embedder`.
pub fn evaluate(
    embedder: &Embedder,
    set: &PairSet,
    name: &str,
    batch: usize,
) -> anyhow::Result<TargetResult> {
    let (plain, flipped) = embed_images(embedder, &set.images, batch)?;
    // verification.py's XNorm: the mean norm over the images' embeddings and their mirror
    // images' (its `embeddings_list` holds both).
    let xnorm = plain
        .iter()
        .chain(&flipped)
        .map(|e| e.iter().map(|v| v * v).sum::<f32>().sqrt() as f64)
        .sum::<f64>()
        / (plain.len() + flipped.len()) as f64;
    let embeddings: Vec<Vec<f32>> = plain
        .iter()
        .zip(&flipped)
        .map(|(a, b)| {
            let mut e: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
            l2_normalize(&mut e);
            e
        })
        .collect();
    let dist: Vec<f32> = embeddings
        .chunks(2)
        .map(|p| squared_distance(&p[0], &p[1]))
        .collect();
    let verification = verify(&dist, &set.issame, 10);
    Ok(TargetResult {
        name: name.to_string(),
        pairs: set.pairs(),
        accuracy: verification.accuracy,
        std: verification.std,
        threshold: verification.threshold,
        xnorm,
        tar_at_far_1e3: tar_at_far(&dist, &set.issame, 1e-3, 10),
        verification,
    })
}

/// (TAR, FAR) at `threshold`: predicted same when dist < threshold.
fn val_far(threshold: f64, dist: &[f32], issame: &[bool], idx: &[usize]) -> (f64, f64) {
    let (mut ta, mut fa, mut n_same, mut n_diff) = (0, 0, 0, 0);
    for &i in idx {
        let predict = (dist[i] as f64) < threshold;
        if issame[i] {
            n_same += 1;
            ta += usize::from(predict);
        } else {
            n_diff += 1;
            fa += usize::from(predict);
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    (ratio(ta, n_same), ratio(fa, n_diff))
}

/// insightface's `calculate_val`: per fold, the threshold (0…4 by 0.001) where the training
/// folds' FAR reaches `far_target`, linearly interpolated; the mean held-out TAR there.
pub fn tar_at_far(dist: &[f32], issame: &[bool], far_target: f64, n_folds: usize) -> f64 {
    let thresholds: Vec<f64> = (0..4000).map(|i| i as f64 * 0.001).collect();
    let n = dist.len();
    let mut tars = Vec::new();
    for test in folds(n, n_folds) {
        let train: Vec<usize> = (0..n).filter(|i| !test.contains(i)).collect();
        let test: Vec<usize> = test.collect();
        let far: Vec<f64> = thresholds
            .iter()
            .map(|&t| val_far(t, dist, issame, &train).1)
            .collect();
        let threshold = if far.iter().cloned().fold(f64::MIN, f64::max) >= far_target {
            interpolate(&far, &thresholds, far_target)
        } else {
            0.0
        };
        tars.push(val_far(threshold, dist, issame, &test).0);
    }
    tars.iter().sum::<f64>() / tars.len() as f64
}

/// Linear interpolation of y at x over points (xs, ys), xs non-decreasing: between the last
/// point below x and the first at or above it (scipy's interp1d 'slinear' on sorted data).
fn interpolate(xs: &[f64], ys: &[f64], x: f64) -> f64 {
    let k = xs.iter().position(|&v| v >= x).unwrap_or(xs.len() - 1);
    if k == 0 || xs[k] == x {
        return ys[k];
    }
    let (x0, x1, y0, y1) = (xs[k - 1], xs[k], ys[k - 1], ys[k]);
    y0 + (y1 - y0) * (x - x0) / (x1 - x0)
}
