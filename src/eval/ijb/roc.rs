//! scikit-learn's `roc_curve` (with its default `drop_intermediate=True`) and `auc`, and
//! eval_ijbc.py's TAR at a FAR: the point of the nearest FPR, ties to the larger TPR.

/// FPR, TPR and the thresholds, as sklearn returns them (the first threshold +∞).
#[derive(Debug, Clone, Default)]
pub struct Roc {
    pub fpr: Vec<f64>,
    pub tpr: Vec<f64>,
    pub thresholds: Vec<f64>,
}

/// `sklearn.metrics.roc_curve(labels, scores)`: scores sorted descending, one point at the
/// last index of each distinct score, collinear intermediate points dropped, (0, 0) prepended.
pub fn roc_curve(labels: &[bool], scores: &[f64]) -> Roc {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut fps, mut tps, mut thresholds) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tp, mut fp) = (0f64, 0f64);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_value = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_value {
            fps.push(fp);
            tps.push(tp);
            thresholds.push(scores[i]);
        }
    }
    if fps.len() > 2 {
        // np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        let n = fps.len();
        let keep: Vec<usize> = (0..n)
            .filter(|&k| {
                k == 0
                    || k == n - 1
                    || fps[k - 1] - 2.0 * fps[k] + fps[k + 1] != 0.0
                    || tps[k - 1] - 2.0 * tps[k] + tps[k + 1] != 0.0
            })
            .collect();
        fps = keep.iter().map(|&k| fps[k]).collect();
        tps = keep.iter().map(|&k| tps[k]).collect();
        thresholds = keep.iter().map(|&k| thresholds[k]).collect();
    }
    fps.insert(0, 0.0);
    tps.insert(0, 0.0);
    thresholds.insert(0, f64::INFINITY);
    let (fp_all, tp_all) = (*fps.last().unwrap(), *tps.last().unwrap());
    Roc {
        fpr: fps.iter().map(|f| f / fp_all).collect(),
        tpr: tps.iter().map(|t| t / tp_all).collect(),
        thresholds,
    }
}

/// The trapezoidal area under (x, y), x ascending (`sklearn.metrics.auc`).
pub fn auc(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
        .sum()
}

/// eval_ijbc.py's TAR at `far`: over the ROC flipped (descending FPR), the first point of the
/// smallest |FPR − far|, i.e. of equal distances the one of the larger TPR.
pub fn tar_at_far(roc: &Roc, far: f64) -> f64 {
    let mut best = (f64::INFINITY, 0.0);
    for (f, t) in roc.fpr.iter().zip(&roc.tpr).rev() {
        let distance = (f - far).abs();
        if distance < best.0 {
            best = (distance, *t);
        }
    }
    best.1
}
