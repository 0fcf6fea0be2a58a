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
from gpunet import checks, metrics, plot
from gpunet.cli.config import CLIError, make_optimizer, make_schedule, resolve_config
from gpunet.cli.data import attach_data, check_widths, fold_views, load_data, make_model, targets, validation_view
from gpunet.cli.parser import layers_arg
from gpunet.cli.rundir import write_json


#: the validation split compare chooses on without --folds or --validation-split
COMPARE_VALIDATION = 0.1
#: settings compare cannot vary: fixed by the data, by --seeds, or not used without a validation set
_NOT_VARIED = ("dataset", "data", "target", "task", "test_split", "seed", "device", "patience", "validation_split",
               "preset", "split_seed", "no_impute", "no_encode", "max_categories", "categorical")

def _hidden_widths(text):
    """``64:32`` -> [64, 32]; ``none`` -> [] (no hidden layer)."""
    if text.lower() == "none":
        return []
    try:
        widths = [int(w) for w in text.split(":")]
    except ValueError:
        raise ValueError("hidden widths are integers joined by ':', such as 64:64, or none") from None
    if min(widths) < 1:
        raise ValueError("hidden widths must be >= 1")
    return widths

def _parse_vary(items, base):
    grid = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise CLIError(f"--vary expects KEY=V1,V2, got {item!r}")
        allowed = sorted({k for k in base if k not in _NOT_VARIED and k != "data_sha256"} | {"hidden"})
        if key not in allowed:
            raise CLIError(f"--vary: cannot vary {key!r}; choose from {', '.join(allowed)}")
        if key in {k for k, _ in grid}:
            raise CLIError(f"--vary {key} is given twice; list all its values in one --vary {key}=V1,V2")
        if key == "hidden" and any(k == "layers" for k, _ in grid) or key == "layers" and \
                any(k == "hidden" for k, _ in grid):
            raise CLIError("--vary hidden and --vary layers both set the hidden widths; use one of them")
        current = base.get(key)
        conv = []
        raw = [v.strip() for v in values.split(",")]
        if len(set(raw)) != len(raw):
            raise CLIError(f"--vary {key}: a value is listed twice ({values})")
        for v in raw:
            try:
                if key == "hidden":  # hidden widths only: 64:64 is [n_in, 64, 64, n_out]
                    conv.append(_hidden_widths(v))
                elif isinstance(current, bool):
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
    the batched GEMMs otherwise; which one is printed. Returns (bool, reason, warmed): ``warmed`` says whether
    the measurement ran (and so compiled the fused steps); a forced or CUDA choice measures nothing."""
    forced = os.environ.get("GPUNET_STACK")
    if forced not in (None, "", "0", "1"):
        print(f"  $GPUNET_STACK={forced!r} is neither 0 nor 1: ignored, the choice is measured")
    if forced in ("0", "1"):
        return forced == "1", f"forced by $GPUNET_STACK={forced}", False
    if str(cfg["device"]).startswith("cuda"):
        return True, "on CUDA: one batched launch sequence for all models", False
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
    return stacked < sequential, reason, True


def _warm_up(model, cfg, data):
    """One epoch of ``model`` (an MLP or an MLPStack) on two batches of the training data, outside any timing: it
    compiles the fused CPU step that the timed fits then use."""
    rows = min(len(data.train[0]), 2 * cfg["batch_size"])
    loss = model.resolve_loss(cfg["loss"])
    model.fit(data.train[0][:rows], targets(model, loss, data.train[1][:rows], data.classes is not None), epochs=1,
              batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss, verbose=0)


def _train_configuration(cfgs, views, seeds, record, folds):
    """Every fold x seed of one configuration (``cfgs[f]``, ``views[f]``: fold ``f``'s settings and data; one of
    each without --folds): ``([[(model, history, seconds)] per seed] per fold, stacked)``. Each model is validated
    on its view's validation part after every epoch. Without a learning-rate schedule or per-batch records, and
    where :func:`choose_stacked` measures it faster, all folds x seeds train together as one
    :class:`gpunet.MLPStack` (each model on its own fold's rows, with its own fold's standardisation; each equals
    its own ``MLP.fit`` to float64 rounding), else one ``MLP.fit`` after the other. Folds whose training parts
    differ in size (K not dividing the rows) or in width form one stack each, since a stack's models share their
    batch boundaries. The choice, its measurement and the number of stacks are printed."""
    what = f"{len(views)} fold(s) x {len(seeds)} seed(s)" if folds else f"{len(seeds)} seed(s)"
    stacked, warmed = False, False  # warmed: choose_stacked's measurement already compiled the fused CPU steps
    if make_schedule(cfgs[0]) is not None or record != "epoch":
        reason = "a learning-rate schedule or --record batch needs separate fits"
    elif len(views) * len(seeds) == 1:
        reason = "one seed"
    else:
        stacked, reason, warmed = choose_stacked(cfgs[0], views[0], [s for _ in views for s in seeds])
    if not stacked:
        print(f"  {what} trained one after the other ({reason})")
        return _train_one_by_one(cfgs, views, seeds, record, warmed), False
    groups = {}
    for f, (cfg, view) in enumerate(zip(cfgs, views)):
        groups.setdefault((tuple(cfg["layers"]), len(view.train[0])), []).append(f)
    groups = list(groups.values())
    widths = len({cfgs[g[0]]["layers"][0] for g in groups}) > 1
    shapes = ", ".join(f"{len(g)} fold(s) of {len(views[g[0]].train[0])} rows" + (
        f" x {cfgs[g[0]]['layers'][0]} inputs" if widths else "") for g in groups)
    how = "one MLPStack" if len(groups) == 1 else f"{len(groups)} MLPStacks (one per training-part shape: {shapes})"
    print(f"  {what} trained together as {how} ({reason})")
    out = [None] * len(views)
    for fs in groups:
        cfg, first = cfgs[fs[0]], views[fs[0]]
        model_seeds = [s for _ in fs for s in seeds]
        if not warmed:  # a forced or CUDA choice measured nothing: compile the stacked step outside the timing
            _warm_up(_new_stack(cfg, first, model_seeds), cfg, first)
            warmed = True
        stack = _new_stack(cfg, first, model_seeds)
        loss = stack.resolve_loss(cfg["loss"])
        X, Y, val = [], [], []
        for i, f in enumerate(fs):  # the seeds of a fold share its arrays (one upload) and its standardisation
            view = views[f]
            attach_data(stack, view, models=range(i * len(seeds), (i + 1) * len(seeds)))
            labels = view.classes is not None
            y = targets(stack, loss, view.train[1], labels)
            v = None if view.val is None else (view.val[0], targets(stack, loss, view.val[1], labels))
            X += [view.train[0]] * len(seeds)
            Y += [y] * len(seeds)
            val += [v] * len(seeds)
        t0 = time.perf_counter()
        hists = stack.fit(X if len(fs) > 1 else X[0], Y if len(fs) > 1 else Y[0], epochs=cfg["epochs"],
                          batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss,
                          validation_data=(val if len(fs) > 1 else val[0]) if val[0] is not None else None)
        seconds = (time.perf_counter() - t0) / len(model_seeds)
        models = stack.models()
        for i, f in enumerate(fs):
            out[f] = [(models[k], hists[k], seconds) for k in range(i * len(seeds), (i + 1) * len(seeds))]
    return out, True


def _train_one_by_one(cfgs, views, seeds, record, warmed):
    """Every fold x seed as its own ``MLP.fit``, validated on its view's validation part after every epoch."""
    if not warmed:  # so the first run's time is like the others' (it would include compiling the fused step)
        _warm_up(make_model({**cfgs[0], "seed": seeds[0]}, views[0]), cfgs[0], views[0])
    out = []
    for cfg, view in zip(cfgs, views):
        runs = []
        for seed in seeds:
            schedule = make_schedule(cfg)  # a fresh schedule per run
            model = make_model({**cfg, "seed": seed}, view)
            loss = model.resolve_loss(cfg["loss"])
            labels = view.classes is not None
            t0 = time.perf_counter()
            val = None if view.val is None else (view.val[0], targets(model, loss, view.val[1], labels))
            hist = model.fit(view.train[0], targets(model, loss, view.train[1], labels), epochs=cfg["epochs"],
                             batch_size=cfg["batch_size"], optimizer=make_optimizer(cfg), loss=loss, verbose=0,
                             callbacks=[schedule] if schedule else None, record=record, validation_data=val)
            runs.append((model, hist, time.perf_counter() - t0))
        out.append(runs)
    return out

def _layers(cfg, view):
    """``--vary hidden=64:64``: the hidden widths between the data's input and output widths."""
    if "hidden_widths" in cfg:
        cfg["layers"] = [view.n_features, *cfg["hidden_widths"], cfg["layers"][-1]]
    return cfg


def _config(base, combo, view):
    settings = dict(combo)
    cfg = {**base, **settings}
    if base.get("auto_layers") and "layers" not in settings:  # widths from the data: each fold's own input width
        cfg["layers"] = [view.n_features, *base["layers"][1:]]
    if "hidden" in settings:
        cfg.pop("hidden")
        cfg["hidden_widths"] = settings["hidden"]
    return _layers(cfg, view)


def _scores(model, cfg, part, regression):
    """Data-term loss, accuracy or R² and (regression) the MSE every configuration shares, on ``part``."""
    X, y = part
    loss = model.resolve_loss(cfg["loss"])
    r = model.evaluate(X, targets(model, loss, y, not regression), loss=loss, penalty=False)
    out = {"loss": r["loss"], "accuracy": r.get("accuracy"), "mse": None, "r2": None}
    if regression:  # (the trained loss differs when --vary loss=...)
        out["mse"] = model.evaluate(X, y, loss="mse", penalty=False)["loss"]
        out["r2"] = metrics.r2_score(np.asarray(y, dtype=np.float64), model.predict(X))
    elif out["accuracy"] is None:  # a regression loss on class labels (--vary loss=mse): the argmax's accuracy
        labels = np.asarray(y)
        out["accuracy"] = float(np.mean(model.predict_classes(X) == labels)) if labels.ndim == 1 else \
            model.score(X, y)
    return out


def _mean_std(row, runs, key, prefix=""):
    vals = [r[key] for r in runs if r.get(key) is not None]
    if vals:
        row[f"{prefix}{key}_mean"], row[f"{prefix}{key}_std"] = float(np.mean(vals)), float(np.std(vals))


def cmd_compare(args):

    base = resolve_config(args)
    folds = args.folds
    if folds and base["validation_split"]:
        raise CLIError("--folds K holds out each fold in turn as the validation set; drop --validation-split")
    if not folds and not base["validation_split"]:
        base["validation_split"] = COMPARE_VALIDATION  # configurations are chosen on it, never on the test set
    data = load_data(base, args.data_dir)
    auto = base.get("layers") is None
    check_widths(base, data)
    grid = _parse_vary(args.vary, base)
    base["auto_layers"] = auto
    if not grid:
        raise CLIError("compare needs at least one --vary KEY=V1,V2")
    views = fold_views(base, data, folds) if folds else [validation_view(base, data)]
    combos = list(itertools.product(*[[(k, v) for v in vs] for k, vs in grid]))
    for combo in combos:  # the whole grid is checked before anything trains or is written
        for view in views:
            cfg = _config(base, combo, view)
            try:
                check_widths(cfg, view)
                model = make_model(cfg, view)
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
    metric = ("r2" if base.get("data") else "mse") if regression else "accuracy"
    where = f"{folds} folds" if folds else f"a validation split of {base['validation_split']:g}"
    print(f"gpunet: compare: {len(combos)} configuration(s) x {len(views)} fold(s) x {args.seeds} seed(s); chosen "
          f"on {where} of the training data, reported on the test set too (never used for a choice)")
    results = []
    for combo in combos:
        name = ", ".join(f"{k}={':'.join(map(str, v)) if k == 'hidden' else v}" for k, v in combo)
        runs = []
        cfgs = [_config(base, combo, view) for view in views]
        seeds = [base["seed"] + s for s in range(args.seeds)]
        trained, stacked_any = _train_configuration(cfgs, views, seeds, args.record, folds)
        for f, (view, cfg, fold_runs) in enumerate(zip(views, cfgs, trained)):
            for (model, hist, seconds), seed in zip(fold_runs, seeds):
                test = _scores(model, cfg, view.test, regression)
                val = _scores(model, cfg, view.val, regression)
                run = {**test, **{f"val_{k}": v for k, v in val.items()}, "fold": f, "seed": seed, "seconds": seconds,
                       "history": {k: list(v) for k, v in hist.history.items()}}
                if args.record == "batch":
                    run["batch_loss"] = hist.batch_loss
                runs.append(run)
        row = {"name": name, "settings": dict(combo), "runs": runs, "stacked": stacked_any}
        for key in ("loss", "mse", "accuracy", "r2", "seconds"):
            _mean_std(row, runs, key)
            _mean_std(row, runs, f"val_{key}")
        results.append(row)
        shown = f"validation {metric} {row[f'val_{metric}_mean']:.4g} ± {row[f'val_{metric}_std']:.2g}, " \
                f"test {metric} {row[f'{metric}_mean']:.4g} ± {row[f'{metric}_std']:.2g}"
        print(f"{name}: {shown}, test loss {row['loss_mean']:.4g} ± {row['loss_std']:.2g}, "
              f"{row['seconds_mean']:.2f}s ± {row['seconds_std']:.2f}s" + (" per model (seeds trained together)"
                                                                            if stacked_any else ""))
    sign = -1 if metric == "mse" else 1
    best = max(results, key=lambda r: sign * r[f"val_{metric}_mean"])
    print(f"gpunet: chosen on validation: {best['name']} (validation {metric} {best[f'val_{metric}_mean']:.4g}); its "
          f"test {metric}: {best[f'{metric}_mean']:.4g} ± {best[f'{metric}_std']:.2g}")
    write_json(out / "compare.json", {"base": base, "seeds": args.seeds, "folds": folds, "metric": metric,
                                      "chosen": best["name"], "results": results})
    spread = f"over {len(views)} folds x {args.seeds} seeds" if folds else f"over {args.seeds} seeds"
    lines = [f"Mean ± std {spread}; chosen on validation: **{best['name']}**.", "",
             f"| configuration | validation {metric} | test {metric} | test loss, data term | seconds |",
             "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r[f'val_{metric}_mean']:.4g} ± {r[f'val_{metric}_std']:.2g} | "
                     f"{r[f'{metric}_mean']:.4g} ± {r[f'{metric}_std']:.2g} | {r['loss_mean']:.4g} ± "
                     f"{r['loss_std']:.2g} | {r['seconds_mean']:.2f} ± {r['seconds_std']:.2f} |")
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    plot.plot_compare(results, out / "compare.png", metric=metric, title=f"{base['dataset']}: {metric} {spread}")
    plot.plot_compare_curves(results, out / "curves.png", title=f"{base['dataset']}: loss per epoch, mean {spread}")
    print(f"gpunet: wrote {out}")
    return 0
