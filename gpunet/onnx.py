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
#: ai.onnx.ml opset for LabelEncoder's string keys and float values (onnxruntime >= 1.13)
ML_OPSET = 2
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
    inputs = [helper.make_tensor_value_info("X", elem, ["batch", model.layer_sizes[0]])]
    schema = getattr(model, "schema", None)
    if schema is not None:
        current, inputs = _table_nodes(schema, dtype, elem, helper, numpy_helper, nodes, inits)
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
        nodes, "gpunet_mlp", inputs,
        [helper.make_tensor_value_info("Y", elem, ["batch", model.layer_sizes[-1]])],
        initializer=inits)

    proto = helper.make_model(graph, producer_name="gpunet", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)]
                              + ([helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if schema is not None else []))
    proto.ir_version = IR_VERSION
    classes = getattr(model, "classes", None)
    props = {}
    if classes is not None:
        props["classes"] = "\n".join(str(c) for c in classes)
    if schema is not None:
        props["numeric_inputs"] = "\n".join(schema.numeric_names())
        props["categorical_inputs"] = "\n".join(schema.categorical_names())
    if props:
        helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    return proto


def _table_nodes(schema, dtype, elem, helper, numpy_helper, nodes, inits):
    """The schema's device stage (:meth:`gpunet.tabular.Schema.expand`) as ONNX nodes: input ``X`` holds the
    numeric features (NaN where missing), input ``C`` the categorical ones as text ("" where missing); ``IsNaN`` +
    ``Where`` impute the training medians, ``Gather`` + ``Cast`` give the missing indicators, ai.onnx.ml
    ``LabelEncoder`` maps each category to its index (-1 when never seen) and ``Equal`` against the indices gives
    its one-hot block. Returns the name of the expanded inputs and the graph's input list."""
    num = [f for f in schema.features if f["kind"] == "numeric"]
    cat = [f for f in schema.features if f["kind"] == "categorical"]
    inputs, parts = [], []
    if num:
        inputs.append(helper.make_tensor_value_info("X", elem, ["batch", len(num)]))
        if schema.impute:
            inits.append(numpy_helper.from_array(np.array([[f["median"] or 0.0 for f in num]], dtype), "median"))
            nodes += [helper.make_node("IsNaN", ["X"], ["x_missing"]),
                      helper.make_node("Where", ["x_missing", "median", "X"], ["x_imputed"])]
            parts.append("x_imputed")
            ind = [k for k, f in enumerate(num) if f["indicator"]]
            if ind:
                inits.append(numpy_helper.from_array(np.array(ind, np.int64), "indicator_columns"))
                nodes += [helper.make_node("Gather", ["x_missing", "indicator_columns"], ["x_ind_bool"], axis=1),
                          helper.make_node("Cast", ["x_ind_bool"], ["x_indicators"], to=elem)]
                parts.append("x_indicators")
        else:
            parts.append("X")
    if cat:
        inputs.append(helper.make_tensor_value_info("C", helper.np_dtype_to_tensor_dtype(np.dtype(object)),
                                                    ["batch", len(cat)]))
    for j, f in enumerate(cat):
        keys = ["" if c is None else c for c in f["categories"] + f["infrequent"]]
        codes = [float(i) for i in range(len(f["categories"]))] + [float(len(f["categories"]))] * len(f["infrequent"])
        k = len(f["categories"]) + bool(f["infrequent"])
        inits += [numpy_helper.from_array(np.array([j], np.int64), f"c{j}_column"),
                  numpy_helper.from_array(np.arange(k, dtype=np.float32).reshape(1, k), f"c{j}_levels")]
        nodes += [helper.make_node("Gather", ["C", f"c{j}_column"], [f"c{j}_text"], axis=1),
                  helper.make_node("LabelEncoder", [f"c{j}_text"], [f"c{j}_code"], domain="ai.onnx.ml",
                                   keys_strings=keys, values_floats=codes, default_float=-1.0),
                  helper.make_node("Equal", [f"c{j}_code", f"c{j}_levels"], [f"c{j}_hot"]),
                  helper.make_node("Cast", [f"c{j}_hot"], [f"c{j}_onehot"], to=elem)]
        parts.append(f"c{j}_onehot")
    if len(parts) == 1:
        return parts[0], inputs
    nodes.append(helper.make_node("Concat", parts, ["table_inputs"], axis=1))
    return "table_inputs", inputs


def export(model, path):
    """Write ``model`` to ``path`` as ONNX, atomically; returns the path."""
    data = to_model_proto(model).SerializeToString()
    with atomic_write(path) as f:
        f.write(data)
    return os.fspath(path)
