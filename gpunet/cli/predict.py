"""``gpunet predict``, ``evaluate`` and ``export``: a trained model applied to a file."""
from __future__ import annotations

import csv
import io
import sys
import warnings
from pathlib import Path

import numpy as np

import gpunet as gn
from gpunet import tabular
from gpunet._files import atomic_write
from gpunet.cli.config import CLIError
from gpunet.cli.data import score_report, targets
from gpunet.cli.rundir import fmt, write_json


def _load_model(spec, device):

    path = Path(spec)
    if path.is_dir():
        path = path / "model.npz"
        if not path.is_file():
            raise CLIError(f"--model {spec}: no model.npz in that folder (was it written by 'gpunet train'?)")
    model = gn.load(path, device=device or "auto")
    extra = (getattr(model, "metadata", {}) or {}).get("extra") or {}
    return model, path, extra if isinstance(extra, dict) else {}

def _read_inputs(model, extra, path, target=None):
    """``(X, table)``: the file's table, which a model with a schema reads by name; for a model without one
    (built-in datasets, version-2 files) the numeric columns other than ``target``, by position."""
    target = target if target is not None else (model.schema.target if model.schema is not None else extra.get("target"))
    table = tabular.read(path, text_columns=[target] if target is not None else [])
    for note in table.notes:
        print(f"gpunet: note: {note}", file=sys.stderr)
    if model.schema is not None:
        return table, table, target
    names = [n for n in table.names if n != target]
    n_in = model.layer_sizes[0]
    if len(names) != n_in:
        known = extra.get("features")
        raise CLIError(f"{path} has {len(names)} feature columns but the model takes {n_in}"
                       + (f" ({', '.join(map(str, known))})" if known else ""))
    cols = [tabular.schema.as_number(table.columns[n], f"{path}: column {n!r}") for n in names]
    X = np.column_stack(cols) if cols else np.empty((len(table), 0))
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        raise CLIError(f"{path}: column {names[bad[0][1]]!r} is missing or not finite in row {bad[0][0] + 1} (this "
                       f"model has no schema to impute it)")
    return X, table, target

def cmd_predict(args):

    model, _, extra = _load_model(args.model, args.device)
    X, table, _ = _read_inputs(model, extra, args.data)
    keep = args.keep or []
    absent = [k for k in keep if k not in table.columns]
    if absent:
        raise CLIError(f"--keep: {args.data} has no column(s) {', '.join(map(repr, absent))}")
    if args.proba and model.output_activation not in ("softmax", "sigmoid"):
        raise CLIError("--proba needs a classifier (softmax or sigmoid output); this model predicts values")
    classify = model.classes is not None or model.output_activation in ("softmax", "sigmoid")
    out = model.predict(X)
    if classify:  # one pass through the model: probabilities as predict_proba gives them
        p = np.hstack([1.0 - out, out]) if out.shape[1] == 1 and model.output_activation == "sigmoid" else out
        idx = p.argmax(axis=1)
        labels = idx if model.classes is None else model.classes[idx]
        header, rows = ["prediction"], [[v] for v in labels.tolist()]
        if args.proba:
            names = model.classes.tolist() if model.classes is not None else list(range(p.shape[1]))
            header += [f"p({c})" for c in names]
            rows = [r + [f"{v:.6g}" for v in pr] for r, pr in zip(rows, p)]
    else:
        name = extra.get("target") or "prediction"
        header = [str(name)] if out.shape[1] == 1 else [f"{name}_{j}" for j in range(out.shape[1])]
        rows = [[f"{v:.8g}" for v in r] for r in out]
    if keep:
        kept = [tabular.as_text(table.columns[k]).tolist() for k in keep]
        header = list(keep) + header
        rows = [["" if c[i] is None else c[i] for c in kept] + r for i, r in enumerate(rows)]
    buf = io.StringIO()
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

def _overlap_warning(model, X, path):
    if model.schema is None or not isinstance(X, tabular.RawTable):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tabular.TableWarning)
        found = model.schema.overlap(model.schema.codes(X, str(path), model.dtype))
    if not found or not found[0]:
        return None
    hits, checked, exact = found
    share = hits / max(checked, 1)
    what = (f"{hits} of its {checked} rows are rows of the model's training split" if exact else
            f"about {share:.0%} of its rows are rows of the model's training split ({hits} of {checked} sampled)")
    print(f"gpunet: warning: {path}: {what}; these scores are not a test of new data", file=sys.stderr)
    return round(share, 4)

def cmd_evaluate(args):
    model, path, extra = _load_model(args.model, args.device)
    X, table, target = _read_inputs(model, extra, args.data, args.target)
    if target is None or target not in table.columns:
        raise CLIError(f"{args.data}: no target column {target!r} (give --target COL)")
    task = "classify" if model.classes is not None else "regress"
    try:
        y, _ = tabular.labels(table, target, task, min_classes=1)
    except ValueError:
        if model.classes is None and table.columns[target].dtype == object:
            raise CLIError(f"{args.data}: the targets are labels but the model has no classes (it predicts "
                           f"values)") from None
        raise
    loss = model.resolve_loss(None)
    overlap = _overlap_warning(model, X, args.data)
    result = model.evaluate(X, targets(model, loss, y, model.classes is not None), loss=loss)
    metrics = {"model": str(path), "data": str(Path(args.data).resolve()), "n": len(y), "loss_name": loss,
               "loss": result["loss"]}
    if model.classes is not None or "accuracy" in result:
        metrics["accuracy"] = model.score(X, y) if model.classes is not None else result["accuracy"]
    else:
        metrics["r2"] = model.score(X, y)
    metrics.update({k: v for k, v in score_report(model, X, y).items() if k not in metrics})
    if overlap is not None:
        metrics["training_rows_share"] = overlap
    shown = ", ".join(f"{k} {fmt(metrics[k])}" for k in ("loss", "accuracy", "balanced_accuracy", "roc_auc", "r2",
                                                         "mae", "rmse") if isinstance(metrics.get(k), float))
    if args.out:
        write_json(Path(args.out), metrics)
    print(f"gpunet: {Path(args.data).name} ({len(y)} rows): {shown}"
          + (f"; wrote {args.out}" if args.out else " (--out FILE.json to keep the metrics)"))
    return 0

def cmd_export(args):
    model, path, _ = _load_model(args.model, "cpu")
    out = model.to_onnx(args.onnx)
    if model.schema is not None:
        num, cat = model.schema.numeric_names(), model.schema.categorical_names()
        shown = (f"input X ({len(num)} numeric columns, NaN where missing)" if num else "") + \
            (f"{', ' if num else ''}input C ({len(cat)} text columns: {', '.join(cat)}; '' where missing)" if cat else "")
    else:
        shown = f"input X ({model.layer_sizes[0]} features)"
    print(f"wrote {out} (ONNX opset 17, {model.n_params:,} parameters, {shown}, output Y ({model.layer_sizes[-1]}))")
    return 0
