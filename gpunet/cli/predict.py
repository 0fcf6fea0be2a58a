"""``gpunet predict``, ``evaluate`` and ``export``: a trained model applied to a file."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import gpunet as gn
from gpunet import tabular
from gpunet._files import atomic_write
from gpunet.cli.config import CLIError, dataset_name
from gpunet.cli.data import targets
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

def _read_inputs(model, extra, path, target=None, require_target=False):

    table = tabular.read(path, target if target is not None else extra.get("target"), require_target=require_target)
    n_in = model.layer_sizes[0]
    if table.X.shape[1] != n_in:
        names = extra.get("features")
        raise CLIError(f"{path} has {table.X.shape[1]} feature columns but the model takes {n_in}"
                       + (f" ({', '.join(map(str, names))})" if names else ""))
    return table

def cmd_predict(args):

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

def cmd_evaluate(args):
    model, path, extra = _load_model(args.model, args.device)
    table = _read_inputs(model, extra, args.data, args.target, require_target=True)
    loss = model.resolve_loss(None)
    y = table.y
    if model.classes is None and y.dtype.kind in "USO":
        raise CLIError(f"{args.data}: the targets are labels but the model has no classes (it predicts values)")
    result = model.evaluate(table.X, targets(model, loss, y, model.classes is not None), loss=loss)
    metrics = {"model": str(path), "data": str(Path(args.data).resolve()), "n": len(table.X), "loss_name": loss,
               "loss": result["loss"]}
    if model.classes is not None or "accuracy" in result:
        metrics["accuracy"] = model.score(table.X, y) if model.classes is not None else result["accuracy"]
    else:
        metrics["r2"] = model.score(table.X, y)
    dest = Path(args.out) if args.out else path.parent / f"evaluation-{dataset_name(args.data)}.json"
    write_json(dest, metrics)
    shown = ", ".join(f"{k} {fmt(metrics[k])}" for k in ("loss", "accuracy", "r2") if k in metrics)
    print(f"gpunet: {Path(args.data).name} ({len(table.X)} rows): {shown}; wrote {dest}")
    return 0

def cmd_export(args):
    model, path, _ = _load_model(args.model, "cpu")
    out = model.to_onnx(args.onnx)
    print(f"wrote {out} (ONNX opset 17, {model.n_params:,} parameters, input X ({model.layer_sizes[0]} features), "
          f"output Y ({model.layer_sizes[-1]}))")
    return 0
