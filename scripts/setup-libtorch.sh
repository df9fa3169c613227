#!/usr/bin/env bash
# Creates a Python venv with torch 2.11.0 from PyPI (libtorch for burn's `tch` backend) and
# prints the environment to export. Use:
#     eval "$(scripts/setup-libtorch.sh)"
#     cargo build --release --features tch
# The venv goes to $ARCFACE_TORCH_VENV (default: ~/.cache/arcface/torch211). ~5 GB, a few minutes
# the first time; later runs only print the environment.
set -euo pipefail

venv="${ARCFACE_TORCH_VENV:-$HOME/.cache/arcface/torch211}"
torch_version="2.11.0"

# The CUDA runtime and NCCL headers of torch's nvidia wheels are incomplete without these two
# (crt/host_config.h, nv/target): with them, burn-tch's c10d shim compiles ProcessGroupNCCL
# (vendor/burn-tch/build.rs). Headers only, a few MB.
cuda_headers=("nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*")

# The interop tests (tests/interop.rs) write arcface_torch's files with this torch: its ONNX
# exporter needs the onnx package, and the safetensors export is loaded with safetensors.torch.
interop=("onnx==1.23.2" "safetensors==0.7.0" "packaging==26.4")

if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
    echo "setup-libtorch: installing torch==$torch_version into $venv (~5 GB)..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet "torch==$torch_version" "${cuda_headers[@]}" "${interop[@]}" >&2
elif ! "$venv/bin/pip" show --quiet nvidia-cuda-crt nvidia-cuda-cccl >/dev/null 2>&1; then
    echo "setup-libtorch: adding the CUDA header wheels to $venv..." >&2
    "$venv/bin/pip" install --quiet "${cuda_headers[@]}" >&2
fi
if ! "$venv/bin/python" -c "import onnx, safetensors.torch" >/dev/null 2>&1; then
    echo "setup-libtorch: adding onnx and safetensors (torch's ONNX exporter, the interop tests)..." >&2
    "$venv/bin/pip" install --quiet "${interop[@]}" >&2
fi

torch_lib="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"

# tch 0.22 expects libtorch 2.9.0; it compiles against 2.11 with the version check bypassed
# (2.11 is what the GPU machines run; see docs/PERFORMANCE.md).
cat <<ENV
export VIRTUAL_ENV="$venv"
export PATH="$venv/bin:\$PATH"
export LIBTORCH_USE_PYTORCH=1
export LIBTORCH_BYPASS_VERSION_CHECK=1
export LD_LIBRARY_PATH="$torch_lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
