"""The ``gpunet`` command: ``train``, ``predict``, ``evaluate``, ``compare``, ``bench`` and ``info``.

Each subcommand is one entry of :data:`COMMANDS`: a function adding its arguments and a function running
it, so a new subcommand is one more entry. Errors print one line (``gpunet: error: ...``) and exit
non-zero: 2 for bad arguments, bad input and unavailable devices, 1 for failures during training
(divergence, I/O), 130 after Ctrl-C. Everything a command checks is checked before it writes anything.
Set ``GPUNET_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io as _io
import itertools
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("gpunet")

DATASETS = ("mnist", "sinc", "sincos")
#: per-dataset defaults; a preset overrides them, explicit flags override both
DEFAULTS = {
    # cosine decay to lr/100 over the run: 98.4-98.5% on two seeds, where a constant lr ends at 98.0-98.1%
    "mnist": dict(layers=[784, 512, 256, 10], hidden_activation="relu", output_activation="softmax",
                  loss="cross_entropy", optimizer="adam", lr=1e-3, batch_size=128, epochs=10, schedule="cosine"),
    # the seed's sinc net: it minimises half the squared error with lr 0.01, which is gpunet's mse (the mean
    # squared error, twice the gradient) with lr 0.005, for 1000 epochs
    "sinc": dict(layers=[1] + [50] * 9 + [1], hidden_activation="relu", output_activation="linear", loss="mse",
                 optimizer="sgd", lr=0.005, batch_size=20, epochs=1000),
    "sincos": dict(layers=[1, 16, 2], hidden_activation="tanh", output_activation="linear", loss="mse",
                   optimizer="adam", lr=0.01, batch_size=32, epochs=200),
}
#: defaults for --data (the widths come from the data)
DATA_DEFAULTS = dict(layers=None, hidden=[64, 64], output_activation=None, loss=None, hidden_activation="relu", optimizer="adam", lr=1e-3, batch_size=32,
                     epochs=100, schedule="none", test_split=0.2)
PRESETS = {
    # measured in this repo: see README "MNIST recipes"
    "mnist-best": dict(dataset="mnist", layers=[784, 1024, 1024, 10], dropout=0.3, optimizer="adamw", lr=1e-3,
                       weight_decay=1e-4, schedule="cosine", batch_size=128, epochs=30),
    # seed 003's exercise: sin/cos on [0, 1] by [1, 16, 2] (ReLU hidden), plain SGD lr 1, one pass over 300 fresh
    # batches of 32, ReLU against sigmoid outputs. The seed's loss is half the squared error summed over the 2
    # outputs and averaged over the batch: its gradient (a - y)/B equals that of gpunet's mse (the mean over
    # all B*2 entries, 2(a - y)/(2B)), so the seed's lr 1 is gpunet's lr 1 here (and 0.005 for sinc's 1 output).
    "seed003-relu": dict(dataset="sincos01", layers=[1, 16, 2], hidden_activation="relu", output_activation="relu",
                         loss="mse", optimizer="sgd", lr=1.0, batch_size=32, epochs=1),
    "seed003-sigmoid": dict(dataset="sincos01", layers=[1, 16, 2], hidden_activation="relu",
                            output_activation="sigmoid", loss="mse", optimizer="sgd", lr=1.0, batch_size=32, epochs=1),
}
DEFAULTS["sincos01"] = dict(PRESETS["seed003-sigmoid"], dataset=None)
del DEFAULTS["sincos01"]["dataset"]
BUILTIN = DATASETS + ("sincos01",)
COMMON = dict(init="glorot", momentum=0.0, nesterov=False, weight_decay=None, l1=0.0, l2=0.0, dropout=0.0,
              schedule="none", device="auto", dtype="float32", seed=0, patience=None, validation_split=0.0)
#: files a run folder holds (removed by --overwrite before a new run starts)
RUN_FILES = ("config.json", "model.npz", "checkpoint.npz", "metrics.json", "history.json", "loss.png", "fit.png",
             "confusion.png", "misclassified.png", "scatter.png")

EXAMPLES_TRAIN = """examples:
  gpunet train --dataset mnist --out runs/mnist
  gpunet train --data iris.csv --target species --epochs 200 --out runs/iris
  gpunet predict --model runs/iris --data new.csv --out preds.csv --proba

per-dataset defaults (flags override them):
  mnist    784-512-256-10, relu, softmax, cross_entropy, adam lr 1e-3 + cosine, batch 128, 10 epochs
  sinc     the seed's [1, 50x9, 1], relu, mse, sgd lr 0.005 (= the seed's lr 0.01 on half the squared
           error), batch 20, 1000 epochs
  sincos   [1, 16, 2], tanh, mse, adam lr 0.01, batch 32, 200 epochs
  --data   [features, 64, 64, outputs], relu; softmax + cross_entropy for classes, linear + mse for values;
           adam lr 1e-3, batch 32, 100 epochs, --test-split 0.2; features standardised with the training
           split's mean and standard deviation (stored in the model)
"""


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" for options with a real default (the others say theirs in the help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS, []) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _layers(text):
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers such as 784,512,10, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--layers needs at least two sizes >= 1, got {text!r}")
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _add_model_args(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=BUILTIN,
                     help="built-in data: mnist (default), sinc, sincos, or sincos01 (seed 003: sin/cos on [0, 1], "
                          "300 fresh batches of 32)")
    src.add_argument("--data", metavar="PATH", help="your own table: .csv/.tsv (header optional), .npz (X, y), "
                     ".npy (with --target Y.npy or a sibling y.npy) or .parquet")
    p.add_argument("--target", metavar="COL", help="--data: target column name or index (default: the last column)")
    p.add_argument("--task", choices=["classify", "regress"],
                   help="--data: default from the target (strings or few distinct integers: classify)")
    p.add_argument("--test-split", type=_fraction, help="--data: fraction held out as the test set (default 0.2)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a tuned or seed recipe (flags still override it)")
    p.add_argument("--data-dir", help="folder with the MNIST .gz files (default: shipped copy / $GPUNET_DATA)")
    p.add_argument("--layers", type=_layers, help="comma-separated layer sizes, e.g. 784,512,256,10 (default: per "
                   "dataset; for --data the widths follow from the data)")
    p.add_argument("--hidden-activation", choices=["relu", "sigmoid", "tanh", "linear"], help="default: per dataset")
    p.add_argument("--output-activation", choices=["linear", "sigmoid", "softmax", "tanh", "relu"],
                   help="default: per dataset")
    p.add_argument("--loss", choices=["mse", "mae", "cross_entropy", "binary_cross_entropy"],
                   help="default: per dataset (class labels are one-hot encoded for mse/mae)")
    p.add_argument("--init", choices=["glorot", "he"], help="default: glorot")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], help="default: per dataset")
    p.add_argument("--lr", type=float, help="learning rate (default: per dataset)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default: 0)")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=float, help="default: the optimizer's (0; AdamW 0.01)")
    p.add_argument("--l1", type=float, help="L1 penalty on weights (default: 0)")
    p.add_argument("--l2", type=float, help="L2 penalty on weights (default: 0)")
    p.add_argument("--dropout", type=float, help="dropout rate on hidden layers (default: 0)")
    p.add_argument("--schedule", choices=["none", "step", "cosine"], help="learning-rate schedule (default: per dataset)")
    p.add_argument("--epochs", type=int, help="default: per dataset")
    p.add_argument("--batch-size", type=_positive_int, help="default: per dataset")
    p.add_argument("--device", help="auto (default; $GPUNET_DEVICE), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: float32")
    p.add_argument("--seed", type=int, help="weights, batch order and data splits (default: 0)")
    p.add_argument("--tf32", action="store_true", help="TF32 tensor-core matmuls for float32 on CUDA (opt-in)")


def add_train_args(t):
    _add_model_args(t)
    t.add_argument("--patience", type=int, help="early stopping on val_loss after this many epochs without gain")
    t.add_argument("--validation-split", type=_fraction,
                   help="hold out this fraction of the training data for validation (default: none; the "
                        "curves then show the test set, labelled 'test')")
    t.add_argument("--out", help="run folder for model.npz, metrics.json, history.json, plots, checkpoint "
                   "(default: runs/<dataset>-<timestamp>)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (up to --epochs in total)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: 'mpirun -n N gpunet train ... --distributed' (--batch-size "
                        "is the global batch; rank 0 writes the run)")


def add_compare_args(c):
    _add_model_args(c)
    c.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting to vary, e.g. hidden_activation=relu,sigmoid (repeatable: the grid is crossed)")
    c.add_argument("--seeds", type=_positive_int, default=3, help="seeds per configuration")
    c.add_argument("--record", choices=["epoch", "batch"], default="epoch",
                   help="'batch' keeps every step's training loss in compare.json (one-pass runs)")
    c.add_argument("--out", required=True, help="folder for compare.json, compare.md and compare.png")


def add_predict_args(p):
    p.add_argument("--model", required=True, metavar="RUN_DIR|MODEL.npz", help="a run folder or a model file")
    p.add_argument("--data", required=True, metavar="PATH", help="inputs (.csv/.tsv/.npz/.npy/.parquet); a target "
                   "column the model was trained with is ignored")
    p.add_argument("--out", metavar="PREDS.csv", help="write the predictions here (default: standard output)")
    p.add_argument("--proba", action="store_true", help="add one probability column per class")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def add_evaluate_args(p):
    p.add_argument("--model", required=True, metavar="RUN_DIR|MODEL.npz", help="a run folder or a model file")
    p.add_argument("--data", required=True, metavar="PATH", help="inputs with targets (as for train --data)")
    p.add_argument("--target", metavar="COL", help="target column (default: the one the model was trained with)")
    p.add_argument("--out", metavar="METRICS.json",
                   help="write the metrics here (default: evaluation-<data name>.json beside the model)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def add_export_args(p):
    p.add_argument("--model", required=True, metavar="RUN_DIR|MODEL.npz", help="a run folder or a model file")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="write the network here as ONNX (needs the "
                   "onnx package: pip install 'gpunet[onnx]')")


def add_info_args(p):
    pass


def build_parser():
    parser = _Parser(prog="gpunet", description="Train multilayer perceptrons on a CUDA GPU (CuPy) or the CPU (NumPy).",
                     formatter_class=_Formatter, epilog=EXAMPLES_TRAIN.split("\n\n")[0])
    from gpunet import __version__  # noqa: PLC0415

    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, epilog, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, epilog=epilog, formatter_class=_Formatter))
    return parser


# ----------------------------------------------------------------------------- configuration
_CONFIG_KEYS = ("layers", "hidden_activation", "output_activation", "loss", "optimizer", "lr", "batch_size", "epochs",
                "schedule", *COMMON, "target", "task", "test_split")


def _dataset_name(path):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "data"


def resolve_config(args):
    """Dataset (or data file) defaults <- preset <- explicit flags; returns a plain dict."""
    preset_name = getattr(args, "preset", None)
    preset = PRESETS.get(preset_name or "", {})
    data = getattr(args, "data", None)
    if data and preset:
        raise CLIError(f"--preset {preset_name} is a recipe for --dataset {preset['dataset']}, not for --data")
    if data:
        cfg = {"dataset": _dataset_name(data), "data": str(Path(data).resolve()), **COMMON, **DATA_DEFAULTS,
               "target": None, "task": None}
    else:
        dataset = args.dataset or preset.get("dataset") or "mnist"
        cfg = {"dataset": dataset, **COMMON, **DEFAULTS[dataset]}
        for flag in ("target", "task", "test_split"):
            if getattr(args, flag, None) is not None:
                raise CLIError(f"--{flag.replace('_', '-')} applies to --data files, not to --dataset {dataset}")
    cfg.update({k: v for k, v in preset.items() if k != "dataset"})
    if preset_name:
        cfg["preset"] = preset_name
    for key in _CONFIG_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if cfg["epochs"] < 0:
        raise CLIError(f"--epochs must be >= 0, got {cfg['epochs']}")
    return cfg


class Data:
    """Everything a run trains and reports on: splits, widths, classes and standardisation."""

    def __init__(self, train, val, test, n_features, n_outputs, classes=None, mean=None, scale=None,
                 val_label="validation", test_label="test", features=None, target=None):
        self.train, self.val, self.test = train, val, test
        self.n_features, self.n_outputs, self.classes = n_features, n_outputs, classes
        self.mean, self.scale = mean, scale
        self.val_label, self.test_label = val_label, test_label
        self.features, self.target = features, target


def _file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_data(cfg, data_dir=None):
    """The run's :class:`Data` (host arrays) for a built-in dataset or a --data file."""
    from gpunet import datasets, tabular  # noqa: PLC0415

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
    train, val = _split_validation(cfg, train)
    data = Data(train, val if val is not None else test, test, n_in, n_out, classes,
                val_label="validation" if val is not None else "test")
    data.builtin_classes = name == "mnist"
    return data


def _split_validation(cfg, train):
    frac = cfg["validation_split"]
    if not frac:
        return train, None
    X, y = train
    order = np.random.default_rng(cfg["seed"]).permutation(len(X))
    cut = len(X) - max(1, int(round(frac * len(X))))
    if cut < 1:
        raise CLIError(f"--validation-split {frac} leaves no training data")
    return (X[order[:cut]], y[order[:cut]]), (X[order[cut:]], y[order[cut:]])


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


def targets(model, loss, y):
    """Targets as ``fit`` takes them: labels for cross-entropy (and one sigmoid unit), one-hot rows for
    mse/mae/multi-unit binary cross-entropy on class labels (so ``--loss mse`` works on MNIST)."""
    if y is None or getattr(y, "ndim", 1) != 1 or (model.classes is None and not getattr(model, "_onehot", False)):
        return y
    if loss == "cross_entropy" or model.layer_sizes[-1] == 1:
        return y
    idx = np.asarray(model.encode_labels(y))
    return np.eye(model.layer_sizes[-1])[idx.astype(np.int64)]


def make_model(cfg, data=None):
    import gpunet as gn  # noqa: PLC0415

    model = gn.MLP(cfg["layers"], cfg["hidden_activation"], cfg["output_activation"], device=cfg["device"],
                   dtype=cfg["dtype"], seed=cfg["seed"], init=cfg["init"], l1=cfg["l1"], l2=cfg["l2"],
                   dropout=cfg["dropout"])
    return _attach_data(model, data)


def _attach_data(model, data):
    """The training data's input statistics and class labels, stored in the model."""
    if data is not None:
        model.input_mean, model.input_scale = data.mean, data.scale
        if data.classes is not None and not getattr(data, "builtin_classes", False):
            model.classes = data.classes
        model._onehot = data.classes is not None
    return model


def _train_seeds(cfg, data, seeds, record):
    """The configuration ``cfg`` trained once per seed: ``[(model, history, seconds)]``. Without a
    learning-rate schedule or per-batch records, all seeds train together as one :class:`gpunet.MLPStack`
    (batched GEMMs; each model equals its own run to float64 rounding), else one after the other."""
    import gpunet as gn  # noqa: PLC0415

    schedule = make_schedule(cfg)
    if schedule is None and record == "epoch" and len(seeds) > 1:
        stack = gn.MLPStack(cfg["layers"], cfg["hidden_activation"], cfg["output_activation"], seeds=seeds,
                            device=cfg["device"], dtype=cfg["dtype"], init=cfg["init"], l1=cfg["l1"], l2=cfg["l2"],
                            dropout=cfg["dropout"])
        for m in stack._models:
            _attach_data(m, data)
        m0 = stack._models[0]
        loss = m0._resolve_loss(cfg["loss"])
        t0 = time.perf_counter()
        hists = stack.fit(data.train[0], targets(m0, loss, data.train[1]), epochs=cfg["epochs"],
                          batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss)
        seconds = (time.perf_counter() - t0) / len(seeds)
        return [(m, h, seconds) for m, h in zip(stack.models(), hists)], True
    runs = []
    for seed in seeds:
        model = make_model({**cfg, "seed": seed}, data)
        loss = model._resolve_loss(cfg["loss"])
        t0 = time.perf_counter()
        hist = model.fit(data.train[0], targets(model, loss, data.train[1]), epochs=cfg["epochs"],
                         batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss, verbose=0,
                         callbacks=[schedule] if schedule else None, record=record)
        runs.append((model, hist, time.perf_counter() - t0))
        schedule = make_schedule(cfg)  # a fresh schedule per run
    return runs, False


def make_optimizer(cfg):
    import gpunet as gn  # noqa: PLC0415

    wd = cfg.get("weight_decay")
    if cfg["optimizer"] == "sgd":
        return gn.SGD(lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=wd or 0.0)
    cls = gn.AdamW if cfg["optimizer"] == "adamw" else gn.Adam
    return cls(lr=cfg["lr"], **({} if wd is None else {"weight_decay": wd}))  # an explicit 0 is kept


def make_schedule(cfg):
    from gpunet import callbacks  # noqa: PLC0415

    if cfg["schedule"] == "cosine":
        schedule = callbacks.CosineDecay(max(cfg["epochs"], 1), min_lr=cfg["lr"] * 0.01)
    elif cfg["schedule"] == "step":
        schedule = callbacks.StepDecay(max(cfg["epochs"] // 3, 1), gamma=0.1)
    else:
        return None
    schedule.fixed_base_lr = cfg["lr"]  # also when resuming: the saved optimizer holds the decayed rate
    return schedule


def _write_json(path, obj):
    from gpunet.io import atomic_write  # noqa: PLC0415

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return float(o)


def _fmt(value):
    return "-" if value is None else f"{value:.4g}"


def _holds_run(folder):
    return any((folder / name).exists() for name in ("config.json", "model.npz", "checkpoint.npz"))


def _choose_out(args, dataset, resume_dir=None):
    """The run folder: --out, the resumed run, or a fresh runs/<dataset>-<timestamp>; refuses to reuse a
    folder holding another run unless --overwrite."""
    if args.out:
        out = Path(args.out)
    elif resume_dir is not None:
        return resume_dir
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{dataset}-{stamp}"
        n = 1
        while out.exists():
            n += 1
            out = Path("runs") / f"{dataset}-{stamp}-{n}"
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if resume_dir is not None and out.resolve() == resume_dir.resolve():
        return out
    if _holds_run(out) and not args.overwrite:
        hint = f"--resume {out} to continue it, " if (out / "checkpoint.npz").exists() else ""
        raise CLIError(f"--out {out} already holds a run; pass {hint}--overwrite to replace it, or choose another folder")
    return out


def _read_run_config(run):
    path = run / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CLIError(f"{path} is corrupt or unreadable ({exc}); start a new run instead") from None
    missing = [k for k in ("dataset", *_CONFIG_KEYS[:9]) if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise CLIError(f"{path} is not a gpunet run configuration (missing {', '.join(missing)})")
    return cfg


#: flags --resume applies; every other flag must match the run's configuration
RESUME_APPLIES = ("epochs", "device")


def _resume_config(args, run):
    cfg = _read_run_config(run)
    cfg.setdefault("validation_split", 0.0)
    conflicts = []
    given = {k: getattr(args, k, None) for k in _CONFIG_KEYS if getattr(args, k, None) is not None}
    if getattr(args, "dataset", None):
        given["dataset"] = args.dataset
    if getattr(args, "data", None):
        given["data"] = str(Path(args.data).resolve())
    if getattr(args, "preset", None):
        given["preset"] = args.preset
    for key, value in given.items():
        if key in RESUME_APPLIES:
            cfg[key] = value
        elif cfg.get(key) != value:
            conflicts.append(f"--{key.replace('_', '-')} {value} (the run has {cfg.get(key)})")
    if conflicts:
        raise CLIError(f"--resume {run} cannot change {'; '.join(conflicts)}: only --epochs, --device, --out, "
                       f"--data-dir and --quiet apply to a resumed run; start a new run to change the others")
    if cfg["epochs"] < 0:
        raise CLIError(f"--epochs must be >= 0, got {cfg['epochs']}")
    return cfg


# ----------------------------------------------------------------------------- train
class _RunStart:
    """Callback that writes the run's config.json when training starts, i.e. once ``fit`` has checked
    every argument: a command that fails its checks writes nothing."""

    def __new__(cls, out, cfg, clear):
        from gpunet import callbacks  # noqa: PLC0415

        class RunStart(callbacks.Callback):
            def on_train_begin(self, logs=None):
                out.mkdir(parents=True, exist_ok=True)
                for name in clear:
                    (out / name).unlink(missing_ok=True)
                _write_json(out / "config.json", cfg)
        return RunStart()


def cmd_train(args):
    """``--distributed``: every rank trains (same seed and data, one gradient all-reduce per step); rank 0
    writes the run folder and prints, the other ranks work silently in a scratch folder removed after."""
    if not getattr(args, "distributed", False):
        return _cmd_train(args)
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    from gpunet import distributed  # noqa: PLC0415

    rank, _ = distributed.init()
    # a rank failing its checks before the fit (rank 0: --out holds a run) tells the others through
    # their fit's setup agreement, so every rank stops; rank > 0's scratch folder goes however it ends
    try:
        with distributed.guard():
            if rank == 0:
                return _cmd_train(args)
            with distributed.scratch_dir(f"gpunet-rank{rank}-") as scratch:
                args.out, args.quiet, args.overwrite = os.path.join(scratch, "run"), True, False
                logging.getLogger("gpunet").setLevel(logging.WARNING)
                with contextlib.redirect_stdout(io.StringIO()):
                    return _cmd_train(args)
    except distributed.DistributedError as exc:  # another rank's error, already one line: not an internal one
        raise CLIError(str(exc)) from None


def _cmd_train(args):
    import gpunet as gn  # noqa: PLC0415
    from gpunet import backend, callbacks, plot  # noqa: PLC0415

    if args.tf32:
        backend.set_tf32(True)
    previous = {"history": {}, "seconds": []}
    run = Path(args.resume) if args.resume else None
    if run is not None:
        if not (run / "config.json").is_file() or not (run / "checkpoint.npz").is_file():
            raise CLIError(f"--resume {run}: no config.json and checkpoint.npz there (was it written by 'gpunet train'?)")
        cfg = _resume_config(args, run)
        if cfg.get("data") and cfg.get("data_sha256") and _file_digest(cfg["data"]) != cfg["data_sha256"]:
            raise CLIError(f"--resume {run}: the data file {cfg['data']} changed since the run started")
        model = gn.load(run / "checkpoint.npz", device=cfg["device"])
        model._onehot = cfg["dataset"] == "mnist" or model.classes is not None
        if model.epochs_trained > cfg["epochs"]:
            raise CLIError(f"--epochs {cfg['epochs']} is below the {model.epochs_trained} epochs the run has trained")
        if model.epochs_trained == cfg["epochs"]:
            print(f"gpunet: the run in {run} is already complete ({model.epochs_trained} epochs); pass --epochs N "
                  f"with N > {model.epochs_trained} to train further")
            return 0
        if (run / "history.json").is_file():
            try:
                previous = json.loads((run / "history.json").read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CLIError(f"{run / 'history.json'} is corrupt ({exc})") from None
        data = load_data(cfg, args.data_dir)
        out = _choose_out(args, cfg["dataset"], run)
    else:
        cfg = resolve_config(args)
        data = load_data(cfg, args.data_dir)
        check_widths(cfg, data)
        if cfg.get("data"):
            cfg["data_sha256"] = _file_digest(cfg["data"])
        model = make_model(cfg, data)
        out = _choose_out(args, cfg["dataset"])
    loss = model._resolve_loss(cfg["loss"])
    optimizer = model.optimizer if run is not None and model.optimizer is not None else make_optimizer(cfg)
    remaining = cfg["epochs"] - model.epochs_trained
    cbs = [_RunStart(out, cfg, RUN_FILES if run is None or out != run else ())]
    schedule = make_schedule(cfg)
    if schedule is not None:
        cbs.append(schedule)
    if cfg.get("patience") is not None:
        cbs.append(callbacks.EarlyStopping("val_loss", patience=cfg["patience"], restore_best_weights=True))
    cbs.append(callbacks.ModelCheckpoint(out / "checkpoint.npz", save_best_only=False))
    log.info("gpunet: %s on %s, %s -> %d epochs (batch %d, %s lr %g)", cfg["dataset"], model.device,
             list(model.layer_sizes), cfg["epochs"], cfg["batch_size"], cfg["optimizer"], cfg["lr"])
    X, y = data.train
    val = None if data.val is None else (data.val[0], targets(model, loss, data.val[1]))
    t0 = time.perf_counter()
    hist = model.fit(X, targets(model, loss, y), epochs=remaining, batch_size=cfg["batch_size"], optimizer=optimizer,
                     loss=loss, validation_data=val, callbacks=cbs, verbose=0 if args.quiet else 1,
                     distributed=getattr(args, "distributed", False))
    seconds = time.perf_counter() - t0
    Xt, yt = data.test
    result = model.evaluate(Xt, targets(model, loss, yt), loss=loss)
    history = {k: previous["history"].get(k, []) + v for k, v in hist.history.items()}
    history = {**previous["history"], **history}
    prefix = data.test_label if data.test_label != "training" else "train"
    metrics = {
        "dataset": cfg["dataset"], "device": model.device, "dtype": model.dtype, "layers": list(model.layer_sizes),
        "epochs": model.epochs_trained, "batch_size": cfg["batch_size"], "optimizer": cfg["optimizer"], "lr": cfg["lr"],
        "seed": cfg["seed"], f"{prefix}_loss": result["loss"], "seconds": seconds,
        "seconds_total": seconds + sum(previous.get("seconds", [])),
        "samples_per_s": (len(X) * len(hist.epoch) / sum(hist.seconds)) if hist.seconds else None,
        "interrupted": hist.interrupted, "gpunet_version": gn.__version__, "preset": cfg.get("preset"),
        "cuda_graph": hist.cuda_graph, "fast_paths": hist.fast_paths,
    }
    if "accuracy" in result or data.classes is not None:
        metrics[f"{prefix}_accuracy"] = result.get("accuracy", model.score(Xt, yt) if model.classes is not None
                                                   else float(np.mean(model.predict_classes(Xt) == yt)))
    elif cfg.get("data"):
        metrics[f"{prefix}_r2"] = model.score(Xt, yt)
    if cfg.get("data"):
        metrics.update(data=cfg["data"], target=cfg["target"], task=cfg["task"],
                       n_train=len(X), n_test=len(Xt), evaluated_on=data.test_label)
    extra = {"target": data.target, "features": data.features} if cfg.get("data") else None
    _write_json(out / "history.json", {"history": history, "seconds": previous.get("seconds", []) + hist.seconds})
    if hist.interrupted:
        model.save(out / "checkpoint.npz", extra=extra)
    model.save(out / "model.npz", extra=extra)
    _write_json(out / "metrics.json", metrics)
    _plots(plot, cfg, model, history, data, out)
    shown = ", ".join(f"{k} {_fmt(metrics[k])}" for k in metrics if k.startswith(prefix + "_"))
    print(f"gpunet: {cfg['dataset']} on {model.device}: {shown} after {model.epochs_trained} epochs "
          f"({seconds:.1f}s); wrote {out}")
    if hist.interrupted:
        print(f"gpunet: interrupted after epoch {model.epochs_trained}; resume with: gpunet train --resume {out}",
              file=sys.stderr)
        return 130
    return 0


def _plots(plot, cfg, model, history, data, out):
    if history.get("loss"):
        plot.plot_history(history, out / "loss.png", title=cfg["dataset"], val_label=data.val_label)
    X, y = data.test
    if cfg["dataset"] in ("sinc", "sincos", "sincos01") and not cfg.get("data"):
        labels = ["sin(x)/x + 2"] if cfg["dataset"] == "sinc" else ["sin(x)", "cos(x)"]
        plot.plot_fit(model, X, y, out / "fit.png", title=f"{cfg['dataset']}: {list(model.layer_sizes)}", labels=labels)
    elif cfg["dataset"] == "mnist" and not cfg.get("data"):
        pred = model.predict_classes(X)
        plot.plot_confusion(y, pred, out / "confusion.png")
        plot.plot_misclassified(X, y, pred, out / "misclassified.png")
    elif data.classes is not None:
        index = {c: i for i, c in enumerate(data.classes.tolist())}
        true = [index[v] for v in np.asarray(y).tolist()]
        pred = [index[v] for v in model.predict_classes(X).tolist()]
        plot.plot_confusion(true, pred, out / "confusion.png", n_classes=len(data.classes),
                            labels=[str(c) for c in data.classes], title=f"{cfg['dataset']}: {data.test_label} set")
    else:
        plot.plot_scatter(np.asarray(y, dtype=np.float64), model.predict(X), out / "scatter.png",
                          title=f"{cfg['dataset']}: {data.test_label} set", name=data.target)


# ----------------------------------------------------------------------------- predict / evaluate
def _load_model(spec, device):
    import gpunet as gn  # noqa: PLC0415

    path = Path(spec)
    if path.is_dir():
        path = path / "model.npz"
        if not path.is_file():
            raise CLIError(f"--model {spec}: no model.npz in that folder (was it written by 'gpunet train'?)")
    model = gn.load(path, device=device or "auto")
    extra = (getattr(model, "metadata", {}) or {}).get("extra") or {}
    return model, path, extra if isinstance(extra, dict) else {}


def _read_inputs(model, extra, path, target=None, require_target=False):
    from gpunet import tabular  # noqa: PLC0415

    table = tabular.read(path, target if target is not None else extra.get("target"), require_target=require_target)
    n_in = model.layer_sizes[0]
    if table.X.shape[1] != n_in:
        names = extra.get("features")
        raise CLIError(f"{path} has {table.X.shape[1]} feature columns but the model takes {n_in}"
                       + (f" ({', '.join(map(str, names))})" if names else ""))
    return table


def cmd_predict(args):
    from gpunet.io import atomic_write  # noqa: PLC0415

    model, _, extra = _load_model(args.model, args.device)
    table = _read_inputs(model, extra, args.data)
    if args.proba and model.output_activation not in ("softmax", "sigmoid"):
        raise CLIError("--proba needs a classifier (softmax or sigmoid output); this model predicts values")
    classify = model.classes is not None or model.output_activation in ("softmax", "sigmoid")
    out = model.predict(table.X)
    if classify:
        labels = model.predict_classes(table.X)
        header, rows = ["prediction"], [[v] for v in labels.tolist()]
        if args.proba:
            p = model.predict_proba(table.X)
            names = model.classes.tolist() if model.classes is not None else list(range(p.shape[1]))
            header += [f"p({c})" for c in names]
            rows = [r + [f"{v:.6g}" for v in pr] for r, pr in zip(rows, p)]
    else:
        name = extra.get("target") or "prediction"
        header = [str(name)] if out.shape[1] == 1 else [f"{name}_{j}" for j in range(out.shape[1])]
        rows = [[f"{v:.8g}" for v in r] for r in out]
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    if args.out:
        with atomic_write(args.out, "w") as f:
            f.write(buf.getvalue())
        print(f"gpunet: wrote {len(rows)} predictions to {args.out}")
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def cmd_evaluate(args):
    model, path, extra = _load_model(args.model, args.device)
    table = _read_inputs(model, extra, args.data, args.target, require_target=True)
    loss = model._resolve_loss(None)
    model._onehot = model.classes is not None
    y = table.y
    if model.classes is None and y.dtype.kind in "USO":
        raise CLIError(f"{args.data}: the targets are labels but the model has no classes (it predicts values)")
    result = model.evaluate(table.X, targets(model, loss, y), loss=loss)
    metrics = {"model": str(path), "data": str(Path(args.data).resolve()), "n": len(table.X), "loss_name": loss,
               "loss": result["loss"]}
    if model.classes is not None or "accuracy" in result:
        metrics["accuracy"] = model.score(table.X, y) if model.classes is not None else result["accuracy"]
    else:
        metrics["r2"] = model.score(table.X, y)
    dest = Path(args.out) if args.out else path.parent / f"evaluation-{_dataset_name(args.data)}.json"
    _write_json(dest, metrics)
    shown = ", ".join(f"{k} {_fmt(metrics[k])}" for k in ("loss", "accuracy", "r2") if k in metrics)
    print(f"gpunet: {Path(args.data).name} ({len(table.X)} rows): {shown}; wrote {dest}")
    return 0


# ----------------------------------------------------------------------------- compare
#: settings compare cannot vary: fixed by the data, by --seeds, or not used without a validation set
_NOT_VARIED = ("dataset", "data", "target", "task", "test_split", "seed", "device", "patience", "validation_split",
               "preset")


def _parse_vary(items, base):
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise CLIError(f"--vary expects KEY=V1,V2, got {item!r}")
        allowed = sorted(k for k in base if k not in _NOT_VARIED and k not in ("data_sha256", "hidden"))
        if key not in allowed:
            raise CLIError(f"--vary: cannot vary {key!r}; choose from {', '.join(allowed)}")
        current = base[key]
        conv = []
        for v in values.split(","):
            v = v.strip()
            try:
                if isinstance(current, bool):
                    if v.lower() not in ("1", "true", "yes", "0", "false", "no"):
                        raise ValueError("expected true or false")
                    conv.append(v.lower() in ("1", "true", "yes"))
                elif key in ("lr", "momentum", "weight_decay", "l1", "l2", "dropout"):
                    conv.append(float(v))
                elif isinstance(current, int):
                    conv.append(int(v))
                elif isinstance(current, list):
                    conv.append(_layers(v.replace(":", ",")))
                else:
                    conv.append(v)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise CLIError(f"--vary {key}: bad value {v!r} ({exc})") from None
        grid.append((key, conv))
    return grid


def cmd_compare(args):
    from gpunet import plot  # noqa: PLC0415

    base = resolve_config(args)
    data = load_data(base, args.data_dir)
    check_widths(base, data)
    grid = _parse_vary(args.vary, base)
    if not grid:
        raise CLIError("compare needs at least one --vary KEY=V1,V2")
    combos = list(itertools.product(*[[(k, v) for v in vs] for k, vs in grid]))
    for combo in combos:  # the whole grid is checked before anything trains or is written
        cfg = {**base, **dict(combo)}
        try:
            check_widths(cfg, data)
            model = make_model(cfg, data)
            model._resolve_loss(cfg["loss"])
            make_optimizer(cfg)
            if cfg["epochs"] < 0:
                raise ValueError(f"epochs must be >= 0, got {cfg['epochs']}")
        except (ValueError, TypeError, CLIError) as exc:
            raise CLIError(f"--vary {', '.join(f'{k}={v}' for k, v in combo)}: {exc}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    regression = data.classes is None
    results = []
    for combo in combos:
        name = ", ".join(f"{k}={v}" for k, v in combo)
        runs = []
        cfg = {**base, **dict(combo)}
        trained, stacked = _train_seeds(cfg, data, [base["seed"] + s for s in range(args.seeds)], args.record)
        for model, hist, seconds in trained:
            loss = model._resolve_loss(cfg["loss"])
            Xt, yt = data.test
            r = model.evaluate(Xt, targets(model, loss, yt), loss=loss, penalty=False)  # the data term
            # one metric every configuration shares (the trained loss differs when --vary loss=...)
            mse = model.evaluate(Xt, yt, loss="mse", penalty=False)["loss"] if regression else None
            run = {"loss": r["loss"], "mse": mse, "accuracy": r.get("accuracy"), "seconds": seconds}
            if args.record == "batch":
                run["batch_loss"] = hist.batch_loss
            runs.append(run)
        row = {"name": name, "settings": dict(combo), "runs": runs, "stacked": stacked}
        for metric in ("loss", "mse", "accuracy", "seconds"):
            vals = [r[metric] for r in runs if r[metric] is not None]
            if vals:
                row[f"{metric}_mean"], row[f"{metric}_std"] = float(np.mean(vals)), float(np.std(vals))
        results.append(row)
        print(f"{name}: test loss {row['loss_mean']:.4g} ± {row['loss_std']:.2g}"
              + (f", test MSE {row['mse_mean']:.4g} ± {row['mse_std']:.2g}" if "mse_mean" in row else "")
              + (f", accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}" if "accuracy_mean" in row else "")
              + f", {row['seconds_mean']:.2f}s ± {row['seconds_std']:.2f}s"
              + (" per model (seeds trained together)" if stacked else ""))
    _write_json(out / "compare.json", {"base": base, "seeds": args.seeds, "results": results})
    lines = ["| configuration | test loss, data term (mean ± std) | test MSE | accuracy | seconds |",
             "|---|---|---|---|---|"]
    for r in results:
        acc = f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f}" if "accuracy_mean" in r else "—"
        mse = f"{r['mse_mean']:.4g} ± {r['mse_std']:.2g}" if "mse_mean" in r else "—"
        lines.append(f"| {r['name']} | {r['loss_mean']:.4g} ± {r['loss_std']:.2g} | {mse} | {acc} | "
                     f"{r['seconds_mean']:.2f} ± {r['seconds_std']:.2f} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    metric = "mse" if regression else "accuracy"
    plot.plot_compare(results, out / "compare.png", metric=metric,
                      title=f"{base['dataset']}: test {metric} over {args.seeds} seeds")
    print(f"gpunet: wrote {out}")
    return 0


# ----------------------------------------------------------------------------- info
def cmd_info(args):
    import gpunet as gn  # noqa: PLC0415
    from gpunet import backend  # noqa: PLC0415

    print(f"gpunet {gn.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    try:
        cupy = backend._import_cupy()
        print(f"cupy {cupy.__version__}")
    except ImportError as exc:
        print(f"cupy: not available ({exc}); {backend.INSTALL_HINT}")
    try:
        import numba  # noqa: PLC0415

        print(f"numba {numba.__version__} (fused CPU training step and optimizer on)")
    except Exception:
        print("numba: not installed (CPU optimizer uses plain NumPy; pip install 'gpunet[numba]')")
    print(f"BLAS: {blas_info()}")
    print("devices:")
    print("  cpu")
    print(_fast_path_lines(backend.CPU))
    ok, why = backend.cuda_status(0)
    if not ok:
        print(f"  (no CUDA device: {why})")
    for name in gn.devices()[1:]:
        cupy = backend._import_cupy()
        idx = int(name.split(":")[1])
        props = cupy.cuda.runtime.getDeviceProperties(idx)
        dev_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"  {name}: {dev_name}, {props['totalGlobalMem'] / 2 ** 30:.1f} GiB, "
              f"compute capability {props['major']}.{props['minor']}")
        print(_fast_path_lines(backend.resolve(name)))
    return 0


def _fast_path_lines(be):
    """The fast paths of a backend after its self-check (``gpunet info``)."""
    from gpunet import backend as _backend  # noqa: PLC0415

    if be.is_gpu:
        lines = [f"    fast paths (each self-checked against the reference at first use; float32 GEMMs: "
                 f"{'TF32' if _backend.tf32_effective() else 'full fp32'}):"]
    else:
        lines = ["    fast paths:"]
    for path, st in be.ops.status().items():
        state = {True: "on", False: "OFF", None: "checked at the first fit(cuda_graph=True)"}[st["live"]]
        lines.append(f"      {path:<20} {state}" + (f" ({st['reason']})" if st.get("reason") else ""))
    return "\n".join(lines)


def blas_info():
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
    except Exception:
        pass
    cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
    blas = (cfg.get("Build Dependencies", {}) or {}).get("blas", {}) if isinstance(cfg, dict) else {}
    return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()


def cmd_export(args):
    model, path, _ = _load_model(args.model, "cpu")
    out = model.to_onnx(args.onnx)
    print(f"wrote {out} (ONNX opset 17, {model.n_params:,} parameters, input X ({model.layer_sizes[0]} features), "
          f"output Y ({model.layer_sizes[-1]}))")
    return 0


# ----------------------------------------------------------------------------- registry and entry point
#: name -> (help, epilog, add_arguments(parser), run(args) -> exit code); ``bench`` has its own parser
COMMANDS = {
    "train": ("train a network and write model, metrics and plots", EXAMPLES_TRAIN, add_train_args, cmd_train),
    "predict": ("predict with a trained model: one CSV row per input", None, add_predict_args, cmd_predict),
    "evaluate": ("metrics of a trained model on a labelled file", None, add_evaluate_args, cmd_evaluate),
    "compare": ("train several configurations over several seeds and compare them", None, add_compare_args,
                cmd_compare),
    "bench": ("training throughput against PyTorch, JAX, scikit-learn and plain NumPy (options: "
              "'gpunet bench --help')", None, add_info_args, None),
    "export": ("write a trained model as ONNX for onnxruntime and other runtimes",
               "example: gpunet export --model runs/mnist --onnx mnist.onnx", add_export_args, cmd_export),
    "info": ("versions, devices and BLAS", None, add_info_args, cmd_info),
}
def main(argv=None):
    debug = os.environ.get("GPUNET_DEBUG") == "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:1] == ["bench"]:  # the benchmark has its own parser (see 'gpunet bench --help')
            from gpunet import bench  # noqa: PLC0415

            return bench.main(argv[1:])
        args = parser.parse_args(argv)
        return COMMANDS[args.command][3](args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # every error: one line, no traceback (unless GPUNET_DEBUG=1)
        if debug:
            raise
        from gpunet.backend import DeviceUnavailableError  # noqa: PLC0415
        from gpunet.train import DivergenceError  # noqa: PLC0415

        if isinstance(exc, CLIError):
            code = exc.code
        elif isinstance(exc, (ValueError, TypeError, DeviceUnavailableError, FileNotFoundError)):
            code = 2
        else:
            code = 1
        if isinstance(exc, DivergenceError):
            code = 1
        message = " ".join(str(exc).split()) or type(exc).__name__
        if code == 1 and not isinstance(exc, (DivergenceError, OSError, CLIError, MemoryError)):
            message = f"internal error ({type(exc).__name__}): {message}; rerun with GPUNET_DEBUG=1 for a traceback"
        print(f"gpunet: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("gpunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
