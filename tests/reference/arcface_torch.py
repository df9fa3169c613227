"""arcface_torch's iresnet and MobileFaceNet (recognition/arcface_torch/backbones/iresnet.py and
mobilefacenet.py), written out again here module for module, and the files arcface_torch makes
of them: torch.save(state_dict) as
backbone.pth, and torch2onnx.py's ONNX export. Run with the torch venv's Python
(scripts/setup-libtorch.sh). One JSON request on stdin, JSON on stdout.

{"op": "make", "network": "r18" | "mbf" | ..., "dir": D, "seed": S, "images": F32_FILE, "n": N}
    Trained-like weights (BatchNorm statistics measured on noise images, γ, β and PReLU slopes
    that differ per channel), written as D/backbone.pth (zip), D/backbone_legacy.pth (the
    pre-1.6 format), D/model.onnx (torch2onnx.py: opset 11, input "data", eval mode, so the
    exporter folds BatchNorm into the convolutions). Returns PyTorch's embeddings of the N raw
    RGB [3,112,112] images fed as (x/255 - 0.5)/0.5, and the parameter count.
{"op": "load", "network": "r18", "safetensors": F, "images": F32_FILE, "n": N}
    get_model(network).load_state_dict(safetensors.torch.load_file(F), strict=True) and its
    embeddings of the images.
{"op": "gradients", "network": "mbf", "num_features": E, "safetensors": F, "images": F32_FILE,
 "n": N, "labels": [...], "eps": EPS, "input_scale": K, "margin": M, "scale": S, "out": G}
    One training step's gradients in float64 and in float32: F holds the backbone's state dict
    (its running statistics too) and `head.weight` [classes, E], the class centres. The model in
    train mode with every BatchNorm's eps set to EPS, input (x - 127.5)·K, the ArcFace loss
    (cos(θ + M) with insightface's th/mm fallback, ×S, mean cross-entropy). Writes G
    (safetensors, float64 values): `NAME` for float64's gradient of each parameter and
    `head.weight`, `NAME@fp32` for float32's. Returns both losses.
{"op": "count", "networks": [...]}
    Parameters of each network as PyTorch counts them (sum of p.numel() over parameters()).
{"op": "bad", "dir": D}
    Files that are not an r18 state dict: another architecture, a pickle that is not a state
    dict, a truncated zip, a missing tensor, a tensor of the wrong shape.
"""
import json
import math
import os
import sys

import torch
from torch import nn


def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers, dropout=0.0, num_features=512):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05),
            )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.prelu(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


UNITS = {"r18": [2, 2, 2, 2], "r34": [3, 4, 6, 3], "r50": [3, 4, 14, 3],
         "r100": [3, 13, 30, 3], "r200": [6, 26, 60, 6]}


# mobilefacenet.py (adapted there from cavaface.pytorch), module for module.
class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class ConvBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, groups=groups, stride=stride, padding=padding,
                      bias=False),
            nn.BatchNorm2d(num_features=out_c),
            nn.PReLU(num_parameters=out_c))

    def forward(self, x):
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(num_features=out_c))

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2),
                 padding=(1, 1), groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, out_c=groups, kernel=(1, 1), padding=(0, 0), stride=(1, 1)),
            ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding,
                      stride=stride),
            LinearBlock(groups, out_c, kernel=(1, 1), padding=(0, 0), stride=(1, 1)))

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, c, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, True, kernel, stride, padding, groups)
                                      for _ in range(num_block)])

    def forward(self, x):
        return self.layers(x)


class GDC(nn.Module):
    def __init__(self, embedding_size):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0)),
            Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size))

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, num_features=512, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        s = scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, 64 * s, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(64 * s, 64 * s, kernel=(3, 3), stride=(1, 1),
                                         padding=(1, 1), groups=64))
        else:
            self.layers.append(Residual(64 * s, num_block=blocks[0], groups=128, kernel=(3, 3),
                                        stride=(1, 1), padding=(1, 1)))
        self.layers.extend([
            DepthWise(64 * s, 64 * s, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
            Residual(64 * s, num_block=blocks[1], groups=128, kernel=(3, 3), stride=(1, 1),
                     padding=(1, 1)),
            DepthWise(64 * s, 128 * s, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
            Residual(128 * s, num_block=blocks[2], groups=256, kernel=(3, 3), stride=(1, 1),
                     padding=(1, 1)),
            DepthWise(128 * s, 128 * s, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                      groups=512),
            Residual(128 * s, num_block=blocks[3], groups=256, kernel=(3, 3), stride=(1, 1),
                     padding=(1, 1)),
        ])
        self.conv_sep = ConvBlock(128 * s, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(num_features)

    def forward(self, x):
        for func in self.layers:
            x = func(x)
        return self.features(self.conv_sep(x))


def get_model(name, **kwargs):
    if name == "mbf":
        return MobileFaceNet(kwargs.get("num_features", 512))
    if name == "mbf_large":
        return MobileFaceNet(kwargs.get("num_features", 512), blocks=(2, 8, 12, 4), scale=4)
    return IResNet(UNITS[name], **kwargs)


def trained_like(model, seed):
    """Per-channel γ, β, PReLU slopes, then BatchNorm statistics measured in train mode on
    noise images, so activations stay in range as in a trained network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                if m is not model.features:
                    m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.momentum = None  # cumulative average over the calibration batches
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.05 + 0.35 * torch.rand(m.weight.shape, generator=g))
        model.train()
        for _ in range(2):
            x = torch.rand((16, 3, 112, 112), generator=g) * 2 - 1
            model(x)
    model.eval()


def images(req):
    raw = torch.frombuffer(bytearray(open(req["images"], "rb").read()), dtype=torch.float32)
    return raw.reshape(req["n"], 3, 112, 112)


def embed(model, raw):
    with torch.no_grad():
        return model((raw / 255.0 - 0.5) / 0.5).tolist()


def make(req):
    torch.manual_seed(req["seed"])
    model = get_model(req["network"])
    trained_like(model, req["seed"])
    d = req["dir"]
    torch.save(model.state_dict(), os.path.join(d, "backbone.pth"))
    torch.save(model.state_dict(), os.path.join(d, "backbone_legacy.pth"),
               _use_new_zipfile_serialization=False)
    # torch2onnx.py's convert_onnx: a normalised random image, input "data", opset 11, a
    # symbolic batch written into the file afterwards.
    img = (torch.randint(0, 255, (1, 3, 112, 112)).float() / 255.0 - 0.5) / 0.5
    out = os.path.join(d, "model.onnx")
    torch.onnx.export(model, img, out, input_names=["data"], keep_initializers_as_inputs=False,
                      verbose=False, opset_version=11, dynamo=False)
    import onnx
    m = onnx.load(out)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(m, out)
    ops = sorted({n.op_type for n in m.graph.node})
    conv_bias = sum(1 for n in m.graph.node if n.op_type == "Conv" and len(n.input) == 3)
    return {"embeddings": embed(model, images(req)), "ops": ops, "conv_with_bias": conv_bias,
            "parameters": sum(p.numel() for p in model.parameters())}


def load(req):
    from safetensors.torch import load_file
    model = get_model(req["network"])
    model.load_state_dict(load_file(req["safetensors"]), strict=True)
    model.eval()
    return {"embeddings": embed(model, images(req))}


def bad(req):
    d = req["dir"]
    torch.save(nn.Linear(3, 2).state_dict(), os.path.join(d, "linear.pth"))
    torch.save({"epoch": 3, "lr": 0.1}, os.path.join(d, "not_a_state_dict.pth"))
    model = get_model("r18")
    state = model.state_dict()
    torch.save(state, os.path.join(d, "good.pth"))
    data = open(os.path.join(d, "good.pth"), "rb").read()
    open(os.path.join(d, "truncated.pth"), "wb").write(data[: len(data) // 2])
    missing = dict(state)
    del missing["layer3.1.bn2.running_var"]
    torch.save(missing, os.path.join(d, "missing.pth"))
    wrong = dict(state)
    wrong["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(wrong, os.path.join(d, "wrong_shape.pth"))
    return {}


def arcface_loss(embeddings, centres, labels, margin, scale):
    """insightface's ArcFace (CombinedMarginLoss with m1 = 1, m3 = 0), from the formulas."""
    e = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w = centres / centres.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (e @ w.t()).clamp(-1.0, 1.0)
    rows = torch.arange(len(labels))
    target = cos[rows, labels]
    sin = (1.0 - target * target).clamp_min(1e-12).sqrt()
    phi = target * math.cos(margin) - sin * math.sin(margin)
    th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    phi = torch.where(target > th, phi, target - mm)
    logits = cos.clone()
    logits[rows, labels] = phi
    return nn.functional.cross_entropy(logits * scale, labels)


def gradients(req):
    from safetensors.torch import load_file, save_file
    state = load_file(req["safetensors"])
    centres = state.pop("head.weight")
    labels = torch.tensor(req["labels"], dtype=torch.int64)
    out, losses = {}, {}
    for dtype, suffix in ((torch.float64, ""), (torch.float32, "@fp32")):
        model = get_model(req["network"], num_features=req["num_features"])
        model.load_state_dict(state, strict=True)
        model = model.to(dtype).train()
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.eps = req["eps"]
        head = nn.Parameter(centres.to(dtype))
        x = (images(req).to(dtype) - 127.5) * req["input_scale"]
        loss = arcface_loss(model(x), head, labels, req["margin"], req["scale"])
        loss.backward()
        for name, p in list(model.named_parameters()) + [("head.weight", head)]:
            out[name + suffix] = p.grad.detach().to(torch.float64).contiguous()
        losses["fp64" if not suffix else "fp32"] = loss.item()
    save_file(out, req["out"])
    return losses


def count(req):
    return {n: sum(p.numel() for p in get_model(n).parameters()) for n in req["networks"]}


if __name__ == "__main__":
    req = json.load(sys.stdin)
    json.dump({"make": make, "load": load, "gradients": gradients, "count": count,
               "bad": bad}[req["op"]](req),
              sys.stdout)
