"""torch.profiler traces of PyTorch's anchor (torch_r100_bench.py: the same iresnet100 + ArcFace,
the same step), to set beside ours (`arcface bench train --profile`) kernel kind by kernel kind
with scripts/profile_summary.py; on a GPU, or on LibTorch's CPU beside ours on libtorch-cpu.

Usage: python3 torch_profile.py ANCHOR.py|arcface_torch OUT_DIR [--batch 128] [--classes 85742] [--device cuda]
                                 [--units 3,13,30,3] [--widths 64,128,256,512] [--network mbf|vit_t]
                                 [--optimizer sgd|adamw]
                                 [--only train_fp32,infer_fp32,...] [--time N]
Writes OUT_DIR/trace_torch_train_fp32.json, ..._train_bf16.json, ..._train_bf16_cl.json,
trace_torch_infer_fp32.json, ..._infer_bf16_cl.json (3 steps or batches each, after 5 warm-ups;
`--only` picks some, or infer_bf16: autocast without channels-last, for LibTorch's CPU), with
every allocation and free (profile_memory), so that profile_summary.py can set the peak beside
ours; `--time N` times N steps instead, unprofiled, and prints one JSON line per run. On the CPU
(`--device cpu`, with `--units` for a smaller network of the anchor's kind, e.g. 3,4,14,3 for
r50) that peak counts every live tensor byte, as `arcface bench train --profile` does.
`--network mbf` (or mbf_large) puts arcface_torch's MobileFaceNet in the anchor's iresnet's
place (tests/reference/arcface_torch.py, mobilefacenet.py module for module), for
`arcface bench train --config configs/mbf.toml` beside it; `--network vit_t` (or vit_s, vit_b,
vit_tiny) arcface_torch's ViT (tests/reference/vit.py, vit.py module for module), masking 10 %
of the tokens in training as vit.py does, for `--config configs/vit_t.toml`. `--optimizer
adamw` steps with torch.optim.AdamW (weight decay 0.1, as the ViT recipes) instead of SGD.
ANCHOR `arcface_torch` takes arcface_torch's own iresnet (tests/reference/arcface_torch.py,
IBasicBlock for IBasicBlock) with an ArcFace head of the anchor's arithmetic instead of a file,
so that the CPU table (scripts/bench-cpu.sh) needs nothing outside the repository;
`--embedding` sets the embedding width (configs/tiny.toml's 128).
"""
import argparse
import ctypes
import importlib.util
import json
import math
import os
import time
import types

import torch
from torch.profiler import ProfilerActivity, profile


def load_anchor(path):
    spec = importlib.util.spec_from_file_location("anchor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_anchor():
    """The anchor's three names over arcface_torch's iresnet (tests/reference/arcface_torch.py):
    IBlock(cin, cout, stride), IResNet(layers, emb) with its stages in one `body`, and ArcFace
    (additive angular margin, s 64, m 0.5, as the anchor's)."""
    here = os.path.dirname(os.path.abspath(__file__))
    ref = load_anchor(os.path.join(here, "..", "tests", "reference", "arcface_torch.py"))
    nn, F = torch.nn, torch.nn.functional

    class IBlock(ref.IBasicBlock):
        def __init__(self, cin, cout, stride):
            down = None
            if stride != 1 or cin != cout:
                down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                     nn.BatchNorm2d(cout, eps=1e-5))
            super().__init__(cin, cout, stride, down)

    class IResNet(ref.IResNet):
        def __init__(self, layers, emb=512):
            super().__init__(layers, num_features=emb)
            self.body = nn.Sequential(self.layer1, self.layer2, self.layer3, self.layer4)
            del self.layer1, self.layer2, self.layer3, self.layer4

        def forward(self, x):
            x = self.bn2(self.body(self.prelu(self.bn1(self.conv1(x)))))
            return self.features(self.fc(self.dropout(torch.flatten(x, 1))))

    class ArcFace(nn.Module):
        def __init__(self, emb, classes, s=64.0, m=0.5):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(classes, emb) * 0.01)
            self.s, self.cos_m, self.sin_m = s, math.cos(m), math.sin(m)
            self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

        def forward(self, e, y):
            cos = F.linear(F.normalize(e.float()), F.normalize(self.weight.float())).clamp(-1, 1)
            tgt = cos.gather(1, y[:, None])
            sin = (1 - tgt * tgt).clamp_min(0).sqrt()
            phi = torch.where(tgt > self.th, tgt * self.cos_m - sin * self.sin_m, tgt - self.mm)
            return F.cross_entropy(cos.scatter(1, y[:, None], phi) * self.s, y)

    return types.SimpleNamespace(IBlock=IBlock, IResNet=IResNet, ArcFace=ArcFace)


DEVICE = "cuda"
UNITS = (3, 13, 30, 3)
WIDTHS = (64, 128, 256, 512)  # the anchor's
NETWORK = None  # --network mbf or vit_t: arcface_torch's MobileFaceNet or ViT instead
OPTIMIZER = "sgd"
# --network's ViTs: (width, depth, heads, mask ratio in training). vit.py masks 10 % whatever
# get_model asks (its random_masking is called without the ratio); vit_tiny is ours.
# The WebFace recipes' `_mask0` variants (configs/vit_t.toml, vit_s.toml) mask nothing.
VITS = {"vit_t": (256, 12, 8, 0.1), "vit_t_dp005_mask0": (256, 12, 8, 0.0),
        "vit_s": (512, 12, 8, 0.1), "vit_s_dp005_mask_0": (512, 12, 8, 0.0),
        "vit_b": (512, 24, 8, 0.1), "vit_tiny": (64, 4, 8, 0.1)}
EMBEDDING = 512  # --embedding: the iresnets' embedding width
TIME = 0  # --time N: time N steps without the profiler instead of recording


def track_cpu_memory():
    """c10 counts CPU tensor bytes only while a profiler records memory, unless this flag is on:
    set before the model exists, the CPU "[memory]" events' "Total Allocated" is every live
    tensor byte (our binary sets the same flag through its shim)."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
    ctypes.c_bool.in_dll(lib, "FLAGS_caffe2_report_cpu_memory_usage").value = True


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def record(path, fn, steps=3):
    """Profiles `steps` calls of fn(i), or with --time times TIME of them back to back; fn(i,
    parts) with a list appends the seconds of each part of a call, each waited for (forward,
    backward, optimizer: as `arcface bench train` reports its own), timed over TIME more."""
    sync()
    if TIME:
        start = time.perf_counter()
        for i in range(TIME):
            fn(i)
        sync()
        run = os.path.basename(path).removeprefix("trace_torch_").removesuffix(".json")
        line = dict(run=run, ms_per_step=(time.perf_counter() - start) * 1e3 / TIME)
        parts = []
        fn(0, parts)
        if parts:
            parts = []
            for i in range(TIME):
                fn(i, parts)
            for k, name in enumerate(("forward_ms", "backward_ms", "optimizer_ms")):
                line[name] = sum(p[k] for p in parts) * 1e3 / TIME
        print(json.dumps(line), flush=True)
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as p:
        for i in range(steps):
            fn(i)
        sync()
    p.export_chrome_trace(path)
    print("wrote", path, flush=True)


def backbone(anchor):
    """The anchor's IResNet with UNITS, and WIDTHS put in place of its layers where they differ
    (its forward kept): at tiny widths the kernels do almost nothing and a step's time is the
    framework's own cost of each operation, as `arcface bench train --widths` measures ours.
    With --network, arcface_torch's MobileFaceNet or ViT of that name."""
    here = os.path.dirname(os.path.abspath(__file__))
    if NETWORK in VITS:
        return vit(load_anchor(os.path.join(here, "..", "tests", "reference", "vit.py")))
    if NETWORK:
        reference = load_anchor(os.path.join(here, "..", "tests", "reference", "arcface_torch.py"))
        return reference.get_model(NETWORK)
    model = anchor.IResNet(layers=UNITS, emb=EMBEDDING)
    if WIDTHS != (64, 128, 256, 512):
        nn = torch.nn
        model.conv1 = nn.Conv2d(3, WIDTHS[0], 3, 1, 1, bias=False)
        model.bn1 = nn.BatchNorm2d(WIDTHS[0], eps=2e-5)
        model.prelu = nn.PReLU(WIDTHS[0])
        blocks, cin = [], WIDTHS[0]
        for n, cout in zip(UNITS, WIDTHS):
            for i in range(n):
                blocks.append(anchor.IBlock(cin, cout, 2 if i == 0 else 1))
                cin = cout
        model.body = nn.Sequential(*blocks)
        model.bn2 = nn.BatchNorm2d(cin, eps=2e-5)
        model.fc = nn.Linear(cin * 7 * 7, model.fc.out_features)
    return model


def vit(reference):
    """The ViT of --network; in train mode it masks as vit.py's random_masking (argsort of
    uniform noise per image), in eval mode nothing."""
    width, depth, heads, mask_ratio = VITS[NETWORK]
    model = reference.VisionTransformer(width, depth, heads, 512, mask_ratio)
    forward = model.forward

    def masked(x):
        if not model.training or mask_ratio == 0:
            return forward(x)
        noise = torch.rand(x.shape[0], 144, device=x.device)
        return forward(x, torch.argsort(noise, dim=1))

    model.forward = masked
    return model


def optimizer(params):
    if OPTIMIZER == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def train(anchor, out, batch, classes, amp, channels_last, name):
    torch.manual_seed(0)
    model = backbone(anchor).to(DEVICE)
    head = anchor.ArcFace(EMBEDDING if not NETWORK else 512, classes).to(DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = optimizer(list(model.parameters()) + list(head.parameters()))
    xs = [torch.rand(batch, 3, 112, 112, device=DEVICE) * 2 - 1 for _ in range(4)]
    if channels_last:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    ys = [torch.randint(0, classes, (batch,), device=DEVICE) for _ in range(4)]

    def step(i, parts=None):
        t0 = time.perf_counter()
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            loss = head(model(xs[i % 4]), ys[i % 4])
        if parts is not None:
            sync()
            t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if parts is not None:
            sync()
            t2 = time.perf_counter()
        opt.step()
        if parts is not None:
            sync()
            parts.append((t1 - t0, t2 - t1, time.perf_counter() - t2))

    for i in range(5):
        step(i)
    record(os.path.join(out, f"trace_torch_train_{name}.json"), step)
    del model, head, opt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


@torch.no_grad()
def infer(anchor, out, batch, amp, channels_last, name):
    model = backbone(anchor).to(DEVICE).eval()
    x = torch.rand(batch, 3, 112, 112, device=DEVICE)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def batch(_, parts=None):
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
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (LibTorch's CPU kernels, as ours on libtorch-cpu)")
    ap.add_argument("--units", default="3,13,30,3", help="units per stage")
    ap.add_argument("--widths", default="64,128,256,512", help="output channels per stage "
                    "(e.g. 8,8,8,8 with --batch 2: the framework's cost per operation)")
    ap.add_argument("--time", type=int, default=0, help="time this many steps (or batches) "
                    "after the warm-up instead of profiling; prints one JSON line per run")
    ap.add_argument("--network", default=None, choices=["mbf", "mbf_large", *VITS],
                    help="arcface_torch's MobileFaceNet or ViT instead of the anchor's iresnet")
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    ap.add_argument("--embedding", type=int, default=512, help="the iresnet's embedding width")
    ap.add_argument("--only", default="", help="comma-separated: train_fp32, train_bf16, "
                    "train_bf16_cl, infer_fp32, infer_bf16, infer_bf16_cl (all but infer_bf16 by default: "
                    "the anchor's runs)")
    a = ap.parse_args()
    global DEVICE, UNITS, WIDTHS, TIME, NETWORK, OPTIMIZER, EMBEDDING
    DEVICE = a.device
    NETWORK = a.network
    OPTIMIZER = a.optimizer
    TIME = a.time
    EMBEDDING = a.embedding
    UNITS = tuple(int(u) for u in a.units.split(","))
    WIDTHS = tuple(int(w) for w in a.widths.split(","))
    if len(WIDTHS) != 4 or min(WIDTHS) < 1:
        ap.error("--widths: four positive numbers")
    track_cpu_memory()
    os.makedirs(a.out, exist_ok=True)
    anchor = reference_anchor() if a.anchor == "arcface_torch" else load_anchor(a.anchor)
    runs = {
        "train_fp32": lambda: train(anchor, a.out, a.batch, a.classes, False, False, "fp32"),
        "train_bf16": lambda: train(anchor, a.out, a.batch, a.classes, True, False, "bf16"),
        "train_bf16_cl": lambda: train(anchor, a.out, a.batch, a.classes, True, True, "bf16_cl"),
        "infer_fp32": lambda: infer(anchor, a.out, 2 * a.batch, False, False, "fp32"),
        "infer_bf16": lambda: infer(anchor, a.out, 2 * a.batch, True, False, "bf16"),
        "infer_bf16_cl": lambda: infer(anchor, a.out, 2 * a.batch, True, True, "bf16_cl"),
    }
    only = [o for o in a.only.split(",") if o]
    unknown = [o for o in only if o not in runs]
    if unknown:
        ap.error(f"--only: unknown {unknown}; choose from {list(runs)}")
    for name, run in runs.items():
        if name in only or (not only and name != "infer_bf16"):
            run()


if __name__ == "__main__":
    main()
