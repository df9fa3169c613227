"""Independent reference of arcface_torch's eval_ijbc.py (numpy + scikit-learn), and of its
alignment (skimage's SimilarityTransform + OpenCV's warpAffine).

`python ijb.py verify DIR TARGET FEATURES.npy [--no-flip] [--no-norm] [--no-detector-score]`
prints {"auc", "tar_at_far": {"1e-06": ...}, "templates", "pairs"}: eval_ijbc.py's
read_template_media_list, read_template_pair_list, image2template_feature, verification,
roc_curve / auc and its nearest-FPR table, in float64.

`python ijb.py align DIR TARGET OUT.npy` writes every crop aligned as eval_ijbc.py's
Embedding.get does (the template with x + 8, SimilarityTransform, warpAffine with
borderValue 0), RGB uint8 [N, 112, 112, 3].
"""
import json
import sys

import cv2
import numpy as np
from skimage import transform as trans
from sklearn.metrics import auc, roc_curve
from sklearn.preprocessing import normalize


def meta(d, t):
    media = np.loadtxt(f"{d}/meta/{t}_face_tid_mid.txt", dtype=str, ndmin=2)
    pairs = np.loadtxt(f"{d}/meta/{t}_template_pair_label.txt", dtype=np.int64, ndmin=2)
    points = np.loadtxt(f"{d}/meta/{t}_name_5pts_score.txt", dtype=str, ndmin=2)
    return media, pairs, points


def image2template_feature(img_feats, templates, medias):
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    return normalize(template_feats), unique_templates


def verification(template_norm_feats, unique_templates, p1, p2):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    feat1 = template_norm_feats[template2id[p1]]
    feat2 = template_norm_feats[template2id[p2]]
    score[:] = np.sum(feat1 * feat2, -1).flatten()
    return score


def verify(d, t, features, flip, norm_score, detector_score):
    media, pairs, points = meta(d, t)
    templates = media[:, 1].astype(np.int64)
    medias = media[:, 2].astype(np.int64)
    faceness = points[:, -1].astype(np.float64)
    img_feats = np.load(features).astype(np.float64)
    half = img_feats.shape[1] // 2
    feats = img_feats[:, :half] + img_feats[:, half:] if flip else img_feats[:, :half]
    if not norm_score:
        feats = feats / np.sqrt(np.sum(feats ** 2, -1, keepdims=True))
    if detector_score:
        feats = feats * faceness[:, np.newaxis]
    tfeats, unique = image2template_feature(feats, templates, medias)
    score = verification(tfeats, unique, pairs[:, 0], pairs[:, 1])
    fpr, tpr, _ = roc_curve(pairs[:, 2], score)
    roc_auc = auc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    table = {}
    for key, far in [("1e-06", 1e-6), ("1e-05", 1e-5), ("0.0001", 1e-4), ("0.001", 1e-3), ("0.01", 1e-2), ("0.1", 1e-1)]:
        _, min_index = min(list(zip(abs(fpr - far), range(len(fpr)))))
        table[key] = float(tpr[min_index])
    return {"auc": float(roc_auc), "tar_at_far": table, "templates": int(len(unique)), "pairs": int(len(pairs))}


def align(d, t, out):
    _, _, points = meta(d, t)
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                    [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    crops = []
    for row in points:
        landmark = row[1:11].astype(np.float32).reshape(5, 2)
        tform = trans.SimilarityTransform()
        tform.estimate(landmark, src)
        img = cv2.imread(f"{d}/loose_crop/{row[0]}")
        img = cv2.warpAffine(img, tform.params[0:2, :], (112, 112), borderValue=0.0)
        crops.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    np.save(out, np.stack(crops).reshape(len(crops), -1).astype(np.float32))


def main():
    if sys.argv[1] == "verify":
        d, t, f = sys.argv[2:5]
        rest = sys.argv[5:]
        print(json.dumps(verify(d, t, f, "--no-flip" not in rest, "--no-norm" not in rest,
                                "--no-detector-score" not in rest)))
    else:
        align(*sys.argv[2:5])


if __name__ == "__main__":
    main()
