"""torch.optim.AdamW stepped on given gradients. Run with the torch venv's Python. One JSON
request on stdin, JSON on stdout.

{"params": {NAME: {"shape": [...], "values": [...]}}, "grads": [{NAME: [...]}, ...],
 "lrs": [...], "scales": [...], "weight_decay": WD}
    The parameters (float32) after each step k: every gradient is grads[k][NAME] times
    scales[k] (what clip_grad_norm_ does to it), the learning rate lrs[k]; β and ε PyTorch's
    defaults, as arcface_torch's train_v2.py builds it. Returns [{NAME: [...]}, ...].
"""
import json
import sys

import torch

q = json.load(sys.stdin)
params = {
    name: torch.nn.Parameter(torch.tensor(p["values"], dtype=torch.float32).reshape(p["shape"]))
    for name, p in q["params"].items()
}
opt = torch.optim.AdamW(list(params.values()), lr=q["lrs"][0], weight_decay=q["weight_decay"])
after = []
for grads, lr, scale in zip(q["grads"], q["lrs"], q["scales"]):
    for name, p in params.items():
        g = torch.tensor(grads[name], dtype=torch.float32).reshape(p.shape)
        p.grad = g * scale
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    after.append({name: p.detach().flatten().tolist() for name, p in params.items()})
print(json.dumps(after))
