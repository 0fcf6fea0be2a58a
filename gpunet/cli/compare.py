"""``gpunet compare``: a grid of configurations, each trained over several seeds (stacked when that is
faster), evaluated and tabulated."""
from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np

import gpunet as gn
from gpunet import checks, plot
from gpunet.cli.config import CLIError, make_optimizer, make_schedule, resolve_config
from gpunet.cli.data import attach_data, check_widths, load_data, make_model, targets
from gpunet.cli.parser import layers_arg
from gpunet.cli.rundir import write_json


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
                    conv.append(layers_arg(v.replace(":", ",")))
                else:
                    conv.append(v)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise CLIError(f"--vary {key}: bad value {v!r} ({exc})") from None
        grid.append((key, conv))
    return grid

def _new_stack(cfg, data, seeds):
    stack = gn.MLPStack(cfg["layers"], cfg["hidden_activation"], cfg["output_activation"], seeds=seeds,
                        device=cfg["device"], dtype=cfg["dtype"], init=cfg["init"], l1=cfg["l1"], l2=cfg["l2"],
                        dropout=cfg["dropout"])
    attach_data(stack, data)
    return stack


def choose_stacked(cfg, data, seeds):
    """Whether training the seeds together as one MLPStack is faster than one after the other, measured: on a
    CUDA device always (one launch sequence for all models instead of one per model); on the CPU, one epoch
    over up to 8 batches of the training data is timed both ways, best of 3, after a warm-up epoch (which also
    compiles the fused CPU steps, so no configuration's first timed run includes compilation). On the CPU the
    stack's epoch is the fused stacked step where it applies (one compiled call, the models in parallel) and
    the batched GEMMs otherwise; which one is printed. Returns (bool, reason)."""
    forced = os.environ.get("GPUNET_STACK")
    if forced in ("0", "1"):
        return forced == "1", f"forced by $GPUNET_STACK={forced}"
    if str(cfg["device"]).startswith("cuda"):
        return True, "on CUDA: one batched launch sequence for all models"
    X, y = data.train
    rows = min(len(X), 8 * cfg["batch_size"])
    X, y = X[:rows], y[:rows]
    stack = _new_stack(cfg, data, seeds)
    loss = stack.resolve_loss(cfg["loss"])
    Y = targets(stack, loss, y, data.classes is not None)
    fit = dict(batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss)
    one = make_model({**cfg, "seed": seeds[0]}, data)
    stack.fit(X, Y, epochs=1, **fit)
    one.fit(X, Y, epochs=1, verbose=0, **fit)
    stacked = sequential = float("inf")
    for _ in range(3):  # best of 3, alternating: a busy machine slows one run, not the comparison
        t0 = time.perf_counter()
        stack.fit(X, Y, epochs=1, batch_size=cfg["batch_size"], loss=loss)
        stacked = min(stacked, time.perf_counter() - t0)
        t0 = time.perf_counter()
        one.fit(X, Y, epochs=1, verbose=0, batch_size=cfg["batch_size"], loss=loss)
        sequential = min(sequential, (time.perf_counter() - t0) * len(seeds))
    path = stack.fast_paths.get("fused_stack_step", {})
    print("  the stack's epoch: " + ("the fused stacked CPU step" if path.get("live") else
                                     f"batched GEMMs ({path.get('reason')})"))
    reason = (f"measured over {rows} rows: {stacked * 1e3:.1f} ms per epoch stacked, {sequential * 1e3:.1f} ms "
              f"for {len(seeds)} sequential models")
    return stacked < sequential, reason


def _train_seeds(cfg, data, seeds, record):
    """The configuration ``cfg`` trained once per seed: ``[(model, history, seconds)]``. Without a
    learning-rate schedule or per-batch records, and where :func:`choose_stacked` measures it faster, all seeds
    train together as one :class:`gpunet.MLPStack` (batched GEMMs; each model equals its own run to float64
    rounding), else one after the other. The choice and its measurement are printed."""

    schedule = make_schedule(cfg)
    stacked, reason = False, "a learning-rate schedule or --record batch needs separate fits"
    if schedule is None and record == "epoch" and len(seeds) > 1:
        stacked, reason = choose_stacked(cfg, data, seeds)
    elif len(seeds) == 1:
        reason = "one seed"
    print(f"  {len(seeds)} seed(s) trained {'together as one MLPStack' if stacked else 'one after the other'} "
          f"({reason})")
    if stacked:
        stack = _new_stack(cfg, data, seeds)
        loss = stack.resolve_loss(cfg["loss"])
        t0 = time.perf_counter()
        hists = stack.fit(data.train[0], targets(stack, loss, data.train[1], data.classes is not None),
                          epochs=cfg["epochs"], batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss)
        seconds = (time.perf_counter() - t0) / len(seeds)
        return [(m, h, seconds) for m, h in zip(stack.models(), hists)], True
    if not (len(seeds) > 1 and schedule is None and record == "epoch"):  # (choose_stacked warmed it up)
        # warm up (compile the fused CPU step) so the first seed's time is like the others'
        warm = make_model({**cfg, "seed": seeds[0]}, data)
        rows = min(len(data.train[0]), 2 * cfg["batch_size"])
        warm.fit(data.train[0][:rows], targets(warm, warm.resolve_loss(cfg["loss"]), data.train[1][:rows],
                                              data.classes is not None),
                 epochs=1, batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), verbose=0)
    runs = []
    for seed in seeds:
        model = make_model({**cfg, "seed": seed}, data)
        loss = model.resolve_loss(cfg["loss"])
        t0 = time.perf_counter()
        hist = model.fit(data.train[0], targets(model, loss, data.train[1], data.classes is not None), epochs=cfg["epochs"],
                         batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss, verbose=0,
                         callbacks=[schedule] if schedule else None, record=record)
        runs.append((model, hist, time.perf_counter() - t0))
        schedule = make_schedule(cfg)  # a fresh schedule per run
    return runs, False

def cmd_compare(args):

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
            model.resolve_loss(cfg["loss"])
            make_optimizer(cfg)
            checks.check_int("epochs", cfg["epochs"], low=0)
            checks.check_int("batch_size", cfg["batch_size"], low=1)
        except (ValueError, TypeError, CLIError) as exc:
            raise CLIError(f"--vary {', '.join(f'{k}={v}' for k, v in combo)}: {exc}") from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder (compare writes compare.json, compare.md and "
                       f"compare.png into a folder)")
    out.mkdir(parents=True, exist_ok=True)
    regression = data.classes is None
    results = []
    for combo in combos:
        name = ", ".join(f"{k}={v}" for k, v in combo)
        runs = []
        cfg = {**base, **dict(combo)}
        trained, stacked = _train_seeds(cfg, data, [base["seed"] + s for s in range(args.seeds)], args.record)
        for model, hist, seconds in trained:
            loss = model.resolve_loss(cfg["loss"])
            Xt, yt = data.test
            r = model.evaluate(Xt, targets(model, loss, yt, data.classes is not None), loss=loss, penalty=False)  # the data term
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
    write_json(out / "compare.json", {"base": base, "seeds": args.seeds, "results": results})
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
