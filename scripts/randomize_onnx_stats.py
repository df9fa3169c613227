"""Give an ONNX embedder's BatchNorm statistics and affine parameters and its PReLU slopes
per-channel random values, as a trained model has, for `arcface bench infer`.

A freshly initialised backbone (γ = 1, β = 0, mean 0, var 1, every slope 0.25) lets tract fold
those layers into scalar operations, which a trained model never allows; timing such a file
flatters tract (docs/HISTORY.md, "CPU inference"). Convolution and FC weights are kept.

    python scripts/randomize_onnx_stats.py IN.onnx OUT.onnx [--seed S]
"""
import argparse

import numpy as np
import onnx
from onnx import numpy_helper

parser = argparse.ArgumentParser()
parser.add_argument("input")
parser.add_argument("output")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

model = onnx.load(args.input)
rng = np.random.default_rng(args.seed)
initializers = {i.name: i for i in model.graph.initializer}
# BatchNormalization inputs: X, scale, B, mean, var; PRelu: X, slope.
roles = {}
for node in model.graph.node:
    if node.op_type == "BatchNormalization":
        roles.update(zip(node.input[1:5], ["scale", "bias", "mean", "var"]))
    elif node.op_type == "PRelu":
        roles[node.input[1]] = "slope"
draw = {
    "scale": lambda shape: rng.uniform(0.5, 1.5, shape),
    "bias": lambda shape: rng.uniform(-0.1, 0.1, shape),
    "mean": lambda shape: rng.uniform(-0.1, 0.1, shape),
    "var": lambda shape: rng.uniform(0.5, 2.0, shape),
    "slope": lambda shape: rng.uniform(0.1, 0.4, shape),
}
changed = 0
for name, role in sorted(roles.items()):
    if name not in initializers:
        raise SystemExit(f"{args.input}: `{name}` ({role}) is not an initializer")
    shape = numpy_helper.to_array(initializers[name]).shape
    values = draw[role](shape).astype(np.float32)
    initializers[name].CopyFrom(numpy_helper.from_array(values, name))
    changed += 1
onnx.save(model, args.output)
print(f"{args.output}: {changed} BatchNorm and PReLU tensors randomised (seed {args.seed})")
