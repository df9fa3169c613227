"""A small LResNet-E-IR built as insightface's MXNet symbol (fresnet.py, version_unit 3,
version_input 1, version_output E with a Flatten before pre_fc1: units [1,1,1,1] at widths [8,16,32,64], 128-d) with random
trained-like parameters, exported by MXNet's own ONNX exporter (mx.onnx.export_model), and
MXNet's embeddings. Run with a Python that has mxnet==1.9.1, numpy<1.24, onnx<1.15 (.ci/run
makes .venv-mxnet). One JSON request on stdin, JSON on stdout.

{"dir": D, "images": F32_FILE, "n": N, "seed": S}
    D/mxnet.onnx, and MXNet's embeddings of the N raw RGB [3,112,112] images.
"""
import json
import os
import sys

import mxnet as mx
import numpy as np

BN_EPS = 2e-5


def bn(x, name, fix_gamma=False):
    return mx.sym.BatchNorm(data=x, fix_gamma=fix_gamma, eps=BN_EPS, momentum=0.9, name=name)


def conv(x, channels, kernel, stride, name):
    pad = (kernel // 2, kernel // 2)
    return mx.sym.Convolution(data=x, num_filter=channels, kernel=(kernel, kernel),
                              stride=(stride, stride), pad=pad, no_bias=True, name=name)


def prelu(x, name):
    return mx.sym.LeakyReLU(data=x, act_type="prelu", name=name)


def unit(x, channels, stride, dim_match, name):
    y = bn(x, name + "_bn1")
    y = conv(y, channels, 3, 1, name + "_conv1")
    y = bn(y, name + "_bn2")
    y = prelu(y, name + "_relu1")
    y = conv(y, channels, 3, stride, name + "_conv2")
    y = bn(y, name + "_bn3")
    if dim_match:
        shortcut = x
    else:
        shortcut = bn(conv(x, channels, 1, stride, name + "_conv1sc"), name + "_sc")
    return y + shortcut


def symbol(widths=(8, 16, 32, 64), embedding=128):
    data = mx.sym.Variable("data")
    x = (data - 127.5) * 0.0078125
    x = conv(x, widths[0], 3, 1, "conv0")
    x = prelu(bn(x, "bn0"), "relu0")
    for s, w in enumerate(widths):
        x = unit(x, w, 2, False, "stage%d_unit1" % (s + 1))
    x = bn(x, "bn1")
    x = mx.sym.Dropout(data=x, p=0.4)
    # An explicit Flatten, then the FC layer without the `flatten` attribute: MXNet's exporter
    # then writes its shape bookkeeping (Shape, Slice, Concat, Reshape) around the Gemm.
    x = mx.sym.Flatten(data=x)
    x = mx.sym.FullyConnected(data=x, num_hidden=embedding, name="pre_fc1")
    return bn(x, "fc1", fix_gamma=True)


def main():
    req = json.load(sys.stdin)
    rng = np.random.default_rng(req["seed"])
    sym = symbol()
    shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    args, aux = {}, {}
    for name, shape in zip(sym.list_arguments(), shapes):
        if name == "data":
            continue
        if "relu" in name:  # PReLU slopes (LeakyReLU's `gamma`)
            v = 0.05 + 0.35 * rng.random(shape)
        elif name == "fc1_gamma":
            v = np.ones(shape)  # fix_gamma=True: MXNet computes with 1 and keeps it so
        elif name.endswith("_gamma"):
            v = 0.5 + rng.random(shape)
        elif name.endswith("_beta") or name.endswith("_bias"):
            v = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        args[name] = mx.nd.array(v.astype(np.float32))
    for name, shape in zip(sym.list_auxiliary_states(), aux_shapes):
        v = 0.1 * rng.standard_normal(shape) if name.endswith("mean") else 0.5 + rng.random(shape)
        aux[name] = mx.nd.array(v.astype(np.float32))
    n = req["n"]
    raw = np.fromfile(req["images"], dtype="<f4").reshape(n, 3, 112, 112)
    exe = sym.bind(mx.cpu(), args=dict(args, data=mx.nd.array(raw)), aux_states=aux,
                   grad_req="null")
    embeddings = exe.forward(is_train=False)[0].asnumpy()
    params = dict(args)
    params.update(aux)
    out = os.path.join(req["dir"], "mxnet.onnx")
    mx.onnx.export_model(sym, params, in_shapes=[(1, 3, 112, 112)], in_types=[np.float32],
                         onnx_file_path=out)
    import onnx
    model = onnx.load(out)
    json.dump({"embeddings": embeddings.tolist(),
               "ops": sorted({node.op_type for node in model.graph.node}),
               "opset": [o.version for o in model.opset_import]}, sys.stdout)


main()
