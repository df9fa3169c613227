"""torch.profiler traces of PyTorch's anchor (torch_r100_bench.py: the same iresnet100 + ArcFace,
the same step), to set beside ours (`arcface bench train --profile`) kernel kind by kernel kind
with scripts/profile_summary.py. GPU only.

Usage: python3 torch_profile.py ANCHOR.py OUT_DIR [--batch 128] [--classes 85742] [--device cuda]
Writes OUT_DIR/trace_torch_train_fp32.json, ..._train_bf16.json, ..._train_bf16_cl.json,
trace_torch_infer_fp32.json, ..._infer_bf16_cl.json (3 steps or batches each, after 5 warm-ups).
"""
import argparse
import importlib.util
import os

import torch
from torch.profiler import ProfilerActivity, profile


def load_anchor(path):
    spec = importlib.util.spec_from_file_location("anchor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEVICE = "cuda"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def record(path, fn, steps=3):
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as p:
        for i in range(steps):
            fn(i)
        sync()
    p.export_chrome_trace(path)
    print("wrote", path, flush=True)


def train(anchor, out, batch, classes, amp, channels_last, name):
    torch.manual_seed(0)
    model = anchor.IResNet().to(DEVICE)
    head = anchor.ArcFace(512, classes).to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()),
                          lr=0.1, momentum=0.9, weight_decay=5e-4)
    xs = [torch.rand(batch, 3, 112, 112, device=DEVICE) * 2 - 1 for _ in range(4)]
    if channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    ys = [torch.randint(0, classes, (batch,), device=DEVICE) for _ in range(4)]

    def step(i):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            loss = head(model(xs[i % 4]), ys[i % 4])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(5):
        step(i)
    record(os.path.join(out, f"trace_torch_train_{name}.json"), step)
    del model, head, opt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def infer(anchor, out, batch, amp, channels_last, name):
    model = anchor.IResNet().to(DEVICE).eval()
    x = torch.rand(batch, 3, 112, 112, device=DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def batch(_):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            model(x)

    for i in range(3):
        batch(i)
    record(os.path.join(out, f"trace_torch_infer_{name}.json"), batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("anchor")
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--classes", type=int, default=85742)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    os.makedirs(a.out, exist_ok=True)
    anchor = load_anchor(a.anchor)
    train(anchor, a.out, a.batch, a.classes, False, False, "fp32")
    train(anchor, a.out, a.batch, a.classes, True, False, "bf16")
    train(anchor, a.out, a.batch, a.classes, True, True, "bf16_cl")
    infer(anchor, a.out, 2 * a.batch, False, False, "fp32")
    infer(anchor, a.out, 2 * a.batch, True, True, "bf16_cl")


if __name__ == "__main__":
    main()
