"""arcface_torch's iresnet state_dict names and shapes (recognition/arcface_torch/backbones/
iresnet.py), written out from its module structure, compared with a safetensors file.

    iresnet_names.py FILE.safetensors u1,u2,u3,u4 w1,w2,w3,w4 EMBEDDING

Prints JSON {"missing": [...], "unexpected": [...], "wrong_shape": [...], "fc_weight_00": x}.
"""
import json
import sys

from safetensors.numpy import load_file


def bn(prefix, c):
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,)}


def expected(units, widths, emb, side=7):
    keys = {"conv1.weight": (widths[0], 3, 3, 3), "prelu.weight": (widths[0],)}
    keys.update(bn("bn1", widths[0]))
    inplanes = widths[0]
    for s, (n, planes) in enumerate(zip(units, widths), start=1):
        for i in range(n):
            p = f"layer{s}.{i}"
            cin = inplanes if i == 0 else planes
            keys.update(bn(f"{p}.bn1", cin))
            keys[f"{p}.conv1.weight"] = (planes, cin, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            keys[f"{p}.prelu.weight"] = (planes,)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn3", planes))
            if i == 0:
                keys[f"{p}.downsample.0.weight"] = (planes, cin, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes))
        inplanes = planes
    keys.update(bn("bn2", widths[-1]))
    keys["fc.weight"] = (emb, widths[-1] * side * side)
    keys["fc.bias"] = (emb,)
    keys.update(bn("features", emb))
    return keys


tensors = load_file(sys.argv[1])
units = [int(x) for x in sys.argv[2].split(",")]
widths = [int(x) for x in sys.argv[3].split(",")]
want = expected(units, widths, int(sys.argv[4]))
json.dump({
    "missing": sorted(set(want) - set(tensors)),
    "unexpected": sorted(set(tensors) - set(want)),
    "wrong_shape": sorted(k for k in want if k in tensors and tuple(tensors[k].shape) != want[k]),
    "fc_weight": tensors["fc.weight"][:2, :3].tolist(),
}, sys.stdout)
