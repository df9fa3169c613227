"""Where a training step's GPU time goes: Chrome traces of libtorch's / torch's profiler
(`arcface bench train --profile`, scripts/torch_profile.py), each kernel charged to the aten
operator that launched it, grouped into kinds (convolution forward and backward, BatchNorm,
activation, matmul, copies and casts, reductions, other elementwise), per step, side by side.

Usage: python3 profile_summary.py [--steps 3] [--diff] NAME=TRACE.json [NAME=TRACE.json ...]
Without CUDA kernels in a trace (a CPU run), operators' own CPU time is charged instead.
`--diff` lists the operators each of the first two traces launches more often per step than the
other: where one queues more kernels (on the CPU, every operator counts, nested ones too; with
`--innermost`, only the operators that compute something themselves, those a GPU step would
launch kernels for: see INNERMOST below).

Peak memory: the largest "Total Allocated" of the trace's memory events on the device that ran
the kernels (torch.cuda.max_memory_allocated over the recorded steps), and the top-level
operator running when it was reached. On the CPU that is every live tensor byte only when the
recording process counted from its start (`arcface bench train --profile`, torch_profile.py
do); otherwise only what was allocated since the profiler started.
"""
import argparse
import json
import re
from collections import defaultdict

KINDS = [
    ("conv backward", r"convolution_backward|conv.*backward"),
    ("conv forward", r"conv"),
    ("batchnorm", r"batch_norm"),
    ("prelu / activation", r"prelu|relu|\bwhere\b|masked_fill|\blt\b|\bgt\b|\bge\b|\ble\b"),
    ("matmul", r"\bmm\b|addmm|matmul|linear|\bbmm\b"),
    ("copy / cast", r"copy|_to_copy|\bto\b|contiguous|clone|cat\b|stack"),
    ("reduction / softmax", r"\bsum\b|mean|\bmax\b|\bmin\b|norm|softmax|nll|cross_entropy|logsumexp|argmax"),
    ("optimizer (foreach)", r"foreach|_fused_sgd"),
]


# Operators that only make or reshape tensor metadata, allocate, or wrap others: on a GPU none
# launches a kernel. INNERMOST counts an operator when it is none of these and calls no operator
# that is not one of these either: on the CPU, the operators a GPU step would launch kernels for
# (`mkldnn_convolution`, not the `conv2d` → `convolution` → `_convolution` around it).
NO_KERNEL = {
    "aten::" + name for name in (
        "view as_strided as_strided_ empty empty_strided empty_like new_empty reshape "
        "_reshape_alias _unsafe_view t transpose permute expand expand_as unsqueeze squeeze select "
        "slice alias detach lift_fresh result_type scalar_tensor resize_ set_ view_as flatten "
        "contiguous to item _local_scalar_dense is_nonzero resolve_conj resolve_neg"
    ).split()
} | {"detach"}


def kind_of(op):
    name = op.removeprefix("aten::")
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other elementwise"


CPU, CUDA = 0, 1  # c10::DeviceType in the memory events


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


STEP_END = re.compile(r"_fused_sgd_|^Optimizer\.step#")  # our fused SGD; torch.optim's step
BACKWARD = re.compile(r"backward|evaluate_function", re.IGNORECASE)


def memory_peak(events, device_type, ops):
    """Peak memory, or None: a dict of MiB (peak, end) with the top-level operator running at the
    peak, and for the last whole step (from an optimizer step to the next) its forward peak, what
    is allocated when the backward starts and the backward's peak."""
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == device_type),
        key=lambda e: e["ts"],
    )
    if not memory:
        return None
    mib = lambda e: e["args"]["Total Allocated"] / 2**20  # noqa: E731
    peak = max(memory, key=mib)
    enclosing = [o for o in ops if o["ts"] <= peak["ts"] <= o["ts"] + o["dur"]]
    result = dict(
        peak=mib(peak),
        end=mib(memory[-1]),
        peak_during=min(enclosing, key=lambda o: o["ts"])["name"] if enclosing else "?",
    )
    ends = sorted(o["ts"] + o["dur"] for o in ops if STEP_END.search(o["name"]))
    if len(ends) >= 2:
        start, end = ends[-2], ends[-1]
        backward = [o["ts"] for o in ops if start <= o["ts"] < end and BACKWARD.search(o["name"])]
        if backward:
            split = min(backward)
            step = [e for e in memory if start <= e["ts"] <= end]
            before = [e for e in memory if e["ts"] <= split]
            result.update(
                forward_peak=max((mib(e) for e in step if e["ts"] < split), default=float("nan")),
                backward_start=mib(before[-1]) if before else float("nan"),
                backward_peak=max((mib(e) for e in step if e["ts"] >= split), default=float("nan")),
            )
    return result


def summarise(path, steps):
    everything = load(path)
    events = [e for e in everything if e.get("ph") == "X"]
    ops = {}
    cpu_ops = []
    for e in events:
        if e.get("cat") == "cpu_op":
            cpu_ops.append(e)
            ext = e.get("args", {}).get("External id")
            if ext is not None:
                ops[ext] = e["name"]
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    by_kind, by_op, counts = defaultdict(float), defaultdict(float), defaultdict(int)
    innermost = None
    if kernels:
        for k in kernels:
            op = ops.get(k.get("args", {}).get("External id"), k["name"] if k.get("cat") != "kernel" else "?")
            by_kind[kind_of(op)] += k["dur"]
            by_op[op] += k["dur"]
            counts[op] += 1
        # GPU busy: the union of kernel intervals.
        spans = sorted((k["ts"], k["ts"] + k["dur"]) for k in kernels)
        busy, end = 0.0, None
        for s, t in spans:
            if end is None or s > end:
                busy += t - s
                end = t
            elif t > end:
                busy += t - end
                end = t
        first = min(e["ts"] for e in cpu_ops + kernels)
        last = max(e["ts"] + e["dur"] for e in cpu_ops + kernels)
        wall = last - first
    else:
        # CPU: each operator's own time (its duration less that of operators inside it).
        self_time, innermost = walk_nesting(cpu_ops)
        for e in cpu_ops:
            by_kind[kind_of(e["name"])] += self_time[id(e)]
            by_op[e["name"]] += self_time[id(e)]
            counts[e["name"]] += 1
        busy = sum(by_op.values())
        wall = (max(e["ts"] + e["dur"] for e in cpu_ops) - min(e["ts"] for e in cpu_ops)) if cpu_ops else 0.0
    per = lambda us: us / steps / 1e3  # noqa: E731  (ms per step)
    return dict(
        memory=memory_peak(
            everything,
            CUDA if kernels else CPU,
            [e for e in events if e.get("cat") in ("cpu_op", "user_annotation")],
        ),
        kernels=bool(kernels),
        wall_ms=per(wall),
        busy_ms=per(busy),
        launches=(len(kernels) if kernels else len(cpu_ops)) / steps,
        by_kind={k: per(v) for k, v in by_kind.items()},
        by_op={k: (per(v), counts[k] / steps) for k, v in by_op.items()},
        innermost={k: n / steps for k, n in innermost.items()} if innermost is not None else None,
    )


def walk_nesting(cpu_ops):
    """One walk of each thread's operator nesting (by start and duration). Returns each
    operator's own time (its duration less that of the operators directly inside it), keyed by
    id(event), and per operator name how often it ran as an innermost computing operator: it
    computes (NO_KERNEL says which do not) and calls no operator that does."""
    self_time = defaultdict(float)
    innermost = defaultdict(int)
    by_thread = defaultdict(list)
    for e in cpu_ops:
        by_thread[e["tid"]].append(e)
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))  # outer before inner
        stack = []  # [event, whether something inside it computes]

        def close(frame):
            event, inner_computes = frame
            computes = event["name"].startswith("aten::") and event["name"] not in NO_KERNEL
            if computes and not inner_computes:
                innermost[event["name"]] += 1
            if stack:
                stack[-1][1] |= computes or inner_computes

        for e in events:
            while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= e["ts"]:
                close(stack.pop())
            if stack:
                self_time[id(stack[-1][0])] -= e["dur"]
            self_time[id(e)] += e["dur"]
            stack.append([e, False])
        while stack:
            close(stack.pop())
    return self_time, innermost


def print_diff(first, second, innermost=False):
    """Operators launched more often per step by one trace than by the other: on a GPU each is a
    kernel the CPU must queue, on the CPU (every operator counted, nested ones too, or with
    `innermost` only the computing ones) a proxy."""
    (a_name, a), (b_name, b) = first, second
    if innermost and a["innermost"] is not None and b["innermost"] is not None:
        ops = set(a["innermost"]) | set(b["innermost"])
        count = lambda r, op: r["innermost"].get(op, 0.0)  # noqa: E731
    else:
        ops = set(a["by_op"]) | set(b["by_op"])
        count = lambda r, op: r["by_op"].get(op, (0.0, 0.0))[1]  # noqa: E731
    rows = sorted(((count(a, op) - count(b, op), op) for op in ops), key=lambda t: (-abs(t[0]), t[1]))
    rows = [(d, op) for d, op in rows if abs(d) >= 0.5]
    print(f"\n{a_name} against {b_name}: operators whose count per step differs ({len(rows)})")
    print(f"  {a_name:>10} {b_name:>10} {'difference':>10}")
    for d, op in rows:
        print(f"  {count(a, op):10.0f} {count(b, op):10.0f} {d:+10.0f}  {op}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--diff", action="store_true",
                    help="also list the operators whose count per step differs between the first two traces")
    ap.add_argument("--innermost", action="store_true",
                    help="CPU traces: --diff counts only innermost computing operators")
    ap.add_argument("traces", nargs="+", help="NAME=TRACE.json")
    a = ap.parse_args()
    runs = []
    for item in a.traces:
        name, _, path = item.partition("=")
        try:
            runs.append((name, summarise(path, a.steps)))
        except (OSError, ValueError, KeyError) as e:
            print(f"{name}: cannot read {path}: {e}")
    if not runs:
        return
    width = max(12, *(len(n) for n, _ in runs))
    print(f"per step, ms ({'GPU kernel time' if runs[0][1]['kernels'] else 'CPU operator self time'})")
    print(f"{'':<22}" + "".join(f"{n:>{width + 2}}" for n, _ in runs))
    for label, key in (("wall", "wall_ms"), ("device busy", "busy_ms"), ("launches / ops", "launches")):
        print(f"{label:<22}" + "".join(f"{r[key]:>{width + 2}.1f}" for _, r in runs))
    if all(r["innermost"] is not None for _, r in runs):
        print(f"{'innermost computing':<22}" + "".join(f"{sum(r['innermost'].values()):>{width + 2}.1f}" for _, r in runs))
    kinds = [k for k, _ in KINDS] + ["other elementwise"]
    for kind in kinds:
        if any(kind in r["by_kind"] for _, r in runs):
            print(f"{kind:<22}" + "".join(f"{r['by_kind'].get(kind, 0.0):>{width + 2}.1f}" for _, r in runs))
    if any(r["memory"] for _, r in runs):
        rows = [
            ("peak allocated", "peak"),
            ("  forward peak", "forward_peak"),
            ("  backward starts at", "backward_start"),
            ("  backward peak", "backward_peak"),
            ("allocated at end", "end"),
        ]
        print("memory, MiB (the last whole step for the forward and backward rows)")
        for label, key in rows:
            cells = [(r["memory"] or {}).get(key) for _, r in runs]
            if any(c is not None for c in cells):
                print(f"{label:<22}" + "".join(f"{c:>{width + 2}.0f}" if c is not None else f"{'-':>{width + 2}}" for c in cells))
        for name, r in runs:
            if r["memory"]:
                print(f"  {name}: peak during {r['memory']['peak_during']}")
    if a.diff and len(runs) >= 2:
        print_diff(runs[0], runs[1], a.innermost)
    for name, r in runs:
        print(f"\n{name}: top operators by time (ms per step, launches per step)")
        for op, (ms, n) in sorted(r["by_op"].items(), key=lambda kv: -kv[1][0])[: a.top]:
            print(f"  {ms:8.2f} {n:7.0f}  {op}")


if __name__ == "__main__":
    main()
