"""ONNX references for tests/onnx.rs, independent of our Rust code: the `onnx` package's checker
and graph builder, and onnxruntime. Reads one JSON request on stdin, prints JSON.

{"op": "check", "model": F, "input": F32_FILE, "n": N, "output": F32_FILE}
    onnx.checker.check_model(full_check=True), the file's facts, and onnxruntime's `fc1` for the
    N raw float32 [3,112,112] images in F32_FILE, written to `output`.
{"op": "zoo", "defective": F, "fixed": F, "units": [..], "widths": [..], "embedding": E,
 "style": "mxnet" | "torch", "seed": S}
    An LResNet-E-IR graph built node by node with onnx.helper, with random weights and
    statistics. "mxnet" reproduces the model zoo's arcfaceresnet100-8.onnx: MXNet names
    (stage1_unit1_conv1_weight...), Sub/Mul normalisation inside, BatchNormalization with
    spatial=0 and (C,) parameters, PRelu slopes (C,), a Dropout node, eps 2e-5, IR 3 with the
    initializers among the inputs. "torch" is what torch.onnx.export makes of arcface_torch's
    iresnet: no normalisation inside, eps 1e-5, (C,1,1) slopes, IR 4. `fixed` is the same model
    with the community's fix (spatial dropped, slopes (C,1,1)), which onnxruntime runs.
"""
import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def check(req):
    model = onnx.load(req["model"])
    onnx.checker.check_model(model, full_check=True)
    import onnxruntime as ort

    session = ort.InferenceSession(req["model"], providers=["CPUExecutionProvider"])
    x = np.fromfile(req["input"], dtype="<f4").reshape(req["n"], 3, 112, 112)
    (name,) = [i.name for i in session.get_inputs()]
    y = session.run(None, {name: x})[0]
    y.astype("<f4").tofile(req["output"])
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    input_names = [i.name for i in model.graph.input]
    data = [i for i in model.graph.input if i.name not in inits]
    dims = [d.dim_param or d.dim_value for d in data[0].type.tensor_type.shape.dim]
    ops = sorted({n.op_type for n in model.graph.node})
    prelu_shapes = sorted({tuple(inits[n.input[1]].shape) for n in model.graph.node if n.op_type == "PRelu"})
    bn_attrs = sorted({a.name for n in model.graph.node if n.op_type == "BatchNormalization" for a in n.attribute})
    return {
        "ir_version": model.ir_version,
        "opsets": [[o.domain, o.version] for o in model.opset_import],
        "input": data[0].name,
        "input_dims": dims,
        "outputs": [o.name for o in model.graph.output],
        "output_dims": [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim],
        "ops": ops,
        "initializers_in_inputs": all(n in input_names for n in inits),
        # Float weights: a ViT's int64 reshape shapes and gather indices are not parameters.
        "parameters": int(sum(v.size for k, v in inits.items()
                              if v.dtype == np.float32 and "running_" not in k and "moving_" not in k)),
        "values": int(sum(v.size for v in inits.values())),
        "names": sorted(inits),
        "prelu_slope_shapes": [list(s) for s in prelu_shapes],
        "bn_attributes": bn_attrs,
        "output_shape": list(y.shape),
    }


class Builder:
    def __init__(self, style, rng):
        self.style, self.rng = style, rng
        self.nodes, self.inits, self.fixed_slopes = [], [], {}

    def name(self, mx, torch):
        return mx if self.style == "mxnet" else torch

    def init(self, name, array):
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x, mx, torch, cin, cout, k, stride):
        w = self.init(self.name(f"{mx}_weight", f"{torch}.weight"),
                      self.rng.normal(0, np.sqrt(2.0 / (cout * k * k)), (cout, cin, k, k)))
        out = self.name(mx, torch)
        self.nodes.append(helper.make_node("Conv", [x, w], [out], name=out, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        return out

    def bn(self, x, mx, torch, c):
        names = (["gamma", "beta", "moving_mean", "moving_var"] if self.style == "mxnet"
                 else ["weight", "bias", "running_mean", "running_var"])
        sep = "_" if self.style == "mxnet" else "."
        values = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c),
                  self.rng.normal(0, 0.1, c), self.rng.uniform(0.5, 2.0, c)]
        params = [self.init(f"{self.name(mx, torch)}{sep}{n}", v) for n, v in zip(names, values)]
        out = self.name(mx, torch)
        attrs = {"epsilon": 2e-5 if self.style == "mxnet" else 1e-5, "momentum": 0.9}
        if self.style == "mxnet":
            attrs["spatial"] = 0
        self.nodes.append(helper.make_node("BatchNormalization", [x] + params, [out], name=out, **attrs))
        return out

    def prelu(self, x, mx, torch, c):
        shape = (c,) if self.style == "mxnet" else (c, 1, 1)
        slope = self.init(self.name(f"{mx}_gamma", f"{torch}.weight"),
                          self.rng.uniform(0.1, 0.4, shape))
        self.fixed_slopes[slope] = (c, 1, 1)
        out = self.name(mx, torch)
        self.nodes.append(helper.make_node("PRelu", [x, slope], [out], name=out))
        return out

    def op(self, op, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def zoo(req):
    rng = np.random.default_rng(req["seed"])
    style, widths, units, emb = req["style"], req["widths"], req["units"], req["embedding"]
    b = Builder(style, rng)
    x = "data"
    if style == "mxnet":
        mean = b.init("_minusscalar0_second", np.array([127.5]))
        scale = b.init("_mulscalar0_second", np.array([0.0078125]))
        x = b.op("Sub", [x, mean], "_minusscalar0")
        x = b.op("Mul", [x, scale], "_mulscalar0")
    x = b.conv(x, "conv0", "conv1", 3, widths[0], 3, 1)
    x = b.bn(x, "bn0", "bn1", widths[0])
    x = b.prelu(x, "relu0", "prelu", widths[0])
    cin = widths[0]
    for s, (n, w) in enumerate(zip(units, widths)):
        for u in range(n):
            mx, pt = f"stage{s + 1}_unit{u + 1}", f"layer{s + 1}.{u}"
            stride = 2 if u == 0 else 1
            y = b.bn(x, f"{mx}_bn1", f"{pt}.bn1", cin)
            y = b.conv(y, f"{mx}_conv1", f"{pt}.conv1", cin, w, 3, 1)
            y = b.bn(y, f"{mx}_bn2", f"{pt}.bn2", w)
            y = b.prelu(y, f"{mx}_relu1", f"{pt}.prelu", w)
            y = b.conv(y, f"{mx}_conv2", f"{pt}.conv2", w, w, 3, stride)
            y = b.bn(y, f"{mx}_bn3", f"{pt}.bn3", w)
            if u == 0:
                sc = b.conv(x, f"{mx}_conv1sc", f"{pt}.downsample.0", cin, w, 1, stride)
                sc = b.bn(sc, f"{mx}_sc", f"{pt}.downsample.1", w)
            else:
                sc = x
            x = b.op("Add", [y, sc], b.name(f"_plus{len(b.nodes)}", f"{pt}.add"))
            cin = w
    x = b.bn(x, "bn1", "bn2", cin)
    if style == "mxnet":
        x = b.op("Dropout", [x], "dropout0", ratio=0.4)
    x = b.op("Flatten", [x], "flatten0", axis=1)
    fan_in = cin * 7 * 7
    w = b.init(b.name("pre_fc1_weight", "fc.weight"), rng.normal(0, 1 / np.sqrt(fan_in), (emb, fan_in)))
    bias = b.init(b.name("pre_fc1_bias", "fc.bias"), rng.normal(0, 0.1, emb))
    x = b.op("Gemm", [x, w, bias], "pre_fc1", alpha=1.0, beta=1.0, transB=1)
    b.bn(x, "fc1", "features", emb)
    b.nodes[-1].output[0] = "fc1"

    def model(nodes, inits, ir):
        data = helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])
        inputs = [data]
        if ir == 3:
            inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
        out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", emb])
        graph = helper.make_graph(nodes, "zoo", inputs, [out], initializer=inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], producer_name="onnx_models.py")
        m.ir_version = ir
        return m

    ir = 3 if style == "mxnet" else 4
    onnx.save(model(b.nodes, b.inits, ir), req["defective"])
    fixed_inits = []
    for t in b.inits:
        a = numpy_helper.to_array(t)
        if t.name in b.fixed_slopes:
            a = a.reshape(b.fixed_slopes[t.name])
        fixed_inits.append(numpy_helper.from_array(a, t.name))
    fixed_nodes = []
    for n in b.nodes:
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        keep = [a for a in n2.attribute if a.name != "spatial"]
        del n2.attribute[:]
        n2.attribute.extend(keep)
        fixed_nodes.append(n2)
    fixed = model(fixed_nodes, fixed_inits, ir)
    onnx.checker.check_model(fixed, full_check=True)
    onnx.save(fixed, req["fixed"])
    # The defects are real: onnxruntime cannot run the defective file.
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(req["defective"], providers=["CPUExecutionProvider"])
        session.run(None, {"data": np.zeros((1, 3, 112, 112), np.float32)})
        refused = False
    except Exception:  # noqa: BLE001 - any refusal counts
        refused = True
    return {"nodes": len(b.nodes), "initializers": len(b.inits), "onnxruntime_refuses_defective": refused}


request = json.load(sys.stdin)
print(json.dumps({"check": check, "zoo": zoo}[request["op"]](request)))
