"""ONNX export of a trained :class:`gpunet.MLP` with the official ``onnx`` package (extra ``gpunet[onnx]``).

The graph is the network as written in :mod:`gpunet.model`: optional input standardisation
(``Sub`` mean, ``Div`` scale, when the model stores them), then per layer ``Gemm(a, W, b)`` and the
activation node (``Relu``, ``Sigmoid``, ``Tanh``; nothing for ``linear``), and ``Softmax(axis=-1)`` or
``Sigmoid`` on the output. Input ``"X"`` (batch, n_features) and output ``"Y"`` (batch, n_outputs) in the
model's dtype, with a symbolic batch dimension. Opset 17 and IR version 8, which every onnxruntime since
1.13 runs. What ``onnxruntime`` computes equals :meth:`gpunet.MLP.predict` within 1e-5 in float32
(``tests/unit/test_onnx.py``).
"""
from __future__ import annotations

import os

import numpy as np

from gpunet._files import atomic_write
from gpunet._optional import import_optional
from gpunet._version import __version__

OPSET = 17
IR_VERSION = 8
_NODES = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softmax": "Softmax", "exp": "Exp"}


def _onnx():
    onnx = import_optional("onnx", "ONNX export")
    return onnx, import_optional("onnx.helper", "ONNX export"), import_optional("onnx.numpy_helper", "ONNX export")


def to_model_proto(model):
    """The network as an ``onnx.ModelProto`` (checked with ``onnx.checker``)."""
    onnx, helper, numpy_helper = _onnx()
    dtype = np.dtype(model.dtype)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    weights = model.get_weights()
    nodes, inits = [], []
    current = "X"
    mean, scale = getattr(model, "input_mean", None), getattr(model, "input_scale", None)
    if mean is not None and scale is not None:
        inits += [numpy_helper.from_array(np.asarray(mean, dtype), "input_mean"),
                  numpy_helper.from_array(np.asarray(scale, dtype), "input_scale")]
        nodes += [helper.make_node("Sub", [current, "input_mean"], ["centred"]),
                  helper.make_node("Div", ["centred", "input_scale"], ["standardised"])]
        current = "standardised"
    n_layers = len(weights) // 2
    for i in range(n_layers):
        W, b = weights[2 * i], weights[2 * i + 1]
        inits += [numpy_helper.from_array(W.astype(dtype), f"W{i + 1}"), numpy_helper.from_array(b.astype(dtype), f"b{i + 1}")]
        z = f"z{i + 1}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i + 1}", f"b{i + 1}"], [z], name=f"dense_{i + 1}"))
        last = i == n_layers - 1
        act = model.output_activation if last else model.hidden_activation
        out = "Y" if last else f"a{i + 1}"
        if act == "linear":
            nodes.append(helper.make_node("Identity", [z], [out]))
        elif act == "softmax":
            nodes.append(helper.make_node("Softmax", [z], [out], axis=-1))
        else:
            nodes.append(helper.make_node(_NODES[act], [z], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "gpunet_mlp",
        [helper.make_tensor_value_info("X", elem, ["batch", model.layer_sizes[0]])],
        [helper.make_tensor_value_info("Y", elem, ["batch", model.layer_sizes[-1]])],
        initializer=inits)

    proto = helper.make_model(graph, producer_name="gpunet", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    classes = getattr(model, "classes", None)
    if classes is not None:
        helper.set_model_props(proto, {"classes": "\n".join(str(c) for c in classes)})
    onnx.checker.check_model(proto)
    return proto


def export(model, path):
    """Write ``model`` to ``path`` as ONNX, atomically; returns the path."""
    data = to_model_proto(model).SerializeToString()
    with atomic_write(path) as f:
        f.write(data)
    return os.fspath(path)
