"""The anchor of `arcface bench data`'s "flip only" row: what a PyTorch loader's worker does per
image with PIL and numpy (arcface_torch's MXFaceDataset: decode the record's JPEG, random
horizontal flip, to a normalised float CHW array), on one thread, over the same RecordIO
records. Prints one JSON object.

Usage: python3 bench_pil_loader.py DATA_DIR [--images 5120] [--seed 1]
DATA_DIR holds insightface's train.rec and train.idx (e.g. from `arcface synth`).
"""
import argparse
import json
import os
import struct
import time

import io

import numpy as np
import PIL
from PIL import Image

MAGIC = 0xCED7230A


def records(directory):
    """The JPEG bytes of every image record, in the index's order (insightface's layout: an
    IRHeader of flag, label, id, id2, then `flag` extra labels, then the image)."""
    offsets = []
    with open(os.path.join(directory, "train.idx")) as index:
        for line in index:
            key, offset = line.split()
            offsets.append(int(offset))
    images = []
    with open(os.path.join(directory, "train.rec"), "rb") as rec:
        data = rec.read()
    for offset in offsets:
        magic, length = struct.unpack_from("<II", data, offset)
        if magic != MAGIC:
            raise SystemExit(f"{directory}/train.rec: no record magic at offset {offset}")
        length &= (1 << 29) - 1
        body = data[offset + 8: offset + 8 + length]
        flag = struct.unpack_from("<I", body, 0)[0]
        image = body[24 + 4 * flag:]
        # insightface's record 0 holds identity ranges, no image: only JPEGs count.
        if image[:2] == b"\xff\xd8":
            images.append(image)
    if not images:
        raise SystemExit(f"{directory}/train.rec: no JPEG records")
    return images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--images", type=int, default=5120)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    jpegs = records(a.data)
    rng = np.random.default_rng(a.seed)

    def load(k):
        img = Image.open(io.BytesIO(jpegs[k % len(jpegs)])).convert("RGB")
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)
        return (x / 255.0 - 0.5) / 0.5

    for k in range(128):
        load(k)
    start = time.perf_counter()
    for k in range(a.images):
        load(k)
    seconds = time.perf_counter() - start
    print(json.dumps({"engine": f"PIL {PIL.__version__} + numpy {np.__version__}",
                      "images": a.images, "seconds": seconds,
                      "images_per_second": a.images / seconds}))


if __name__ == "__main__":
    main()
