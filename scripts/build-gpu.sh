#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh runs on a GPU machine, here (no Rust toolchain there):
# the release binary with the LibTorch backend, against torch 2.11.0 from PyPI (the build the GPU
# machines run; ../shared/GPU.md), stripped into the git-ignored .gpu/, with a copy of the
# PyTorch anchor next to it, and the LibTorch test binary (tests/libtorch.rs). ~10 min on 2
# cores, plus the ~5 GB torch download the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash scripts/setup-libtorch.sh)"
cargo build --release --locked --features tch
mkdir -p .gpu
strip -o .gpu/arcface target/release/arcface
# tests/libtorch.rs, run there on the GPU too (cuDNN's kernels are only reached there); xz'd so
# that both binaries travel within the device tool's 64 MiB.
tests="$(cargo test --release --locked --features tch --test libtorch --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "libtorch":
        print(m["executable"])')"
strip -o .gpu/libtorch_tests "$tests"
xz -f -T0 -6 .gpu/libtorch_tests
anchor="${ARCFACE_ANCHOR_SRC:-../shared/anchors/torch_r100_bench.py}"
if [ -f "$anchor" ]; then
    cp "$anchor" .gpu/torch_r100_bench.py
else
    echo "build-gpu: no anchor at $anchor; copy torch_r100_bench.py into .gpu/ yourself" >&2
fi
ls -la .gpu
