"""onnxruntime's embeddings per second on an ONNX embedder, for `arcface bench infer
--onnxruntime`: same synthetic input, warm-up and timing rule as ours (one warm-up batch, then
batches until at least --seconds and two batches). Prints one JSON object."""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("--batch", type=int, default=1)
parser.add_argument("--seconds", type=float, default=5.0)
args = parser.parse_args()

session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
values = (np.arange(args.batch * 3 * 112 * 112, dtype=np.int64) * 7919 % 256).astype(np.float32)
images = values.reshape(args.batch, 3, 112, 112)
session.run(None, {name: images})
start = time.perf_counter()
done = 0
while done < 2 * args.batch or time.perf_counter() - start < args.seconds:
    session.run(None, {name: images})
    done += args.batch
seconds = time.perf_counter() - start
print(json.dumps({
    "engine": f"onnxruntime {ort.__version__}",
    "batch": args.batch,
    "images": done,
    "seconds": seconds,
    "images_per_second": done / seconds,
}))
