"""onnxruntime's embeddings per second on an ONNX embedder, for `arcface bench infer
--onnxruntime`: same synthetic input, warm-up and timing rule as ours (one warm-up batch, then
batches until at least --seconds and two batches). Prints one JSON object.

With --serve it stays up after the warm-up and times a round for each line read from stdin
(the round's seconds), printing one JSON object per round: `bench infer` alternates rounds of
ours and of onnxruntime, so that a machine that speeds up or slows down over the call moves
both alike."""
import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--seconds", type=float, default=5.0)
parser.add_argument("--serve", action="store_true")
args = parser.parse_args()

session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
values = (np.arange(args.batch * 3 * 112 * 112, dtype=np.int64) * 7919 % 256).astype(np.float32)
images = values.reshape(args.batch, 3, 112, 112)
session.run(None, {name: images})


def measure(min_seconds):
    start = time.perf_counter()
    done = 0
    while done < 2 * args.batch or time.perf_counter() - start < min_seconds:
        session.run(None, {name: images})
        done += args.batch
    seconds = time.perf_counter() - start
    return {
        "engine": f"onnxruntime {ort.__version__}",
        "batch": args.batch,
        "images": done,
        "seconds": seconds,
        "images_per_second": done / seconds,
    }


if args.serve:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(measure(float(line))), flush=True)
else:
    print(json.dumps(measure(args.seconds)))
