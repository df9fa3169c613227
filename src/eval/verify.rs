//! insightface's verification protocol (`eval/verification.py`): squared L2 distance between
//! the normalised embeddings of each pair, thresholds 0, 0.01, …, 3.99, 10 contiguous folds
//! (the first n % 10 one longer, as sklearn's KFold without shuffle); per fold, the first
//! threshold that maximises accuracy on the other nine scores the held-out fold.

/// Thresholds on the squared distance, as insightface: `np.arange(0, 4, 0.01)`.
/// Compared in f64 like numpy's float64 `arange` against the float32 distances.
pub fn thresholds() -> Vec<f64> {
    (0..400).map(|i| i as f64 * 0.01).collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Verification {
    pub pairs: usize,
    /// Mean held-out accuracy over the folds.
    pub accuracy: f64,
    /// Standard deviation of the fold accuracies (numpy's population std, as insightface).
    pub std: f64,
    /// Mean of the per-fold best thresholds.
    pub threshold: f64,
    pub fold_accuracies: Vec<f64>,
    /// Mean over folds of the held-out TPR and FPR at each threshold (the ROC curve).
    pub tpr: Vec<f64>,
    pub fpr: Vec<f64>,
}

/// The fold boundaries of sklearn's `KFold(n_splits)` without shuffling.
pub fn folds(n: usize, n_folds: usize) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    (0..n_folds)
        .map(|f| {
            let len = n / n_folds + usize::from(f < n % n_folds);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// (true positives, false positives, true negatives, false negatives) at `threshold`.
fn confusion(
    threshold: f64,
    dist: &[f32],
    issame: &[bool],
    idx: impl Iterator<Item = usize>,
) -> [usize; 4] {
    let mut c = [0; 4];
    for i in idx {
        let predict = (dist[i] as f64) < threshold;
        c[match (predict, issame[i]) {
            (true, true) => 0,
            (true, false) => 1,
            (false, false) => 2,
            (false, true) => 3,
        }] += 1;
    }
    c
}

fn accuracy([tp, _, tn, _]: [usize; 4], n: usize) -> f64 {
    (tp + tn) as f64 / n as f64
}

/// Runs the protocol on squared distances `dist[i]` of pair i with truth `issame[i]`.
pub fn verify(dist: &[f32], issame: &[bool], n_folds: usize) -> Verification {
    assert_eq!(dist.len(), issame.len(), "one distance per pair");
    let n = dist.len();
    let ths = thresholds();
    let folds = folds(n, n_folds);
    let mut fold_accuracies = Vec::new();
    let mut best = Vec::new();
    let mut tpr = vec![0.0; ths.len()];
    let mut fpr = vec![0.0; ths.len()];
    for test in &folds {
        let train = || (0..n).filter(|i| !test.contains(i));
        let n_train = n - test.len();
        // argmax returns the first maximum, like numpy's.
        let mut best_index = 0;
        let mut best_acc = f64::MIN;
        for (t, &th) in ths.iter().enumerate() {
            let acc = accuracy(confusion(th, dist, issame, train()), n_train);
            if acc > best_acc {
                best_acc = acc;
                best_index = t;
            }
        }
        for (t, &th) in ths.iter().enumerate() {
            let [tp, fp, tn, fn_] = confusion(th, dist, issame, test.clone());
            tpr[t] += if tp + fn_ == 0 {
                0.0
            } else {
                tp as f64 / (tp + fn_) as f64
            };
            fpr[t] += if fp + tn == 0 {
                0.0
            } else {
                fp as f64 / (fp + tn) as f64
            };
        }
        let c = confusion(ths[best_index], dist, issame, test.clone());
        fold_accuracies.push(accuracy(c, test.len()));
        best.push(ths[best_index]);
    }
    let k = folds.len() as f64;
    tpr.iter_mut().chain(fpr.iter_mut()).for_each(|v| *v /= k);
    let mean = fold_accuracies.iter().sum::<f64>() / k;
    let var = fold_accuracies
        .iter()
        .map(|a| (a - mean).powi(2))
        .sum::<f64>()
        / k;
    Verification {
        pairs: n,
        accuracy: mean,
        std: var.sqrt(),
        threshold: best.iter().sum::<f64>() / k,
        fold_accuracies,
        tpr,
        fpr,
    }
}

/// Rows scaled to unit L2 norm (a zero row stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Squared L2 distance.
pub fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// insightface's test-time embedding: l2norm(e(image) + e(flipped image)).
pub fn flip_sum_embedding(
    image: &image::RgbImage,
    embed: impl Fn(&image::RgbImage) -> Vec<f32>,
) -> Vec<f32> {
    let mut e = embed(image);
    let flipped = embed(&image::imageops::flip_horizontal(image));
    e.iter_mut().zip(&flipped).for_each(|(a, b)| *a += b);
    l2_normalize(&mut e);
    e
}

/// The protocol with raw pixels, (x − 127.5) / 128 as the model's input, as the "embedding":
/// the baseline a learned embedder has to beat.
pub fn raw_pixel_verification(set: &crate::data::bin::PairSet) -> anyhow::Result<Verification> {
    use anyhow::Context;
    use rayon::prelude::*;
    let pixels = |img: &image::RgbImage| {
        img.as_raw()
            .iter()
            .map(|&p| (p as f32 - 127.5) / 128.0)
            .collect()
    };
    let embeddings = set
        .images
        .par_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let img = crate::data::image::decode_face_exact(bytes)
                .with_context(|| format!("image {i} (pair {})", i / 2))?;
            Ok(flip_sum_embedding(&img, pixels))
        })
        .collect::<anyhow::Result<Vec<Vec<f32>>>>()?;
    let dist: Vec<f32> = embeddings
        .chunks(2)
        .map(|p| squared_distance(&p[0], &p[1]))
        .collect();
    Ok(verify(&dist, &set.issame, 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_sklearn_kfold() {
        let f = folds(23, 10);
        assert_eq!(f[0], 0..3);
        assert_eq!(f[2], 6..9);
        assert_eq!(f[3], 9..11);
        assert_eq!(f[9], 21..23);
    }

    #[test]
    fn separable_pairs_score_one() {
        let issame: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        let dist: Vec<f32> = issame.iter().map(|&s| if s { 0.5 } else { 2.5 }).collect();
        let v = verify(&dist, &issame, 10);
        assert_eq!(v.accuracy, 1.0);
        assert_eq!(v.std, 0.0);
        // The first threshold that separates: 0.51.
        assert!((v.threshold - 0.51).abs() < 1e-6, "{}", v.threshold);
    }
}
