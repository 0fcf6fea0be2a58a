"""``gpunet train``: one run, from the configuration to the run folder (``--resume``, ``--distributed``)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

import gpunet as gn
from gpunet import backend, callbacks, distributed, plot
from gpunet.cli.config import CLIError, make_optimizer, make_schedule, resolve_config, resume_config
from gpunet.cli.data import check_widths, file_digest, load_data, make_model, score_report, targets
from gpunet.cli.rundir import RUN_FILES, RunStart, choose_out, fmt, write_json

log = logging.getLogger("gpunet")


def cmd_train(args):
    """``--distributed``: every rank trains (same seed and data, one gradient all-reduce per step); rank 0
    writes the run folder and prints, the other ranks work silently in a scratch folder removed after."""
    if not getattr(args, "distributed", False):
        return _cmd_train(args)
    rank, _ = distributed.init()
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
    if args.tf32:
        backend.set_tf32(True)
    previous = {"history": {}, "seconds": []}
    run = Path(args.resume) if args.resume else None
    if run is not None:
        if not (run / "config.json").is_file() or not (run / "checkpoint.npz").is_file():
            raise CLIError(f"--resume {run}: no config.json and checkpoint.npz there (was it written by 'gpunet train'?)")
        cfg = resume_config(args, run)
        if cfg.get("data") and cfg.get("data_sha256") and file_digest(cfg["data"]) != cfg["data_sha256"]:
            raise CLIError(f"--resume {run}: the data file {cfg['data']} changed since the run started")
        model = gn.load(run / "checkpoint.npz", device=cfg["device"])
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
        out = choose_out(args, cfg["dataset"], run)
    else:
        cfg = resolve_config(args)
        data = load_data(cfg, args.data_dir)
        check_widths(cfg, data)
        if cfg.get("data"):
            cfg["data_sha256"] = file_digest(cfg["data"])
        model = make_model(cfg, data)
        out = choose_out(args, cfg["dataset"])
    loss = model.resolve_loss(cfg["loss"])
    labels = data.classes is not None  # class labels (one-hot encoded for mse/mae)
    optimizer = model.optimizer if run is not None and model.optimizer is not None else make_optimizer(cfg)
    remaining = cfg["epochs"] - model.epochs_trained
    cbs = [RunStart(out, cfg, RUN_FILES if run is None or out != run else ())]
    schedule = make_schedule(cfg)
    if schedule is not None:
        cbs.append(schedule)
    if cfg.get("patience") is not None:
        cbs.append(callbacks.EarlyStopping("val_loss", patience=cfg["patience"], restore_best_weights=True))
    cbs.append(callbacks.ModelCheckpoint(out / "checkpoint.npz", save_best_only=False,
                                         monitor="val_loss" if data.val is not None else "loss"))
    log.info("gpunet: network %s, %s hidden, %s output, %s loss; %s on %s -> %d epochs (batch %d, %s lr %g)",
             list(model.layer_sizes), model.hidden_activation, model.output_activation, loss, cfg["dataset"],
             model.device, cfg["epochs"], cfg["batch_size"], cfg["optimizer"], cfg["lr"])
    X, y = data.train
    val = None if data.val is None else (data.val[0], targets(model, loss, data.val[1], labels))
    t0 = time.perf_counter()
    hist = model.fit(X, targets(model, loss, y, labels), epochs=remaining, batch_size=cfg["batch_size"], optimizer=optimizer,
                     loss=loss, validation_data=val, callbacks=cbs, verbose=0 if args.quiet else 1,
                     distributed=getattr(args, "distributed", False))
    seconds = time.perf_counter() - t0
    Xt, yt = data.test
    result = model.evaluate(Xt, targets(model, loss, yt, labels), loss=loss)
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
        metrics.update(data=cfg["data"], target=cfg["target"], task=cfg["task"], split_seed=cfg.get("split_seed", 0),
                       n_train=len(X), n_validation=0 if data.val is None else len(data.val[1]), n_test=len(Xt),
                       evaluated_on=data.test_label)
        report = score_report(model, Xt, yt)
        metrics.update({f"{prefix}_{k}": v for k, v in report.items() if k not in ("accuracy", "r2")})
    extra = {"target": data.target, "features": data.features} if cfg.get("data") else None
    write_json(out / "history.json", {"history": history, "seconds": previous.get("seconds", []) + hist.seconds})
    if hist.interrupted:
        model.save(out / "checkpoint.npz", extra=extra)
    model.save(out / "model.npz", extra=extra)
    write_json(out / "metrics.json", metrics)
    _plots(plot, cfg, model, history, data, out)
    shown = ", ".join(f"{k} {fmt(metrics[k])}" for k in metrics if k.startswith(prefix + "_")
                      and isinstance(metrics[k], float))
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
        proba = model.predict_proba(X)
        pred = (proba.argmax(axis=1) if proba.shape[1] > 1 else (proba[:, -1] > 0.5)).tolist()
        title = f"{cfg['dataset']}: {data.test_label} set"
        plot.plot_confusion(true, pred, out / "confusion.png", n_classes=len(data.classes),
                            labels=[str(c) for c in data.classes], title=title)
        plot.plot_calibration(true, proba, out / "calibration.png", labels=[str(c) for c in data.classes],
                              title=title)
    else:
        title = f"{cfg['dataset']}: {data.test_label} set"
        plot.plot_scatter(np.asarray(y, dtype=np.float64), model.predict(X), out / "scatter.png", title=title,
                          name=data.target)
        plot.plot_residuals(np.asarray(y, dtype=np.float64), model.predict(X), out / "residuals.png", title=title,
                            name=data.target)
