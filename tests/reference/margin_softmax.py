"""Independent numpy reference for the combined-margin softmax loss (insightface).

Reads JSON on stdin: {"embeddings": [[...]], "weight": [[...]], "labels": [...],
"margins": [m1, m2, m3], "scale": s, "easy_margin": bool}. Writes JSON on stdout:
{"loss": mean cross-entropy, "grad": d loss / d embeddings by central finite differences}.
Everything in float64, written from the formulas of the ArcFace paper and insightface's
MXNet seed (th/mm fallback), not from our Rust code.
"""
import json
import math
import sys

import numpy as np


def margin_loss(emb, weight, labels, m1, m2, m3, s, easy_margin):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    cos = np.clip(e @ w.T, -1.0, 1.0)
    rows = np.arange(len(labels))
    c = cos[rows, labels]
    if m1 == 1.0 and m2 == 0.0:
        target = c - m3
    elif m1 == 1.0:
        theta = np.arccos(c)
        phi = np.cos(theta + m2)
        if easy_margin:
            phi = np.where(c > 0, phi, c)
        else:
            th = math.cos(math.pi - m2)
            mm = math.sin(math.pi - m2) * m2
            phi = np.where(c > th, phi, c - mm)
        target = phi - m3
    else:
        theta = np.arccos(c)
        target = np.cos(np.minimum(m1 * theta + m2, math.pi)) - m3
    logits = cos.copy()
    logits[rows, labels] = target
    logits *= s
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_probs[rows, labels].mean()


def main():
    q = json.load(sys.stdin)
    emb = np.array(q["embeddings"], dtype=np.float64)
    weight = np.array(q["weight"], dtype=np.float64)
    labels = np.array(q["labels"], dtype=np.int64)
    m1, m2, m3 = q["margins"]
    args = (weight, labels, m1, m2, m3, q["scale"], q["easy_margin"])
    loss = margin_loss(emb, *args)
    h = 1e-6
    grad = np.zeros_like(emb)
    for idx in np.ndindex(*emb.shape):
        plus, minus = emb.copy(), emb.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (margin_loss(plus, *args) - margin_loss(minus, *args)) / (2 * h)
    json.dump({"loss": float(loss), "grad": grad.tolist()}, sys.stdout)


if __name__ == "__main__":
    main()
