"""PyTorch anchor of `arcface bench head`: arcface_torch's PartialFC_V2 step at world size 1,
its code as partial_fc_v2.py and losses.py run it (sampling with rand + topk + searchsorted,
normalize, linear, clamp, CombinedMarginLoss, DistCrossEntropy's forward and backward), then
SGD (momentum 0.9, weight decay 5e-4) on the centres. Random embeddings and labels, as ours.

    python scripts/bench_partial_fc.py --classes 1000000 --batch 128 --sample-rate 0.1 --json

Prints JSON {"classes", "embedding_size", "batch", "sample_rate", "num_sample", "steps",
"head_ms", "optimizer_ms", "step_ms", "threads", "torch"}: the means over `--steps` after
`--warmup`, each part waited for (on CUDA with torch.cuda.synchronize).
"""
import argparse
import json
import math
import time

import torch


class DistCrossEntropyFunc(torch.autograd.Function):
    """partial_fc_v2.py's, with its all-reduces the identity (one rank)."""

    @staticmethod
    def forward(ctx, logits, label):
        batch_size = logits.size(0)
        max_logits, _ = torch.max(logits, dim=1, keepdim=True)
        logits.sub_(max_logits)
        logits.exp_()
        sum_logits_exp = torch.sum(logits, dim=1, keepdim=True)
        logits.div_(sum_logits_exp)
        index = torch.where(label != -1)[0]
        loss = torch.zeros(batch_size, 1, device=logits.device)
        loss[index] = logits[index].gather(1, label[index])
        ctx.save_for_backward(index, logits, label)
        return loss.clamp_min_(1e-30).log_().mean() * (-1)

    @staticmethod
    def backward(ctx, loss_gradient):
        (index, logits, label) = ctx.saved_tensors
        batch_size = logits.size(0)
        one_hot = torch.zeros(size=[index.size(0), logits.size(1)], device=logits.device)
        one_hot.scatter_(1, label[index], 1)
        logits[index] -= one_hot
        logits.div_(batch_size)
        return logits * loss_gradient.item(), None


def combined_margin(logits, labels, s=64.0, m2=0.5):
    """losses.py's CombinedMarginLoss for ArcFace (m1 = 1, m3 = 0)."""
    index_positive = torch.where(labels != -1)[0]
    target_logit = logits[index_positive, labels[index_positive].view(-1)]
    with torch.no_grad():
        target_logit.arccos_()
        logits.arccos_()
        final_target_logit = target_logit + m2
        logits[index_positive, labels[index_positive].view(-1)] = final_target_logit
        logits.cos_()
    return logits * s


def sample(weight, labels, index_positive, num_local, num_sample):
    with torch.no_grad():
        positive = torch.unique(labels[index_positive], sorted=True)
        if num_sample - positive.size(0) >= 0:
            perm = torch.rand(size=[num_local], device=weight.device)
            perm[positive] = 2.0
            index = torch.topk(perm, k=num_sample)[1]
            index = index.sort()[0]
        else:
            index = positive
        labels[index_positive] = torch.searchsorted(index, labels[index_positive])
    return weight[index]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, default=1_000_000)
    ap.add_argument("--embedding", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sample-rate", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.normal(0, 0.01, (a.classes, a.embedding), device=device))
    opt = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    num_sample = int(a.sample_rate * a.classes)
    sets = [
        (torch.randn(a.batch, a.embedding, device=device),
         torch.randint(0, a.classes, (a.batch,), device=device))
        for _ in range(4)
    ]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    head = optimizer = 0.0
    for step in range(a.warmup + a.steps):
        embeddings, labels = sets[step % 4]
        sync()
        t0 = time.perf_counter()
        labels = labels.clone().view(-1, 1)
        index_positive = (0 <= labels) & (labels < a.classes)
        labels[~index_positive] = -1
        if a.sample_rate < 1:
            w = sample(weight, labels, index_positive, a.classes, num_sample)
        else:
            w = weight
        logits = torch.nn.functional.linear(
            torch.nn.functional.normalize(embeddings), torch.nn.functional.normalize(w)
        ).clamp(-1, 1)
        logits = combined_margin(logits, labels)
        loss = DistCrossEntropyFunc.apply(logits, labels)
        loss.backward()
        sync()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        sync()
        t2 = time.perf_counter()
        if step >= a.warmup:
            head += t1 - t0
            optimizer += t2 - t1
    ms = lambda s: s / a.steps * 1e3
    result = {
        "classes": a.classes, "embedding_size": a.embedding, "batch": a.batch,
        "sample_rate": a.sample_rate, "num_sample": num_sample if a.sample_rate < 1 else a.classes,
        "steps": a.steps, "head_ms": ms(head), "optimizer_ms": ms(optimizer),
        "step_ms": ms(head + optimizer), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "loss": loss.item(),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"PyTorch PartialFC_V2, {a.classes} classes, sample rate {a.sample_rate}: "
              f"head {result['head_ms']:.1f} ms, optimizer {result['optimizer_ms']:.1f} ms, "
              f"step {result['step_ms']:.1f} ms")


if __name__ == "__main__":
    main()
