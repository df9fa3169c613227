"""arcface_torch's Vision Transformer (recognition/arcface_torch/backbones/vit.py, as get_model
builds it), written out again here module for module with vit.py's parameter names, run in
PyTorch. Run with the torch venv's Python (scripts/setup-libtorch.sh). One JSON request on
stdin, JSON on stdout.

{"op": "count", "networks": [...]}
    Parameters of get_model(name) for each name (sum of p.numel() over parameters()).
{"op": "pth", "width": D, "depth": L, "heads": H, "embedding": E, "safetensors": F,
 "dir": DIR, "images": F32_FILE, "n": N}
    The ViT loaded strict from F, saved as arcface_torch saves it (torch.save(state_dict) as
    DIR/backbone.pth) and exports it (torch2onnx.py, DIR/model.onnx); returns its eval-mode
    embeddings of the N raw RGB images.
{"op": "step", "width": D, "depth": L, "heads": H, "embedding": E, "mask_ratio": R,
 "safetensors": F, "images": F32_FILE, "n": N, "order": [[...], ...] | null,
 "direction": F32_FILE, "out": G}
    The ViT in train mode (BatchNorm on batch statistics, drop path off), loaded
    strict from F (our `export --safetensors` of it); N raw RGB images fed as
    (x/255 - 0.5)/0.5; masking with `order` as random_masking's ids_shuffle (null: none). The
    loss sum(embedding * direction) ([N, E] from DIRECTION) and its backward. Writes G
    (safetensors, float64 values): `embedding`, every parameter's gradient by its name, and the
    BatchNorm running statistics after the step; `NAME@fp32` the same step run in float32.
    Returns the float64 loss.
"""
import json
import sys

import torch
from torch import nn
from safetensors.torch import load_file, save_file

# get_model's ViTs: name -> (width, depth, heads).
NETWORKS = {
    "vit_t": (256, 12, 8),
    "vit_t_dp005_mask0": (256, 12, 8),
    "vit_s": (512, 12, 8),
    "vit_s_dp005_mask_0": (512, 12, 8),
    "vit_b": (512, 24, 8),
    "vit_b_dp005_mask_005": (512, 24, 8),
    "vit_l_dp005_mask_005": (768, 24, 8),
}


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=9, stride=9)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, dim, depth, heads, num_features=512, mask_ratio=0.0):
        super().__init__()
        self.dim, self.mask_ratio, self.num_patches = dim, mask_ratio, 144
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 144, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(
            nn.Linear(dim * 144, dim, bias=False),
            nn.BatchNorm1d(dim, eps=2e-5),
            nn.Linear(dim, num_features, bias=False),
            nn.BatchNorm1d(num_features, eps=2e-5),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x, ids_shuffle=None):
        n = x.shape[0]
        x = self.patch_embed(x) + self.pos_embed
        if ids_shuffle is not None:
            # random_masking with the permutation given instead of argsort(noise).
            keep = int(144 * (1 - self.mask_ratio))
            ids_restore = torch.argsort(ids_shuffle, dim=1)
            x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, self.dim))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if ids_shuffle is not None:
            tokens = self.mask_token.repeat(n, 144 - x.shape[1], 1)
            x = torch.cat([x, tokens], dim=1)
            x = torch.gather(x, 1, ids_restore.unsqueeze(-1).repeat(1, 1, self.dim))
        return self.feature(x.reshape(n, 144 * self.dim))


def read_f32(path, shape):
    with open(path, "rb") as f:
        data = f.read()
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(shape).clone()


def run(q, dtype):
    """The step in `dtype`: {name: tensor} of the embedding, gradients and statistics."""
    model = VisionTransformer(q["width"], q["depth"], q["heads"], q["embedding"], q["mask_ratio"])
    model.load_state_dict(load_file(q["safetensors"]), strict=True)
    model = model.to(dtype).train()
    n = q["n"]
    images = read_f32(q["images"], (n, 3, 112, 112)).to(dtype)
    direction = read_f32(q["direction"], (n, q["embedding"])).to(dtype)
    order = None if q["order"] is None else torch.tensor(q["order"], dtype=torch.int64)
    embedding = model((images / 255 - 0.5) / 0.5, order)
    loss = (embedding * direction).sum()
    loss.backward()
    out = {"embedding": embedding.detach()}
    for name, p in model.named_parameters():
        if p.grad is not None:  # the mask token, when nothing is masked
            out[name] = p.grad.detach()
    for name, b in model.named_buffers():
        if "running_" in name:
            out[name] = b.detach()
    return loss.item(), out


def step(q):
    torch.set_num_threads(2)
    loss, out = run(q, torch.float64)
    _, fp32 = run(q, torch.float32)
    out.update({f"{k}@fp32": v.double() for k, v in fp32.items()})
    save_file({k: v.contiguous() for k, v in out.items()}, q["out"])
    return {"loss": loss}


def pth(q):
    model = VisionTransformer(q["width"], q["depth"], q["heads"], q["embedding"])
    model.load_state_dict(load_file(q["safetensors"]), strict=True)
    model.eval()
    torch.save(model.state_dict(), f'{q["dir"]}/backbone.pth')
    # torch2onnx.py's convert_onnx: a normalised random image, input "data", opset 11, a
    # symbolic batch written into the file afterwards (its Reshapes keep the traced batch 1).
    img = (torch.randint(0, 255, (1, 3, 112, 112)).float() / 255.0 - 0.5) / 0.5
    out = f'{q["dir"]}/model.onnx'
    torch.onnx.export(model, img, out, input_names=["data"], keep_initializers_as_inputs=False,
                      verbose=False, opset_version=11, dynamo=False)
    import onnx
    m = onnx.load(out)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(m, out)
    images = read_f32(q["images"], (q["n"], 3, 112, 112))
    with torch.no_grad():
        embeddings = model((images / 255 - 0.5) / 0.5)
    return {"embeddings": embeddings.tolist()}


def count(q):
    out = {}
    for name in q["networks"]:
        dim, depth, heads = NETWORKS[name]
        with torch.device("meta"):
            model = VisionTransformer(dim, depth, heads)
        out[name] = sum(p.numel() for p in model.parameters())
    return out


if __name__ == "__main__":
    query = json.load(sys.stdin)
    print(json.dumps({"step": step, "pth": pth, "count": count}[query["op"]](query)))
