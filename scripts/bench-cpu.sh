#!/usr/bin/env bash
# The CPU table (docs/PERFORMANCE.md, "The CPU table"): every row of ours beside its anchor in
# one call, on this machine, with the ratio. Rows:
#   training steps   `arcface bench train` against PyTorch eager (scripts/torch_profile.py on
#                    arcface_torch's own modules, tests/reference/), same batch, classes,
#                    threads, optimiser: tiny (configs/tiny.toml), mbf, vit_tiny (AdamW)
#   inference        `arcface bench infer --onnxruntime` on trained-like r100 and mbf ONNX files
#                    (fresh weights with per-channel BatchNorm statistics and PReLU slopes), batch
#                    1 and 8: tract and burn against onnxruntime (tract's and onnxruntime's
#                    time in four rounds alternated within the call)
#   loader           `arcface bench data`'s flip-only row on one thread against PIL + numpy on
#                    the same JPEGs (scripts/bench_pil_loader.py)
# Usage: bash scripts/bench-cpu.sh [OUT.md]
# Environment: ARCFACE_BIN (target/release/arcface), ARCFACE_PYTHON (.venv/bin/python: numpy,
# onnx, onnxruntime, Pillow — what `.ci/run` installs), ARCFACE_TORCH_PYTHON (the torch venv of
# scripts/setup-libtorch.sh: $VIRTUAL_ENV/bin/python after its eval), SECONDS_PER_ENGINE (10),
# ROWS (all: "train infer loader", any of them).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${ARCFACE_BIN:-target/release/arcface}"
python="${ARCFACE_PYTHON:-.venv/bin/python}"
torch_python="${ARCFACE_TORCH_PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
seconds="${SECONDS_PER_ENGINE:-10}"
rows="${ROWS:-train infer loader}"
out="${1:-}"

fail() { echo "bench-cpu: $*" >&2; exit 1; }
[ -x "$bin" ] || fail "$bin: build it first (cargo build --release) or set ARCFACE_BIN"
"$python" -c "import numpy, onnx, onnxruntime, PIL" 2>/dev/null \
    || fail "$python lacks numpy/onnx/onnxruntime/Pillow (set ARCFACE_PYTHON; .ci/run makes .venv)"
if [[ " $rows " == *" train "* ]]; then
    [ -n "$torch_python" ] && "$torch_python" -c "import torch" 2>/dev/null \
        || fail "no torch: eval \"\$(scripts/setup-libtorch.sh)\" or set ARCFACE_TORCH_PYTHON"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
results="$work/results.jsonl"
: > "$results"
# One JSON line per measurement: {"row", "what", "value", "unit"}; the table is made at the end.
record() { printf '{"row": "%s", "what": "%s", "value": %s, "unit": "%s"}\n' "$1" "$2" "$3" "$4" >> "$results"; }
field() { "$python" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
log() { echo "bench-cpu: $*" >&2; }

if [[ " $rows " == *" train "* ]]; then
    # (row, our bench arguments, the anchor's arguments)
    train_row() {
        local row="$1" ours="$2" theirs="$3"
        log "$row: ours"
        # shellcheck disable=SC2086
        "$bin" bench train $ours --device cpu --json > "$work/ours.json"
        record "$row" ours "$(field "d['step_ms']" < "$work/ours.json")" "ms/step"
        log "$row: PyTorch"
        # shellcheck disable=SC2086
        "$torch_python" scripts/torch_profile.py arcface_torch "$work/torch" --device cpu \
            --only train_fp32 $theirs | tail -1 > "$work/torch.json"
        record "$row" anchor "$(field "d['ms_per_step']" < "$work/torch.json")" "ms/step"
    }
    train_row "train tiny, batch 32, 500 classes" \
        "--config configs/tiny.toml --steps 5 --num-classes 500 --precision fp32" \
        "--units 1,1,1,1 --widths 8,16,32,64 --embedding 128 --batch 32 --classes 500 --time 5"
    train_row "train mbf, batch 32, 1,000 classes" \
        "--config configs/mbf.toml --steps 3 --batch-size 32 --num-classes 1000 --sample-rate 1 --precision fp32" \
        "--network mbf --batch 32 --classes 1000 --time 3"
    train_row "train vit_tiny (AdamW), batch 32, 500 classes" \
        "--config configs/vit_tiny.toml --steps 3 --batch-size 32 --num-classes 500 --sample-rate 1 --precision fp32" \
        "--network vit_tiny --optimizer adamw --batch 32 --classes 500 --time 3"
fi

if [[ " $rows " == *" infer "* ]]; then
    for net in r100 mbf; do
        "$bin" export --config "configs/$net.toml" --onnx "$work/$net-fresh.onnx" > /dev/null
        "$python" scripts/randomize_onnx_stats.py "$work/$net-fresh.onnx" "$work/$net.onnx" > /dev/null
        for batch in 1 8; do
            row="infer $net, batch $batch"
            log "$row"
            "$bin" bench infer --model "$work/$net.onnx" --batch "$batch" --seconds "$seconds" \
                --onnxruntime --json > "$work/infer.json"
            for engine in tract burn onnxruntime; do
                value="$(field "next(r['images_per_second'] for r in d if r['engine'].startswith('$engine'))" < "$work/infer.json")"
                record "$row" "$engine" "$value" "img/s"
            done
        done
    done
fi

if [[ " $rows " == *" loader "* ]]; then
    log "loader"
    "$bin" synth --out "$work/data" --identities 20 --images-per-identity 8 --val-pairs 10 > /dev/null
    "$bin" bench data --rec "$work/data" --threads 1 --json > "$work/data.json"
    record "loader: decode + flip + tensor, one thread" ours \
        "$(field "next(r['images_per_second'] for r in d['loader'] if r['augment'] == 'flip only')" < "$work/data.json")" "img/s"
    "$python" scripts/bench_pil_loader.py "$work/data" > "$work/pil.json"
    record "loader: decode + flip + tensor, one thread" anchor "$(field "d['images_per_second']" < "$work/pil.json")" "img/s"
fi

"$python" - "$results" "$out" <<'EOF'
import json, platform, subprocess, sys, datetime
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["row"], {})[r["what"]] = (r["value"], r["unit"])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
lines = [f"{datetime.date.today()}, {cpu}, {cores} cores; ratios ≥ 1 mean ours is faster.", "",
         "| row | ours | anchor | ours ÷ anchor |", "|---|---|---|---|"]
for row, m in rows.items():
    if "anchor" in m:  # time per step (lower is faster) or a rate
        (o, unit), (a, _) = m["ours"], m["anchor"]
        ratio = a / o if unit.startswith("ms") else o / a
        lines.append(f"| {row} | {o:,.1f} {unit} | {a:,.1f} {unit} | **{ratio:.2f}** |")
    else:
        (ort, unit) = m["onnxruntime"]
        for engine in ("tract", "burn"):
            v = m[engine][0]
            lines.append(f"| {row}, {engine} vs onnxruntime | {v:,.1f} {unit} | {ort:,.1f} {unit} | **{v / ort:.2f}** |")
text = "\n".join(lines) + "\n"
print(text, end="")
if sys.argv[2]:
    open(sys.argv[2], "w").write(text)
EOF
