"""The run folder: which files it holds, choosing and refusing folders, JSON written atomically, and the
callback that writes ``config.json`` once training really starts."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from gpunet import callbacks
from gpunet._files import atomic_write
from gpunet.cli.config import CLIError


#: files a run folder holds (removed by --overwrite before a new run starts)
RUN_FILES = ("config.json", "model.npz", "checkpoint.npz", "metrics.json", "history.json", "loss.png", "fit.png",
             "confusion.png", "misclassified.png", "scatter.png", "calibration.png", "residuals.png")

def write_json(path, obj):

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")

def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return float(o)

def fmt(value):
    return "-" if value is None else f"{value:.4g}"

def _holds_run(folder):
    return any((folder / name).exists() for name in ("config.json", "model.npz", "checkpoint.npz"))

def choose_out(args, dataset, resume_dir=None):
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

class RunStart:
    """Callback that writes the run's config.json when training starts, i.e. once ``fit`` has checked
    every argument: a command that fails its checks writes nothing."""

    def __new__(cls, out, cfg, clear):

        class RunStart(callbacks.Callback):
            def on_train_begin(self, logs=None):
                out.mkdir(parents=True, exist_ok=True)
                for name in clear:
                    (out / name).unlink(missing_ok=True)
                write_json(out / "config.json", cfg)
        return RunStart()
