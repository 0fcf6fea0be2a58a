"""The ``gpunet`` command's configuration as plain dicts: per-dataset defaults, presets, the flags' resolution
and the rules of ``--resume``; the optimizer and schedule a configuration names."""
from __future__ import annotations

import json
import re
from pathlib import Path

import gpunet as gn
from gpunet import callbacks


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code

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
                     epochs=100, schedule="none", test_split=0.2, no_impute=False, no_encode=False,
                     max_categories=20, categorical=[])
#: flags that only apply to --data files
DATA_ONLY = ("target", "task", "test_split", "no_impute", "no_encode", "max_categories", "categorical")
#: with --patience and no --validation-split, early stopping watches this fraction of the training data
PATIENCE_VALIDATION = 0.1

PRESETS = {
    # measured in this repo: see docs/cli.md, "MNIST recipes"
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
DEFAULTS["sincos01"] = {k: v for k, v in PRESETS["seed003-sigmoid"].items() if k != "dataset"}

BUILTIN = DATASETS + ("sincos01",)

COMMON = dict(init="glorot", momentum=0.0, nesterov=False, weight_decay=None, l1=0.0, l2=0.0, dropout=0.0,
              schedule="none", device="auto", dtype="float32", seed=0, patience=None, validation_split=0.0, split_seed=0)

_CONFIG_KEYS = ("layers", "hidden_activation", "output_activation", "loss", "optimizer", "lr", "batch_size", "epochs",
                "schedule", *COMMON, *DATA_ONLY)

def dataset_name(path):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "data"

def resolve_config(args):
    """Dataset (or data file) defaults <- preset <- explicit flags; returns a plain dict."""
    preset_name = getattr(args, "preset", None)
    preset = PRESETS.get(preset_name or "", {})
    data = getattr(args, "data", None)
    if data and preset:
        raise CLIError(f"--preset {preset_name} is a recipe for --dataset {preset['dataset']}, not for --data")
    if data:
        cfg = {"dataset": dataset_name(data), "data": str(Path(data).resolve()), **COMMON, **DATA_DEFAULTS,
               "target": None, "task": None}
    else:
        dataset = args.dataset or preset.get("dataset") or "mnist"
        cfg = {"dataset": dataset, **COMMON, **DEFAULTS[dataset]}
        for flag in DATA_ONLY:
            if getattr(args, flag, None) not in (None, False):
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
    if cfg.get("patience") is not None and not cfg["validation_split"]:
        # early stopping selects an epoch: it watches rows carved from the training data, never the test set
        cfg["validation_split"] = PATIENCE_VALIDATION
        print(f"gpunet: note: --patience watches a validation split of {PATIENCE_VALIDATION:g} carved from the "
              f"training data (--validation-split to change it); the test set is never used for selection")
    return cfg

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

def resume_config(args, run):
    cfg = _read_run_config(run)
    cfg.setdefault("validation_split", 0.0)
    cfg.setdefault("split_seed", 0)
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

def make_optimizer(cfg):

    wd = cfg.get("weight_decay")
    if cfg["optimizer"] == "sgd":
        return gn.SGD(lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=wd or 0.0)
    cls = gn.AdamW if cfg["optimizer"] == "adamw" else gn.Adam
    return cls(lr=cfg["lr"], **({} if wd is None else {"weight_decay": wd}))  # an explicit 0 is kept

def make_schedule(cfg):

    if cfg["schedule"] == "cosine":
        schedule = callbacks.CosineDecay(max(cfg["epochs"], 1), min_lr=cfg["lr"] * 0.01)
    elif cfg["schedule"] == "step":
        schedule = callbacks.StepDecay(max(cfg["epochs"] // 3, 1), gamma=0.1)
    else:
        return None
    schedule.fixed_base_lr = cfg["lr"]  # also when resuming: the saved optimizer holds the decayed rate
    return schedule
