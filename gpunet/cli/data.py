"""What a run trains and reports on: built-in datasets or the user's file, split, standardised, with the
network's widths checked against the data and the targets shaped for the loss."""
from __future__ import annotations

import hashlib

import numpy as np

import gpunet as gn
from gpunet import datasets, tabular
from gpunet.cli.config import CLIError


class Data:
    """Everything a run trains and reports on: splits, widths, classes and standardisation."""

    def __init__(self, train, val, test, n_features, n_outputs, classes=None, mean=None, scale=None,
                 val_label="validation", test_label="test", features=None, target=None):
        self.train, self.val, self.test = train, val, test
        self.n_features, self.n_outputs, self.classes = n_features, n_outputs, classes
        self.mean, self.scale = mean, scale
        self.val_label, self.test_label = val_label, test_label
        self.features, self.target = features, target

def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

def load_data(cfg, data_dir=None):
    """The run's :class:`Data` (host arrays) for a built-in dataset or a --data file."""

    name = cfg["dataset"]
    if cfg.get("data"):
        table = tabular.read(cfg["data"], cfg.get("target"))
        task = cfg.get("task") or tabular.infer_task(table.y)
        cfg["task"], cfg["target"] = task, table.target if table.target is not None else cfg.get("target")
        y = table.y
        classes = None
        if task == "classify":
            if y.ndim != 1:
                raise CLIError(f"--task classify needs one target column, got targets of shape {y.shape}")
            classes = np.unique(y)
            if len(classes) < 2:
                raise CLIError(f"{cfg['data']}: the target has a single class ({classes[0]!r}); nothing to classify")
            n_out = len(classes)
        else:
            if y.dtype.kind not in "biuf":
                raise CLIError(f"{cfg['data']}: --task regress needs numeric targets, got labels such as {y[0]!r}")
            y = y.astype(np.float64)
            n_out = 1 if y.ndim == 1 else y.shape[1]
        if cfg["output_activation"] is None:
            cfg["output_activation"] = "softmax" if task == "classify" and cfg["loss"] in (None, "cross_entropy") \
                else ("sigmoid" if cfg["loss"] == "binary_cross_entropy" else "linear")
        if cfg["loss"] is None:
            cfg["loss"] = {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}.get(cfg["output_activation"],
                                                                                          "mse")
        tr, va, te = tabular.split_indices(len(y), cfg.get("test_split") or 0.0, cfg["validation_split"], cfg["seed"])
        mean, scale = tabular.standardisation(table.X[tr])
        split = lambda idx: (table.X[idx], y[idx]) if len(idx) else None  # noqa: E731
        test, val = split(te), split(va)
        test_label = "test"
        if test is None:  # no held-out test set: report on the validation set, else on the training data
            test, test_label = (val, "validation") if val is not None else (split(tr), "training")
        val_label = "validation" if val is not None else test_label
        return Data(split(tr), val if val is not None else (test if test_label == "test" else None), test,
                    table.X.shape[1], n_out, classes, mean, scale, val_label, test_label, table.features, cfg["target"])
    if name == "mnist":
        train, test = datasets.load_mnist(data_dir)
        classes, n_in, n_out = np.arange(10), 784, 10
    elif name == "sincos01":  # seed 003: 300 fresh batches of 32 (one pass), tested on 500 other points
        train = datasets.sincos(cfg["batch_size"] * 300, 0.0, 1.0, seed=cfg["seed"])
        test = datasets.sincos(500, 0.0, 1.0, seed=cfg["seed"] + 1)
        classes, n_in, n_out = None, 1, 2
    else:
        make = datasets.sinc if name == "sinc" else datasets.sincos
        train, test = make(1000, seed=cfg["seed"]), make(500, seed=cfg["seed"] + 1)
        classes, n_in, n_out = None, 1, (1 if name == "sinc" else 2)
    val = None
    if cfg["validation_split"]:
        tr, va, _ = tabular.split_indices(len(train[0]), 0.0, cfg["validation_split"], cfg["seed"])
        train, val = (train[0][tr], train[1][tr]), (train[0][va], train[1][va])
    data = Data(train, val if val is not None else test, test, n_in, n_out, classes,
                val_label="validation" if val is not None else "test")
    data.builtin_classes = name == "mnist"  # MNIST's labels are the indices themselves: not stored in the model
    return data

def check_widths(cfg, data):
    """The network must take the data's features and give one output per class / target column."""
    if cfg.get("layers") is None:
        out = 1 if cfg["loss"] == "binary_cross_entropy" and data.classes is not None and len(data.classes) == 2 \
            else data.n_outputs
        cfg["layers"] = [data.n_features, *cfg["hidden"], out]
    cfg.pop("hidden", None)
    layers = cfg["layers"]
    name = cfg["dataset"]
    if layers[0] != data.n_features:
        raise CLIError(f"--layers starts with {layers[0]} inputs but the {name} data have {data.n_features} features")
    if data.classes is not None:
        k = len(data.classes)
        binary = cfg["loss"] == "binary_cross_entropy" and k == 2 and layers[-1] == 1
        if layers[-1] != k and not binary:
            shown = ", ".join(map(str, data.classes[:10])) + (", ..." if k > 10 else "")
            raise CLIError(f"--layers ends with {layers[-1]} outputs but the {name} data have {k} classes ({shown}): a "
                           f"classifier needs one output per class" + (" (or 1 sigmoid unit with binary_cross_entropy)"
                                                                       if k == 2 else ""))
    elif layers[-1] != data.n_outputs:
        raise CLIError(f"--layers ends with {layers[-1]} outputs but the {name} data have {data.n_outputs} target "
                       f"column(s)")

def targets(model, loss, y, labels):
    """Targets as ``fit`` takes them: labels for cross-entropy (and one sigmoid unit), one-hot rows for
    mse/mae/multi-unit binary cross-entropy on class labels (so ``--loss mse`` works on MNIST). ``labels`` says
    that ``y`` holds class labels (a classification run)."""
    if y is None or getattr(y, "ndim", 1) != 1 or not (labels or model.classes is not None):
        return y
    if loss == "cross_entropy" or model.layer_sizes[-1] == 1:
        return y
    idx = np.asarray(model.encode_labels(y))
    return np.eye(model.layer_sizes[-1])[idx.astype(np.int64)]

def make_model(cfg, data=None):

    model = gn.MLP(cfg["layers"], cfg["hidden_activation"], cfg["output_activation"], device=cfg["device"],
                   dtype=cfg["dtype"], seed=cfg["seed"], init=cfg["init"], l1=cfg["l1"], l2=cfg["l2"],
                   dropout=cfg["dropout"])
    return attach_data(model, data)

def attach_data(model, data):
    """The training data's input statistics and class labels, stored in the model (or every model of a stack)."""
    if data is not None:
        classes = data.classes if data.classes is not None and not getattr(data, "builtin_classes", False) else None
        if hasattr(model, "set_preprocessing"):
            model.set_preprocessing(data.mean, data.scale, classes)
        else:
            model.input_mean, model.input_scale = data.mean, data.scale
            if classes is not None:
                model.classes = classes
    return model
