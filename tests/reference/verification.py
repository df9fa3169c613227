"""Independent numpy implementation of insightface's verification protocol
(recognition/arcface_torch/eval/verification.py: calculate_roc, calculate_val, test).

Reads JSON {"embeddings1": [[...]], "embeddings2": [[...]], "issame": [...]} where each
embedding is already l2norm(e + e_flip); writes {"accuracy", "std", "best_thresholds",
"tar", "far"}.
"""
import json
import sys

import numpy as np


def kfold(n, n_splits):
    """sklearn.model_selection.KFold(n_splits, shuffle=False).split: contiguous folds, the
    first n % n_splits of them one longer."""
    sizes = np.full(n_splits, n // n_splits, dtype=int)
    sizes[: n % n_splits] += 1
    current = 0
    for size in sizes:
        test = np.arange(current, current + size)
        train = np.concatenate([np.arange(0, current), np.arange(current + size, n)])
        yield train, test
        current += size


def calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def calculate_roc(thresholds, embeddings1, embeddings2, actual_issame, nrof_folds=10):
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    accuracy = np.zeros(nrof_folds)
    best = np.zeros(nrof_folds)
    diff = np.subtract(embeddings1, embeddings2)
    dist = np.sum(np.square(diff), 1)
    for fold_idx, (train_set, test_set) in enumerate(kfold(nrof_pairs, nrof_folds)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        _, _, accuracy[fold_idx] = calculate_accuracy(thresholds[best_threshold_index], dist[test_set], actual_issame[test_set])
        best[fold_idx] = thresholds[best_threshold_index]
    return accuracy, best


def calculate_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same = np.sum(actual_issame)
    n_diff = np.sum(np.logical_not(actual_issame))
    val = float(true_accept) / float(n_same) if n_same else 0.0
    far = float(false_accept) / float(n_diff) if n_diff else 0.0
    return val, far


def calculate_val(thresholds, embeddings1, embeddings2, actual_issame, far_target, nrof_folds=10):
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)
    dist = np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)
    for fold_idx, (train_set, test_set) in enumerate(kfold(nrof_pairs, nrof_folds)):
        far_train = np.array([calculate_val_far(t, dist[train_set], actual_issame[train_set])[1] for t in thresholds])
        if np.max(far_train) >= far_target:
            # interp1d(far_train, thresholds, kind='slinear') at far_target: far_train is
            # non-decreasing; interpolate between the last point below and the first at or above.
            k = int(np.argmax(far_train >= far_target))
            if k == 0 or far_train[k] == far_target:
                threshold = thresholds[k]
            else:
                x0, x1, y0, y1 = far_train[k - 1], far_train[k], thresholds[k - 1], thresholds[k]
                threshold = y0 + (y1 - y0) * (far_target - x0) / (x1 - x0)
        else:
            threshold = 0.0
        val[fold_idx], far[fold_idx] = calculate_val_far(threshold, dist[test_set], actual_issame[test_set])
    return np.mean(val), np.std(val), np.mean(far)


def main():
    q = json.load(sys.stdin)
    e1 = np.array(q["embeddings1"], dtype=np.float32)
    e2 = np.array(q["embeddings2"], dtype=np.float32)
    issame = np.array(q["issame"], dtype=bool)
    accuracy, best = calculate_roc(np.arange(0, 4, 0.01), e1, e2, issame)
    tar, _, far = calculate_val(np.arange(0, 4, 0.001), e1, e2, issame, 1e-3)
    json.dump({"accuracy": float(np.mean(accuracy)), "std": float(np.std(accuracy)),
               "best_thresholds": best.tolist(), "tar": float(tar), "far": float(far)}, sys.stdout)


if __name__ == "__main__":
    main()
