"""gpunet.sklearn.MLPClassifier against scikit-learn's MLPClassifier: same data, same parameters, all three solvers.

    python benchmarks/sklearn_compare.py [--seeds 3] [--quick]

Both run a fixed number of iterations (``tol=0``, so neither stops early) with ``alpha=1e-4``, batch 200 for
Adam and SGD (momentum 0.9, Nesterov, scikit-learn's defaults) and the same hidden layers; L-BFGS runs
``max_iter`` full-batch iterations. Data standardised for digits (float64), [0, 1] pixels for MNIST (float32:
both libraries then compute in float32). Median fit time over the seeds and the mean test accuracy; the
ratio is scikit-learn's time over gpunet's.
"""
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
import scipy.optimize
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from sklearn.preprocessing import StandardScaler

import gpunet as gn
from gpunet.sklearn import MLPClassifier as GnMLP
from gpunet.training import lbfgs


def run(cls, data, params, seeds=(0, 1, 2), **extra):
    Xtr, Xte, ytr, yte = data
    cls(random_state=0, **{**params, "max_iter": 1}, **extra).fit(Xtr[:400], ytr[:400])  # warm-up: compilation, caches
    times, accs = [], []
    for s in seeds:
        clf = cls(random_state=s, **params, **extra)
        t = time.perf_counter()
        clf.fit(Xtr, ytr)
        times.append(time.perf_counter() - t)
        accs.append(clf.score(Xte, yte))
    return statistics.median(times), float(np.mean(accs))


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not a measurement)")
    ap.add_argument("--solvers", default="adam,sgd,lbfgs", help="comma-separated solvers to run")
    args = ap.parse_args()
    seeds = tuple(range(args.seeds))
    q = 5 if args.quick else 1
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    sc = StandardScaler().fit(Xtr)
    digits = (sc.transform(Xtr), sc.transform(Xte), ytr, yte)
    (Xm, ym), (Xmt, ymt) = gn.datasets.load_mnist()
    mnist = (Xm[:20000], Xmt, ym[:20000], ymt)
    rows = []
    configs = []
    for solver, it_digits, it_mnist in (("adam", 50, 10), ("sgd", 50, 10), ("lbfgs", 200, 100)):
        if solver not in args.solvers.split(","):
            continue
        configs.append(("digits", digits, dict(solver=solver, hidden_layer_sizes=(100,), max_iter=it_digits // q,
                                               batch_size=200, tol=0.0, alpha=1e-4)))
        configs.append(("mnist-20k", mnist, dict(solver=solver, hidden_layer_sizes=(256, 128),
                                                 max_iter=max(it_mnist // q, 2), batch_size=200, tol=0.0, alpha=1e-4)))
    for name, data, params in configs:
        if params["solver"] == "sgd":
            params["learning_rate_init"] = 0.01
        sk_t, sk_a = run(SkMLP, data, params, seeds)
        gn_t, gn_a = run(GnMLP, data, params, seeds, device="auto")
        row = {"data": name, **{k: str(v) for k, v in params.items()}, "sklearn_s": sk_t, "sklearn_acc": sk_a,
               "gpunet_s": gn_t, "gpunet_acc": gn_a, "speedup": sk_t / gn_t}
        line = (f"{name:10s} {params['solver']:6s} sklearn {sk_t:7.2f}s acc {sk_a:.4f} | gpunet {gn_t:7.2f}s acc "
                f"{gn_a:.4f} | {sk_t / gn_t:.2f}x")
        if params["solver"] == "lbfgs":
            # gpunet runs SciPy's own OpenBLAS pool at one thread during L-BFGS (gpunet/training/lbfgs.py);
            # scikit-learn with the same limit shows what is left once that contention is gone for both
            controller, paths = lbfgs.scipy_blas_pools(scipy.optimize)
            if controller is not None and paths:  # SciPy has a BLAS of its own to limit
                with lbfgs.one_scipy_blas_thread(scipy.optimize):
                    fair_t, _ = run(SkMLP, data, params, seeds)
                row.update(sklearn_scipy_blas_1_s=fair_t, speedup_vs_limited_sklearn=fair_t / gn_t)
                line += f" | sklearn with SciPy's BLAS at 1 thread {fair_t:7.2f}s: {fair_t / gn_t:.2f}x"
        rows.append(row)
        print(line, flush=True)
    print(json.dumps({"machine": _machine(), "rows": rows}, indent=1))


def _machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
