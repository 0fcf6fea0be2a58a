"""The ``gpunet`` command: ``train``, ``compare``, ``bench`` and ``info``.

Errors print one line (``gpunet: error: ...``) and exit non-zero: 2 for bad arguments, bad input and
unavailable devices, 1 for failures during training (divergence, I/O), 130 after Ctrl-C. Set
``GPUNET_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
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
    "sinc": dict(layers=[1] + [50] * 9 + [1], hidden_activation="relu", output_activation="linear", loss="mse",
                 optimizer="sgd", lr=0.01, batch_size=20, epochs=500),
    "sincos": dict(layers=[1, 16, 2], hidden_activation="tanh", output_activation="linear", loss="mse",
                   optimizer="adam", lr=0.01, batch_size=32, epochs=200),
}
PRESETS = {
    # measured in this repo: see README "MNIST recipes"
    "mnist-best": dict(dataset="mnist", layers=[784, 1024, 1024, 10], dropout=0.3, optimizer="adamw", lr=1e-3,
                       weight_decay=1e-4, schedule="cosine", batch_size=128, epochs=30),
}
COMMON = dict(init="glorot", momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0, l2=0.0, dropout=0.0,
              schedule="none", device="auto", dtype="float32", seed=0, patience=None, validation_split=0.0)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code ``code``."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


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


def _add_model_args(p):
    p.add_argument("--dataset", choices=DATASETS, help="mnist (default), sinc or sincos")
    p.add_argument("--data-dir", help="folder with the MNIST .gz files (default: shipped copy / $GPUNET_DATA)")
    p.add_argument("--layers", type=_layers, help="comma-separated layer sizes, e.g. 784,512,256,10")
    p.add_argument("--hidden-activation", choices=["relu", "sigmoid", "tanh", "linear"])
    p.add_argument("--output-activation", choices=["linear", "sigmoid", "softmax", "tanh", "relu"])
    p.add_argument("--loss", choices=["mse", "mae", "cross_entropy", "binary_cross_entropy"])
    p.add_argument("--init", choices=["glorot", "he"])
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--momentum", type=float, help="SGD momentum")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--l1", type=float, help="L1 penalty on weights")
    p.add_argument("--l2", type=float, help="L2 penalty on weights")
    p.add_argument("--dropout", type=float, help="dropout rate on hidden layers")
    p.add_argument("--schedule", choices=["none", "step", "cosine"], help="learning-rate schedule")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--seed", type=int)
    p.add_argument("--tf32", action="store_true", help="TF32 tensor-core matmuls for float32 on CUDA (opt-in)")


def build_parser():
    parser = _Parser(prog="gpunet", description="Train multilayer perceptrons on a CUDA GPU (CuPy) or the CPU (NumPy).")
    from gpunet import __version__  # noqa: PLC0415

    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a network and write model, metrics and plots")
    _add_model_args(t)
    t.add_argument("--preset", choices=sorted(PRESETS), help="a tuned recipe (flags still override it)")
    t.add_argument("--patience", type=int, help="early stopping on val_loss after this many epochs without gain")
    t.add_argument("--validation-split", type=float,
                   help="hold out this fraction of the training set for validation (default: use the test set)")
    t.add_argument("--out", help="output folder for model.npz, metrics.json, history.json, plots, checkpoint")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (up to --epochs in total)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-epoch lines")

    c = sub.add_parser("compare", help="train several configurations over several seeds and compare them")
    _add_model_args(c)
    c.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting to vary, e.g. hidden_activation=relu,sigmoid (repeatable: the grid is crossed)")
    c.add_argument("--seeds", type=_positive_int, default=3, help="seeds per configuration (default 3)")
    c.add_argument("--out", required=True, help="folder for compare.json, compare.md and compare.png")

    sub.add_parser("bench", help="training throughput against PyTorch, JAX, scikit-learn and plain NumPy "
                   "(options: 'gpunet bench --help')")

    sub.add_parser("info", help="versions, devices and BLAS")
    return parser


# ----------------------------------------------------------------------------- configuration
def resolve_config(args):
    """Dataset defaults <- preset <- explicit flags; returns a plain dict."""
    preset = PRESETS.get(getattr(args, "preset", None) or "", {})
    dataset = args.dataset or preset.get("dataset") or "mnist"
    cfg = {"dataset": dataset, **COMMON, **DEFAULTS[dataset]}
    cfg.update({k: v for k, v in preset.items() if k != "dataset"})
    if getattr(args, "preset", None):
        cfg["preset"] = args.preset
    for key in list(COMMON) + list(DEFAULTS[dataset]):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if args.epochs is not None and args.epochs < 0:
        raise CLIError(f"--epochs must be >= 0, got {args.epochs}")
    return cfg


def load_data(cfg, data_dir=None):
    """((X, y), (X_test, y_test)) on the host for the configured dataset."""
    from gpunet import datasets  # noqa: PLC0415

    name = cfg["dataset"]
    if name == "mnist":
        return datasets.load_mnist(data_dir)
    make = datasets.sinc if name == "sinc" else datasets.sincos
    return make(1000, seed=cfg["seed"]), make(500, seed=cfg["seed"] + 1)


def make_model(cfg):
    import gpunet as gn  # noqa: PLC0415

    return gn.MLP(cfg["layers"], cfg["hidden_activation"], cfg["output_activation"], device=cfg["device"],
                  dtype=cfg["dtype"], seed=cfg["seed"], init=cfg["init"], l1=cfg["l1"], l2=cfg["l2"],
                  dropout=cfg["dropout"])


def make_optimizer(cfg):
    import gpunet as gn  # noqa: PLC0415

    if cfg["optimizer"] == "sgd":
        return gn.SGD(lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"], weight_decay=cfg["weight_decay"])
    cls = gn.AdamW if cfg["optimizer"] == "adamw" else gn.Adam
    kwargs = {"weight_decay": cfg["weight_decay"]} if cfg["weight_decay"] or cfg["optimizer"] == "adam" else {}
    return cls(lr=cfg["lr"], **kwargs)


def make_schedule(cfg):
    from gpunet import callbacks  # noqa: PLC0415

    if cfg["schedule"] == "cosine":
        return callbacks.CosineDecay(max(cfg["epochs"], 1), min_lr=cfg["lr"] * 0.01)
    if cfg["schedule"] == "step":
        return callbacks.StepDecay(max(cfg["epochs"] // 3, 1), gamma=0.1)
    return None


def _split_validation(cfg, train, test):
    frac = cfg["validation_split"]
    if not frac:
        return train, test
    if not 0 < frac < 1:
        raise CLIError(f"--validation-split must be in (0, 1), got {frac}")
    X, y = train
    order = np.random.default_rng(cfg["seed"]).permutation(len(X))
    cut = len(X) - max(1, int(round(frac * len(X))))
    return (X[order[:cut]], y[order[:cut]]), (X[order[cut:]], y[order[cut:]])


def _write_json(path, obj):
    from gpunet.io import atomic_write  # noqa: PLC0415

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")


# ----------------------------------------------------------------------------- train
def cmd_train(args):
    import gpunet as gn  # noqa: PLC0415
    from gpunet import backend, callbacks, plot  # noqa: PLC0415

    if args.tf32:
        backend.set_tf32(True)

    previous = {"history": {}, "seconds": []}
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.json").is_file() or not (run / "checkpoint.npz").is_file():
            raise CLIError(f"--resume {run}: no config.json and checkpoint.npz there (was it written by 'gpunet train --out'?)")
        cfg = json.loads((run / "config.json").read_text())
        if args.epochs is not None:
            cfg["epochs"] = args.epochs
        if args.device:
            cfg["device"] = args.device
        out = Path(args.out) if args.out else run
        model = gn.load(run / "checkpoint.npz", device=cfg["device"])
        if (run / "history.json").is_file():
            previous = json.loads((run / "history.json").read_text())
    else:
        cfg = resolve_config(args)
        out = Path(args.out) if args.out else None
        model = make_model(cfg)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "config.json", cfg)
    train, test = load_data(cfg, args.data_dir)
    train, val = _split_validation(cfg, train, test)
    remaining = max(cfg["epochs"] - model.epochs_trained, 0)
    optimizer = model.optimizer if args.resume and model.optimizer is not None else make_optimizer(cfg)
    cbs = []
    schedule = make_schedule(cfg)
    if schedule is not None:
        schedule.base_lr = cfg["lr"]
        cbs.append(schedule)
    if cfg.get("patience") is not None:
        cbs.append(callbacks.EarlyStopping("val_loss", patience=cfg["patience"], restore_best_weights=True))
    if out is not None:
        cbs.append(callbacks.ModelCheckpoint(out / "checkpoint.npz", save_best_only=False))
    log.info("gpunet: %s on %s, %s -> %d epochs (batch %d, %s lr %g)", cfg["dataset"], model.device,
             list(model.layer_sizes), cfg["epochs"], cfg["batch_size"], cfg["optimizer"], cfg["lr"])
    t0 = time.perf_counter()
    hist = model.fit(*train, epochs=remaining, batch_size=cfg["batch_size"], optimizer=optimizer, loss=cfg["loss"],
                     validation_data=val, callbacks=cbs, verbose=0 if args.quiet else 1)
    seconds = time.perf_counter() - t0
    result = model.evaluate(*test, loss=cfg["loss"])
    history = {k: previous["history"].get(k, []) + v for k, v in hist.history.items()}
    history = {**previous["history"], **history}
    metrics = {
        "dataset": cfg["dataset"], "device": model.device, "dtype": model.dtype, "layers": list(model.layer_sizes),
        "epochs": model.epochs_trained, "batch_size": cfg["batch_size"], "optimizer": cfg["optimizer"], "lr": cfg["lr"],
        "seed": cfg["seed"], "test_loss": result["loss"], "seconds": seconds,
        "seconds_total": seconds + sum(previous.get("seconds", [])),
        "samples_per_s": (len(train[0]) * len(hist.epoch) / sum(hist.seconds)) if hist.seconds else None,
        "interrupted": hist.interrupted, "gpunet_version": gn.__version__, "preset": cfg.get("preset"),
    }
    if "accuracy" in result:
        metrics["test_accuracy"] = result["accuracy"]
    if out is not None:
        _write_json(out / "history.json", {"history": history, "seconds": previous.get("seconds", []) + hist.seconds})
        if hist.interrupted:
            model.save(out / "checkpoint.npz")
        model.save(out / "model.npz")
        _write_json(out / "metrics.json", metrics)
        _plots(plot, cfg, model, history, test, out)
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("test_accuracy", "test_loss") if k in metrics)
    print(f"gpunet: {cfg['dataset']} on {model.device}: {shown} after {model.epochs_trained} epochs "
          f"({seconds:.1f}s){f'; wrote {out}' if out else ''}")
    if hist.interrupted:
        where = f"gpunet train --resume {out}" if out else "(pass --out DIR to keep a checkpoint)"
        print(f"gpunet: interrupted after epoch {model.epochs_trained}; resume with: {where}", file=sys.stderr)
        return 130
    return 0


def _plots(plot, cfg, model, history, test, out):
    if history.get("loss"):
        plot.plot_history(history, out / "loss.png", title=cfg["dataset"])
    X, y = test
    if cfg["dataset"] in ("sinc", "sincos"):
        labels = ["sin(x)/x + 2"] if cfg["dataset"] == "sinc" else ["sin(x)", "cos(x)"]
        plot.plot_fit(model, X, y, out / "fit.png", title=f"{cfg['dataset']}: {list(model.layer_sizes)}", labels=labels)
    elif cfg["dataset"] == "mnist":
        pred = model.predict_classes(X)
        plot.plot_confusion(y, pred, out / "confusion.png")
        plot.plot_misclassified(X, y, pred, out / "misclassified.png")


# ----------------------------------------------------------------------------- compare
def _parse_vary(items, base):
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise CLIError(f"--vary expects KEY=V1,V2, got {item!r}")
        if key not in base:
            raise CLIError(f"--vary: unknown setting {key!r}; choose from {', '.join(sorted(base))}")
        current = base[key]
        conv = []
        for v in values.split(","):
            v = v.strip()
            try:
                if isinstance(current, bool):
                    conv.append(v.lower() in ("1", "true", "yes"))
                elif isinstance(current, (int, float)) and not isinstance(current, bool):
                    conv.append(type(current)(float(v)) if isinstance(current, float) else int(v))
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
    grid = _parse_vary(args.vary, base)
    if not grid:
        raise CLIError("compare needs at least one --vary KEY=V1,V2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_data(base, args.data_dir)
    regression = base["dataset"] != "mnist"
    results = []
    for combo in itertools.product(*[[(k, v) for v in vs] for k, vs in grid]):
        name = ", ".join(f"{k}={v}" for k, v in combo)
        runs = []
        for s in range(args.seeds):
            cfg = {**base, **dict(combo), "seed": base["seed"] + s}
            model = make_model(cfg)
            t0 = time.perf_counter()
            model.fit(*train, epochs=cfg["epochs"], batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg),
                      loss=cfg["loss"], verbose=0)
            seconds = time.perf_counter() - t0
            r = model.evaluate(*test, loss=cfg["loss"], penalty=False)  # the data term: comparable across l1/l2
            # one metric every configuration shares (the trained loss differs when --vary loss=...)
            mse = model.evaluate(*test, loss="mse", penalty=False)["loss"] if regression else None
            runs.append({"loss": r["loss"], "mse": mse, "accuracy": r.get("accuracy"), "seconds": seconds})
        row = {"name": name, "settings": dict(combo), "runs": runs}
        for metric in ("loss", "mse", "accuracy", "seconds"):
            vals = [r[metric] for r in runs if r[metric] is not None]
            if vals:
                row[f"{metric}_mean"], row[f"{metric}_std"] = float(np.mean(vals)), float(np.std(vals))
        results.append(row)
        print(f"{name}: test loss {row['loss_mean']:.4g} ± {row['loss_std']:.2g}"
              + (f", test MSE {row['mse_mean']:.4g} ± {row['mse_std']:.2g}" if "mse_mean" in row else "")
              + (f", accuracy {row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}" if "accuracy_mean" in row else "")
              + f", {row['seconds_mean']:.2f}s ± {row['seconds_std']:.2f}s")
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
    return 0


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


# ----------------------------------------------------------------------------- entry point
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
        return {"train": cmd_train, "compare": cmd_compare, "info": cmd_info}[args.command](args)
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
