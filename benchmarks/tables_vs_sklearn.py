"""Real tables through `gpunet train --data` (defaults, no code) against scikit-learn's MLP and
HistGradientBoosting on the same stratified split (gpunet.tabular.split_indices, --split-seed 0, test 0.2): sklearn's
bundled iris, wine, breast_cancer, digits and diabetes written to CSV with their column names, and a penguins-like
table with missing cells and text features (tests/fixtures/penguins_like.py). The scikit-learn models see the same
preprocessing gpunet does: median imputation with indicators, one-hot encoding, standardisation (for the MLP).

    python benchmarks/tables_vs_sklearn.py [--out benchmarks/results/tables_vs_sklearn.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from gpunet import tabular  # noqa: E402


def tables(folder):
    from sklearn import datasets

    out = {}
    for name, target in (("iris", "species"), ("wine", "cultivar"), ("breast_cancer", "diagnosis"),
                         ("digits", "digit"), ("diabetes", "progression")):
        d = getattr(datasets, f"load_{name}")(as_frame=True)
        frame = d.frame.rename(columns={"target": target})
        if name in ("iris", "wine", "breast_cancer"):
            frame[target] = np.asarray(d.target_names)[d.target]
        path = folder / f"{name}.csv"
        frame.to_csv(path, index=False)
        out[name] = (path, target)
    import penguins_like

    out["penguins_like"] = (penguins_like.write(folder / "penguins_like.csv"), "species")
    return out


def sklearn_scores(path, target, seed=0):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    table = tabular.read(path, text_columns=[target])
    task, _ = tabular.infer_task(table.columns[target])
    y, classes = tabular.labels(table, target, task)
    tr, _, te = tabular.split_indices(len(y), 0.2, 0.0, seed, y if classes is not None else None)
    frame = pd.read_csv(path, dtype={target: str})
    X = frame.drop(columns=[target])
    text = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]  # pandas 3: "str", not object
    num = [c for c in X.columns if c not in text]
    pre = ColumnTransformer([("num", SimpleImputer(strategy="median", add_indicator=True), num),
                             ("cat", OneHotEncoder(handle_unknown="ignore", max_categories=20), text)])
    scores = {}
    clf = classes is not None
    for label, model in (
            ("sklearn_mlp", make_pipeline(pre, StandardScaler(), (MLPClassifier if clf else MLPRegressor)(
                hidden_layer_sizes=(64, 64), max_iter=1000, random_state=seed))),
            ("sklearn_hgb", make_pipeline(pre, (HistGradientBoostingClassifier if clf else
                                                HistGradientBoostingRegressor)(random_state=seed)))):
        model.fit(X.iloc[tr], y[tr])
        scores[label] = float(model.score(X.iloc[te], y[te]))
    return scores, "accuracy" if clf else "r2"


def gpunet_score(path, target, out):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "gpunet", "train", "--data", str(path), "--target", target,
                           "--device", "cpu", "--quiet", "--out", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    m = json.loads((out / "metrics.json").read_text())
    return m.get("test_accuracy", m.get("test_r2"))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tables_vs_sklearn.json"))
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (path, target) in tables(tmp).items():
            scores, metric = sklearn_scores(path, target)
            scores["gpunet"] = gpunet_score(path, target, tmp / f"run-{name}")
            best = max(scores["sklearn_mlp"], scores["sklearn_hgb"])
            scores.update(metric=metric, best_sklearn=best, gap_points=100 * (best - scores["gpunet"]))
            rows[name] = scores
            print(f"{name:>14} ({metric}): gpunet {scores['gpunet']:.4f}  sklearn MLP {scores['sklearn_mlp']:.4f}  "
                  f"HGB {scores['sklearn_hgb']:.4f}  gap {scores['gap_points']:+.2f} points")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
