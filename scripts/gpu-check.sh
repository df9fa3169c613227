#!/usr/bin/env bash
# One prepared run for a GPU machine (../shared/GPU.md): our `bench train` in fp32, bf16 and bf16
# with channels-last activations (and on every GPU when there are several), the launch-bound
# step (r100's depth at widths 8: the framework's own cost per step), our inference, and
# PyTorch's anchor `torch_r100_bench.py`, in one call on one card, then a table of ratios.
# Builds nothing.
#
#   bash scripts/gpu-check.sh [LOG_DIR]        (or ARCFACE_GPU_LOGS=DIR; default gpu-logs)
#
# Expects, built here as docs/PERFORMANCE.md says (git-ignored .gpu/):
#   .gpu/arcface               stripped release binary built with --features tch
#   .gpu/torch_r100_bench.py   a copy of ../shared/anchors/torch_r100_bench.py
# With PROFILE=1 (the default on CUDA; PROFILE=0 turns it off) our fp32 and bf16 training steps and inference batches
# are also recorded with libtorch's profiler, PyTorch's with torch.profiler
# (scripts/torch_profile.py), and scripts/profile_summary.py sets them side by side.
# Settings (environment): ARCFACE_BIN, ARCFACE_ANCHOR, ARCFACE_TORCH_PYTHON (python3),
# DEVICE (cuda), CONFIG (configs/r100.toml), BATCH (128), CLASSES (85742), STEPS (20),
# RUN_TIMEOUT (240 s for each of our runs), SKIP_GENERIC=1 (no run without libtorch's kernels),
# SKIP_TRAIN=1 (no training run on synthetic identities), SKIP_INFER=1 (no inference runs),
# SKIP_TORCH_PROFILE=1 (PyTorch's anchor timed but not profiled), SKIP_VIT=1 (no vit_t runs;
# VIT_BATCH, default 128, their batch),
# SKIP_ANCHOR=1 (a dry run without CUDA: DEVICE=libtorch-cpu CONFIG=configs/tiny.toml).
set -uo pipefail
cd "$(dirname "$0")/.."

logs="${1:-${ARCFACE_GPU_LOGS:-gpu-logs}}"
bin="${ARCFACE_BIN:-.gpu/arcface}"
anchor="${ARCFACE_ANCHOR:-.gpu/torch_r100_bench.py}"
python="${ARCFACE_TORCH_PYTHON:-python3}"
device="${DEVICE:-cuda}"
config="${CONFIG:-configs/r100.toml}"
batch="${BATCH:-128}"
classes="${CLASSES:-85742}"
steps="${STEPS:-20}"
profile="${PROFILE-$([ "$device" = cuda ] && echo 1)}"
[ "$profile" = 0 ] && profile=""
# --profile TRACE for our runs when profiling: $1 = the trace's name.
profile_arg() { [ -n "$profile" ] && echo "--profile $logs/$1.json"; }
mkdir -p "$logs"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$logs/gpu-check.log"; }

[ -x "$bin" ] || { log "no binary at $bin (build it with --features tch, see docs/PERFORMANCE.md)"; exit 1; }
# torch's own libraries find cuDNN, cuBLAS and NCCL.
torch_lib="$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')" \
    || { log "$python cannot import torch"; exit 1; }
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
date -u +%FT%TZ > "$logs/date.txt"
nvidia-smi > "$logs/nvidia-smi.txt" 2>&1 || true
gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
log "device $device, $gpus GPU(s), $config, batch $batch, $classes classes, $steps steps"

# LibTorch against burn's CPU backend on this GPU (cuDNN's BatchNorm and convolution gradients,
# inference, the fused SGD): tests/libtorch.rs, built by scripts/build-gpu.sh.
if [ -f .gpu/libtorch_tests.xz ]; then
    log "tests/libtorch.rs"
    xz -dc .gpu/libtorch_tests.xz > "$logs/.libtorch_tests" && chmod +x "$logs/.libtorch_tests"
    timeout 300 "$logs/.libtorch_tests" --test-threads 1 --nocapture > "$logs/libtorch_tests.log" 2>&1 \
        && log "tests/libtorch.rs passed" || log "tests/libtorch.rs FAILED: see $logs/libtorch_tests.log"
    rm -f "$logs/.libtorch_tests"
fi

# Our training bench: $1 = name, the rest = extra arguments.
ours() {
    local name="$1"; shift
    log "ours: $name"
    # shellcheck disable=SC2086 # OURS_ENV: NAME=VALUE words for env, or empty.
    timeout "${RUN_TIMEOUT:-240}" env ${OURS_ENV:-} "$bin" bench train --config "$config" --batch-size "$batch" --num-classes "$classes" \
        --steps "$steps" --json "$@" > "$logs/ours_$name.json" 2> "$logs/ours_$name.err" \
        || log "ours $name failed (exit $?): see $logs/ours_$name.err"
}
# shellcheck disable=SC2046 # profile_arg: two words or none.
ours fp32 --device "$device" --precision fp32 $(profile_arg trace_ours_train_fp32)
# shellcheck disable=SC2046
ours bf16 --device "$device" --precision bf16 $(profile_arg trace_ours_train_bf16)
# shellcheck disable=SC2046
ours bf16_cl --device "$device" --precision bf16 --channels-last $(profile_arg trace_ours_train_bf16_cl)
# PyTorch's anchor, with the same memory instrument as ours (nvidia-smi, GPU 0).
if [ -z "${SKIP_ANCHOR:-}" ]; then
    log "anchor: $anchor"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 20 \
        > "$logs/torch_memory.csv" 2>/dev/null &
    sampler=$!
    timeout 900 "$python" "$anchor" --steps "$steps" --batch "$batch" --classes "$classes" \
        > "$logs/torch.jsonl" 2> "$logs/torch.err" || log "anchor failed: see $logs/torch.err"
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
fi

# The framework's own cost per step: r100's depth at widths 8 and batch 2, where the kernels do
# almost nothing and the step time is what the CPU takes to queue them (ours: burn's autodiff and
# burn-tch; PyTorch's: Python and autograd). Above this time no GPU can make a step faster.
for what in fp32 bf16_cl; do
    [ "$what" = fp32 ] && extra=(--precision fp32) || extra=(--precision bf16 --channels-last)
    log "ours: launch-bound $what"
    timeout 120 "$bin" bench train --config "$config" --batch-size 2 --num-classes 1000 --widths 8,8,8,8 \
        --steps "$steps" --device "$device" --json "${extra[@]}" > "$logs/ours_launch_$what.json" \
        2> "$logs/ours_launch_$what.err" || log "ours launch-bound $what failed: see $logs/ours_launch_$what.err"
done
if [ -z "${SKIP_ANCHOR:-}" ]; then
    log "anchor: launch-bound"
    case "$device" in cuda*) torch_device=cuda ;; *) torch_device=cpu ;; esac
    # r100's depth (the anchor's), as $config is on a GPU run.
    timeout 300 "$python" scripts/torch_profile.py "$anchor" "$logs" --device "$torch_device" --batch 2 --classes 1000 \
        --widths 8,8,8,8 --time "$steps" --only train_fp32,train_bf16_cl > "$logs/torch_launch.jsonl" 2> "$logs/torch_launch.err" \
        || log "anchor launch-bound failed: see $logs/torch_launch.err"
fi

# The same without libtorch's gradient kernels (burn's generic compositions): their effect.
[ -z "${SKIP_GENERIC:-}" ] && OURS_ENV=ARCFACE_TCH_GENERIC=1 ours fp32_generic --device "$device" --precision fp32
# The same step as one rank of a c10d group of one (NCCL on CUDA): the distributed path's own
# cost per step (its bucketed all-reduce, loss average and barriers) against the plain run's.
OURS_ENV="RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29517" \
    ours fp32_world1 --device "$device" --precision fp32
if [ "${gpus:-0}" -ge 2 ] && [ "$device" = cuda ]; then
    all="cuda:$(seq -s, 0 $((gpus - 1)))"
    # One process per GPU (arcface starts them); rank 0 writes the JSON.
    ours "fp32_x$gpus" --device "$all" --precision fp32
    log "ours: bench dist on $all"
    timeout 300 "$bin" bench dist --device "$all" --json > "$logs/ours_dist.json" 2> "$logs/ours_dist.err" \
        || log "bench dist failed: see $logs/ours_dist.err"
fi

# The model-parallel head alone at 1M identities (the Partial FC issue): ours and PyTorch's
# PartialFC_V2 (scripts/bench_partial_fc.py, world size 1) on the card, sample rates 1 / 0.3 / 0.1.
if [ -z "${SKIP_HEAD:-}" ]; then
    log "ours and PyTorch: partial FC head at 1M identities"
    timeout 300 env ARCFACE_TORCH_PYTHON="$python" "$bin" bench head --device "$device" --classes 1000000 \
        --sample-rates 1,0.3,0.1 --steps 10 --warmup 2 --torch --json > "$logs/head_1m.json" 2> "$logs/head_1m.err" \
        || log "bench head failed: see $logs/head_1m.err"
fi

# Inference: an r100 with fresh weights through burn on the device, batch 256 as the anchor.
scratch="$(mktemp -d)"
if [ -n "${SKIP_INFER:-}" ]; then
    :
elif "$bin" export --config "$config" --onnx "$scratch/model.onnx" > "$logs/export.log" 2>&1; then
    log "ours: inference"
    timeout 120 "$bin" bench infer --model "$scratch/model.onnx" --batch 256 --burn-only --resident \
        --seconds 5 --device "$device" --json $(profile_arg trace_ours_infer_fp32) > "$logs/ours_infer.json" 2> "$logs/ours_infer.err" \
        || log "ours inference failed: see $logs/ours_infer.err"
    log "ours: inference bf16"
    timeout 120 "$bin" bench infer --model "$scratch/model.onnx" --batch 256 --burn-only \
        --precision bf16 --resident --channels-last --seconds 5 --device "$device" --json $(profile_arg trace_ours_infer_bf16) > "$logs/ours_infer_bf16.json" \
        2> "$logs/ours_infer_bf16.err" || log "ours bf16 inference failed: see $logs/ours_infer_bf16.err"
else
    log "export failed: see $logs/export.log"
fi
rm -rf "$scratch"

# A real training run on this device: synthetic identities made on first use, two epochs of the
# tiny network with validation at each epoch's end (train and eval on $device), then its
# checkpoint exported to ONNX.
if [ -z "${SKIP_TRAIN:-}" ]; then
    log "ours: train (tiny, synthetic identities)"
    run_dir="$(mktemp -d)"
    sed -e "s|^identities = .*|identities = 200|; s|^images_per_identity = .*|images_per_identity = 20|" \
        -e "s|^val_pairs = .*|val_pairs = 400|; s|^lr_steps = .*|lr_steps = [100, 115]|" \
        -e "s|^rec = .*|rec = \"$run_dir/data\"|; s|^output = .*|output = \"$run_dir/ckpt\"|" \
        -e "s|^device = .*|device = \"$device\"|; s|^num_workers = .*|num_workers = 4|" \
        configs/tiny.toml > "$logs/train_smoke.toml"
    timeout 300 "$bin" train --config "$logs/train_smoke.toml" > "$logs/train_smoke.log" 2>&1 \
        && timeout 60 "$bin" export --model "$run_dir/ckpt/best.ckpt" --onnx "$run_dir/model.onnx" >> "$logs/train_smoke.log" 2>&1 \
        && log "train, validation and export on $device: $(grep -i 'synth_val' "$logs/train_smoke.log" | tail -1)" \
        || log "train smoke FAILED: see $logs/train_smoke.log"
    rm -rf "$run_dir"
fi

# arcface_torch's vit_t recipe (configs/vit_t.toml: vit_t_dp005_mask0, AdamW) in fp32 and bf16,
# ours against vit.py run by scripts/torch_profile.py (tests/reference/vit.py, AdamW, the same
# batch and classes, sample rate 1 on both sides: the anchor's head is a full softmax).
if [ -z "${SKIP_VIT:-}" ]; then
    vit_batch="${VIT_BATCH:-128}"
    for what in fp32 bf16; do
        log "ours: vit_t $what"
        timeout "${RUN_TIMEOUT:-240}" "$bin" bench train --config configs/vit_t.toml --batch-size "$vit_batch" \
            --num-classes "$classes" --sample-rate 1 --steps "$steps" --device "$device" --precision "$what" --json \
            > "$logs/ours_vit_t_$what.json" 2> "$logs/ours_vit_t_$what.err" \
            || log "ours vit_t $what failed: see $logs/ours_vit_t_$what.err"
    done
    if [ -z "${SKIP_ANCHOR:-}" ]; then
        log "anchor: vit_t"
        case "$device" in cuda*) torch_device=cuda ;; *) torch_device=cpu ;; esac
        timeout 600 "$python" scripts/torch_profile.py "$anchor" "$logs" --device "$torch_device" \
            --network vit_t_dp005_mask0 --optimizer adamw --batch "$vit_batch" --classes "$classes" \
            --time "$steps" --only train_fp32,train_bf16 > "$logs/torch_vit_t.jsonl" 2> "$logs/torch_vit_t.err" \
            || log "anchor vit_t failed: see $logs/torch_vit_t.err"
    fi
fi

if [ -n "$profile" ] && [ -z "${SKIP_ANCHOR:-}" ] && [ -z "${SKIP_TORCH_PROFILE:-}" ]; then
    log "anchor: torch.profiler"
    timeout 300 "$python" scripts/torch_profile.py "$anchor" "$logs" --batch "$batch" --classes "$classes" \
        > "$logs/torch_profile.log" 2>&1 || log "torch profile failed: see $logs/torch_profile.log"
fi
if [ -n "$profile" ]; then
    for what in train_fp32:train_fp32 train_bf16:train_bf16 train_bf16_cl:train_bf16_cl infer_fp32:infer_fp32 infer_bf16:infer_bf16_cl; do
        "$python" scripts/profile_summary.py --diff "ours=$logs/trace_ours_${what%%:*}.json" "pytorch=$logs/trace_torch_${what#*:}.json" \
            > "$logs/profile_${what%%:*}.txt" 2>&1
    done
fi

"$python" - "$logs" <<'PY' | tee "$logs/summary.txt"
import json, os, sys
logs = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(logs, name)) as f:
            return json.load(f)
    except Exception:
        return None
torch_rows = []
try:
    with open(os.path.join(logs, "torch.jsonl")) as f:
        torch_rows = [json.loads(l) for l in f if l.strip().startswith("{")]
except OSError:
    pass
def torch(kind, amp, cl):
    for r in torch_rows:
        if r.get("kind") == kind and r.get("amp") == amp and r.get("channels_last") == cl:
            return r
mem = []
try:
    with open(os.path.join(logs, "torch_memory.csv")) as f:
        mem = [float(l) for l in f if l.strip().replace(".", "").isdigit()]
except OSError:
    pass
header = next((r for r in torch_rows if "gpu" in r), {})
print(f"card: {header.get('gpu', '?')}  torch {header.get('torch', '?')}  cuDNN {header.get('cudnn', '?')}")
print(f"{'what':<40} {'ours img/s':>11} {'PyTorch img/s':>14} {'ratio':>7}")
def row(what, ours, ref):
    o = ours.get("images_per_second") if ours else None
    t = ref.get("img_s") if ref else None
    ratio = f"{o / t:7.2f}" if o and t else "      -"
    print(f"{what:<40} {o or 0:11.0f} {t or 0:14.0f} {ratio}")
fp32, bf16 = load("ours_fp32.json"), load("ours_bf16.json")
row("train fp32 vs eager fp32", fp32, torch("train", False, False))
row("train bf16 vs autocast bf16", bf16, torch("train", True, False))
bf16_cl = load("ours_bf16_cl.json")
row("train bf16 vs bf16 + channels-last", bf16, torch("train", True, True))
row("train bf16 + channels-last vs the same", bf16_cl, torch("train", True, True))
generic = load("ours_fp32_generic.json")
if generic and fp32:
    print(f"libtorch gradient kernels: fp32 {fp32['images_per_second']:.0f} img/s vs {generic['images_per_second']:.0f} without ({fp32['images_per_second'] / generic['images_per_second']:.2f}x)")
# Inference rows: [host to host, resident on the device]; the anchor keeps its batch on the GPU.
infer = load("ours_infer.json") or [None, None]
infer_bf16 = load("ours_infer_bf16.json") or [None, None]
pick = lambda rows, i: rows[i] if len(rows) > i else None
row("infer fp32 b256 vs eager fp32", pick(infer, 1), torch("infer", False, False))
row("infer bf16 + ch-last b256 vs the same", pick(infer_bf16, 1), torch("infer", True, True))
row("  host to host: fp32", pick(infer, 0), torch("infer", False, False))
row("  host to host: bf16 vs bf16 + ch-last", pick(infer_bf16, 0), torch("infer", True, True))
for name in sorted(os.listdir(logs)):
    if name.startswith("ours_fp32_x"):
        multi = load(name)
        if multi and fp32:
            n = multi["world_size"]
            eff = multi["images_per_second"] / (n * fp32["images_per_second"])
            print(f"data parallel on {n} GPUs: {multi['images_per_second']:.0f} img/s, scaling efficiency {eff:.2f}")
world1 = load("ours_fp32_world1.json")
if world1 and fp32:
    print(f"c10d at world size 1 ({world1['backend']}): step {world1['step_ms']:.1f} ms vs {fp32['step_ms']:.1f} ms plain, overhead {world1['step_ms'] / fp32['step_ms'] - 1:+.1%} (all-reduce {world1['all_reduce_ms']:.1f} ms)")
launch = {}
try:
    with open(os.path.join(logs, "torch_launch.jsonl")) as f:
        launch = {r["run"]: r for r in map(json.loads, (l for l in f if l.strip().startswith("{")))}
except OSError:
    pass
for what, theirs in (("fp32", "train_fp32"), ("bf16_cl", "train_bf16_cl")):
    ours_run, t = load(f"ours_launch_{what}.json"), launch.get(theirs)
    if ours_run:
        versus = f", PyTorch {t['ms_per_step']:.1f} ms (ours at {t['ms_per_step'] / ours_run['step_ms']:.2f}x its speed)" if t else ""
        print(f"launch-bound step {what} (widths 8, batch 2): ours {ours_run['step_ms']:.1f} ms{versus}")
vit = {}
try:
    with open(os.path.join(logs, "torch_vit_t.jsonl")) as f:
        vit = {r["run"]: r for r in map(json.loads, (l for l in f if l.strip().startswith("{")))}
except OSError:
    pass
for what in ("fp32", "bf16"):
    ours_run, t = load(f"ours_vit_t_{what}.json"), vit.get(f"train_{what}")
    if ours_run:
        versus = f", PyTorch {t['ms_per_step']:.1f} ms (ours at {t['ms_per_step'] / ours_run['step_ms']:.2f}x its speed)" if t else ""
        print(f"vit_t train {what} (AdamW, batch {ours_run['batch_size']}): ours {ours_run['step_ms']:.1f} ms{versus}")
mib = lambda v: f"{v:.0f} MiB" if v else "n/a"
for name, r in (("fp32", fp32), ("bf16", bf16), ("bf16 channels-last", bf16_cl)):
    if r:
        print(f"ours {name}: step {r['step_ms']:.1f} ms (forward {r['forward_ms'] or 0:.1f}, backward {r['backward_ms'] or 0:.1f}, optimizer {r['optimizer_ms']:.1f}), peak allocated {mib(r.get('peak_allocated_mib'))} (reserved {mib(r.get('peak_reserved_mib'))}), peak GPU memory (nvidia-smi) {mib(r.get('peak_gpu_mib'))}")
# Peak memory, as torch.cuda.max_memory_allocated over the timed steps on both sides.
for what, r, amp, cl in (("fp32", fp32, False, False), ("bf16", bf16, True, False), ("bf16 channels-last", bf16_cl, True, True)):
    t = torch("train", amp, cl)
    if r and r.get("peak_allocated_mib") and t:
        theirs = t["peak_gib"] * 1024
        print(f"peak allocated {what}: ours {r['peak_allocated_mib']:.0f} MiB, PyTorch {theirs:.0f} MiB ({r['peak_allocated_mib'] / theirs:.2f}x)")
for amp, cl in ((False, False), (True, False), (True, True)):
    t = torch("train", amp, cl)
    if t:
        print(f"PyTorch train amp={amp} channels_last={cl}: step {t['step_ms']:.1f} ms, peak allocated {t['peak_gib'] * 1024:.0f} MiB")
if mem:
    print(f"PyTorch peak GPU memory over its whole run (nvidia-smi): {max(mem):.0f} MiB")
PY
log "logs in $logs"
