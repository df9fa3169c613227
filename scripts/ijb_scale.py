"""IJB-C's scoring at its real size on random features: writes a folder with IJB-C's counts
(469,375 crops, 23,124 templates, 15,658,489 pairs of which 19,557 genuine) and random
[469,375, 1024] float32 image features, then times numpy's `verification` of eval_ijbc.py
(the pair-scoring stage, batches of 100,000) on template features of the same shape.

    python scripts/ijb_scale.py OUT_DIR
    arcface eval --ijb OUT_DIR/IJBC --features OUT_DIR/features.npy    # ours, whole scoring

Prints JSON {"pairs", "numpy_pair_seconds", "numpy_pairs_per_second"}.
"""
import json
import os
import sys
import time

import numpy as np

CROPS, TEMPLATES, PAIRS, GENUINE, DIM = 469_375, 23_124, 15_658_489, 19_557, 512


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    d = os.path.join(out, "IJBC")
    os.makedirs(os.path.join(d, "meta"), exist_ok=True)
    templates = np.sort(rng.integers(0, TEMPLATES, CROPS))
    templates[:TEMPLATES] = np.arange(TEMPLATES)  # every template has a crop
    templates.sort()
    medias = templates * 8 + rng.integers(0, 8, CROPS)
    names = [f"{i}.jpg" for i in range(CROPS)]
    with open(os.path.join(d, "meta/ijbc_face_tid_mid.txt"), "w") as f:
        f.writelines(f"{n} {t} {m}\n" for n, t, m in zip(names, templates, medias))
    points = rng.uniform(20, 90, (CROPS, 10))
    scores = rng.uniform(0.5, 1.0, CROPS)
    with open(os.path.join(d, "meta/ijbc_name_5pts_score.txt"), "w") as f:
        f.writelines(
            n + " " + " ".join(f"{v:.2f}" for v in p) + f" {s:.4f}\n"
            for n, p, s in zip(names, points, scores)
        )
    t1 = rng.integers(0, TEMPLATES, PAIRS)
    t2 = rng.integers(0, TEMPLATES, PAIRS)
    label = np.zeros(PAIRS, dtype=np.int64)
    label[rng.choice(PAIRS, GENUINE, replace=False)] = 1
    np.savetxt(os.path.join(d, "meta/ijbc_template_pair_label.txt"),
               np.stack([t1, t2, label], 1), fmt="%d")
    np.save(os.path.join(out, "features.npy"),
            rng.standard_normal((CROPS, 2 * DIM), dtype=np.float32))

    # eval_ijbc.py's verification() on template features of IJB-C's shape.
    feats = rng.standard_normal((TEMPLATES, DIM))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    unique = np.arange(TEMPLATES)
    template2id = np.zeros((max(unique) + 1, 1), dtype=int)
    template2id[unique] = unique[:, None]
    score = np.zeros((PAIRS,))
    start = time.perf_counter()
    for i in range(0, PAIRS, 100000):
        s = np.arange(i, min(i + 100000, PAIRS))
        f1 = feats[template2id[t1[s]]]
        f2 = feats[template2id[t2[s]]]
        score[s] = np.sum(f1 * f2, -1).flatten()
    took = time.perf_counter() - start
    print(json.dumps({"pairs": PAIRS, "numpy_pair_seconds": took, "numpy_pairs_per_second": PAIRS / took}))


if __name__ == "__main__":
    main()
