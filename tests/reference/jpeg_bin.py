"""insightface's validation on a JPEG .bin, as verification.py computes it: images decoded by
PIL (libjpeg-turbo, as mxnet's imdecode and OpenCV), embedded by onnxruntime with their mirror
images, XNorm over both, l2norm(e + e_flip), the 10-fold protocol of verification.py (our numpy
copy in verification.py). One JSON request on stdin, JSON on stdout.

{"op": "write", "bin": F, "photos": [P...], "pairs": N, "seed": S}
    A .bin as insightface packs them (pickle of (list of JPEG bytes, issame list)): 2N crops
    of 112x112 cut from the photos at random places and sizes, JPEG quality 75, pairs "same"
    when both crops come from the same photo.
{"op": "evaluate", "bin": F, "model": ONNX}
    accuracy, std, threshold (mean of the folds' best), XNorm, for a model taking raw RGB 0-255
    [N,3,112,112] (our export's interface).
"""
import io
import json
import os
import pickle
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from verification import calculate_roc  # noqa: E402


def write(req):
    rng = np.random.default_rng(req["seed"])
    photos = [Image.open(p).convert("RGB") for p in req["photos"]]

    def crop(k):
        img = photos[k]
        w, h = img.size
        side = int(rng.integers(min(w, h) // 3, min(w, h) // 2 + 1))
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        out = io.BytesIO()
        img.crop((x, y, x + side, y + side)).resize((112, 112), Image.BILINEAR).save(
            out, format="JPEG", quality=75)
        return out.getvalue()

    bins, issame = [], []
    for i in range(req["pairs"]):
        a = int(rng.integers(len(photos)))
        same = i % 2 == 0
        b = a if same else int((a + 1 + rng.integers(len(photos) - 1)) % len(photos))
        bins += [crop(a), crop(b)]
        issame.append(same)
    with open(req["bin"], "wb") as f:
        pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)
    return {"images": len(bins)}


def evaluate(req):
    import onnxruntime as ort

    with open(req["bin"], "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in bins])
    data = pixels.transpose(0, 3, 1, 2).astype(np.float32)
    session = ort.InferenceSession(req["model"], providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    embeddings_list = [session.run(None, {name: x})[0] for x in (data, data[:, :, :, ::-1].copy())]
    xnorm = float(np.mean([np.linalg.norm(e) for embed in embeddings_list for e in embed]))
    e = embeddings_list[0] + embeddings_list[1]
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    accuracy, best = calculate_roc(np.arange(0, 4, 0.01), e[0::2], e[1::2], np.array(issame))
    return {"accuracy": float(np.mean(accuracy)), "std": float(np.std(accuracy)),
            "threshold": float(np.mean(best)), "xnorm": xnorm}


req = json.load(sys.stdin)
json.dump({"write": write, "evaluate": evaluate}[req["op"]](req), sys.stdout)
