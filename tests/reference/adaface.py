"""mk-minchul/AdaFace's head (head.py's AdaFace module, written out again here line for line)
with its training loss (train_val.py: cross-entropy over the head's scaled cosines) and the
backbone's last step (net.py: `norm = torch.norm(x, 2, 1, True); output = torch.div(x, norm)`),
run in PyTorch in float64. One JSON request on stdin, JSON on stdout:

{"m": M, "h": H, "s": S, "t_alpha": A, "embedding_size": E, "classes": C,
 "kernel": [E*C] (head.py's [E, C] kernel, row-major), "batches": [{"x": [B*E], "labels": [B]}]}
    The batches one after another through one head (its buffers carried), the kernel fixed:
    for each, the logits [B*C], the mean loss, d loss/d x [B*E] and d loss/d kernel [E*C], and
    the buffers batch_mean and batch_std after it.
"""
import json
import math
import sys

import torch
from torch.nn import Module, Parameter


def l2_norm(input, axis=1):
    norm = torch.norm(input, 2, axis, True)
    output = torch.div(input, norm)
    return output


class AdaFace(Module):
    def __init__(self, embedding_size=512, classnum=70722, m=0.4, h=0.333, s=64., t_alpha=1.0):
        super().__init__()
        self.classnum = classnum
        self.kernel = Parameter(torch.Tensor(embedding_size, classnum))
        self.m = m
        self.eps = 1e-3
        self.h = h
        self.s = s
        self.t_alpha = t_alpha
        self.register_buffer('t', torch.zeros(1))
        self.register_buffer('batch_mean', torch.ones(1) * (20))
        self.register_buffer('batch_std', torch.ones(1) * 100)

    def forward(self, embbedings, norms, label):
        kernel_norm = l2_norm(self.kernel, axis=0)
        cosine = torch.mm(embbedings, kernel_norm)
        cosine = cosine.clamp(-1 + self.eps, 1 - self.eps)

        safe_norms = torch.clip(norms, min=0.001, max=100)
        safe_norms = safe_norms.clone().detach()

        with torch.no_grad():
            mean = safe_norms.mean().detach()
            std = safe_norms.std().detach()
            self.batch_mean = mean * self.t_alpha + (1 - self.t_alpha) * self.batch_mean
            self.batch_std = std * self.t_alpha + (1 - self.t_alpha) * self.batch_std

        margin_scaler = (safe_norms - self.batch_mean) / (self.batch_std + self.eps)
        margin_scaler = margin_scaler * self.h
        margin_scaler = torch.clip(margin_scaler, -1, 1)

        m_arc = torch.zeros(label.size()[0], cosine.size()[1], device=cosine.device)
        m_arc.scatter_(1, label.reshape(-1, 1), 1.0)
        g_angular = self.m * margin_scaler * -1
        m_arc = m_arc * g_angular
        theta = cosine.acos()
        theta_m = torch.clip(theta + m_arc, min=self.eps, max=math.pi - self.eps)
        cosine = theta_m.cos()

        m_cos = torch.zeros(label.size()[0], cosine.size()[1], device=cosine.device)
        m_cos.scatter_(1, label.reshape(-1, 1), 1.0)
        g_add = self.m + (self.m * margin_scaler)
        m_cos = m_cos * g_add
        cosine = cosine - m_cos

        scaled_cosine_m = cosine * self.s
        return scaled_cosine_m


def main():
    q = json.load(sys.stdin)
    torch.set_default_dtype(torch.float64)
    e, c = q["embedding_size"], q["classes"]
    head = AdaFace(e, c, q["m"], q["h"], q["s"], q["t_alpha"])
    with torch.no_grad():
        head.kernel.copy_(torch.tensor(q["kernel"]).view(e, c))
    out = []
    for batch in q["batches"]:
        x = torch.tensor(batch["x"]).view(-1, e).requires_grad_()
        labels = torch.tensor(batch["labels"], dtype=torch.long)
        norm = torch.norm(x, 2, 1, True)
        output = torch.div(x, norm)
        head.kernel.grad = None
        logits = head(output, norm, labels)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        out.append({
            "logits": logits.detach().flatten().tolist(),
            "loss": loss.item(),
            "x_grad": x.grad.flatten().tolist(),
            "kernel_grad": head.kernel.grad.flatten().tolist(),
            "batch_mean": head.batch_mean.item(),
            "batch_std": head.batch_std.item(),
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
