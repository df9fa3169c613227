"""arcface_torch's learning-rate schedule (recognition/arcface_torch/lr_scheduler.py,
PolynomialLRWarmup), written out again here as a torch.optim.lr_scheduler._LRScheduler, and
driven as train_v2.py drives it: the scheduler built on an SGD optimizer before the first step
(whose construction steps it once), then `optimizer.step()` and `scheduler.step()` after every
training step. Run with the torch venv's Python (scripts/setup-libtorch.sh).

stdin: {"base_lr": LR, "warmup": W, "total": T, "power": P, "steps": N}
stdout: {"lr": [the rate each of steps 0..N-1 trains at]}
"""
import json
import sys

import torch
from torch.optim.lr_scheduler import _LRScheduler


class PolynomialLRWarmup(_LRScheduler):
    """Linear warmup over `warmup_iters` scheduler steps, then each step multiplies the rate by
    the ratio of the polynomial factor now to the one before, as arcface_torch does: the
    chained form, not the closed one, since that is what a training run follows."""

    def __init__(self, optimizer, warmup_iters, total_iters=5, power=1.0, last_epoch=-1):
        super().__init__(optimizer, last_epoch=last_epoch)
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters

    def get_lr(self):
        step = self.last_epoch
        current = [group["lr"] for group in self.optimizer.param_groups]
        # The constructor's own step (before total_iters exists) and every step past the end
        # keep the rate.
        if step == 0 or step > self.total_iters:
            return current
        if step <= self.warmup_iters:
            return [base * step / self.warmup_iters for base in self.base_lrs]
        w, t = self.warmup_iters, self.total_iters
        now = 1.0 - (step - w) / (t - w)
        before = 1.0 - (step - 1 - w) / (t - w)
        return [lr * (now / before) ** self.power for lr in current]


def main():
    q = json.load(sys.stdin)
    parameter = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([parameter], lr=q["base_lr"], momentum=0.9)
    scheduler = PolynomialLRWarmup(optimizer, q["warmup"], q["total"], power=q["power"])
    rates = []
    for _ in range(q["steps"]):
        rates.append(optimizer.param_groups[0]["lr"])
        parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        scheduler.step()
    json.dump({"lr": rates}, sys.stdout)


if __name__ == "__main__":
    main()
