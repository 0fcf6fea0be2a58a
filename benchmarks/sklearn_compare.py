"""gpunet.sklearn.MLPClassifier against scikit-learn's MLPClassifier: same data, same parameters.

    python benchmarks/sklearn_compare.py

Both run a fixed number of epochs (``tol=0``, so neither stops early) with Adam, ``alpha=1e-4``,
batch 200 and the same hidden layers; data standardised for digits, [0, 1] pixels for MNIST.
Median fit time of 3 runs (different seeds) and the mean test accuracy.
"""
import json
import os
import platform
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SkMLP
from sklearn.preprocessing import StandardScaler

import gpunet as gn
from gpunet.sklearn import MLPClassifier as GnMLP


def run(cls, data, params, seeds=(0, 1, 2), **extra):
    Xtr, Xte, ytr, yte = data
    times, accs = [], []
    for s in seeds:
        clf = cls(random_state=s, **params, **extra)
        t = time.perf_counter()
        clf.fit(Xtr, ytr)
        times.append(time.perf_counter() - t)
        accs.append(clf.score(Xte, yte))
    return statistics.median(times), float(np.mean(accs))


def main():
    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    sc = StandardScaler().fit(Xtr)
    digits = (sc.transform(Xtr), sc.transform(Xte), ytr, yte)
    (Xm, ym), (Xmt, ymt) = gn.datasets.load_mnist()
    mnist = (Xm[:20000], Xmt, ym[:20000], ymt)
    rows = []
    for name, data, params in (
            ("digits", digits, dict(hidden_layer_sizes=(100,), max_iter=50, batch_size=200, tol=0.0, alpha=1e-4)),
            ("mnist-20k", mnist, dict(hidden_layer_sizes=(256, 128), max_iter=10, batch_size=200, tol=0.0, alpha=1e-4))):
        sk_t, sk_a = run(SkMLP, data, params)
        gn_t, gn_a = run(GnMLP, data, params, device="auto")
        rows.append({"data": name, **{k: str(v) for k, v in params.items()}, "sklearn_s": sk_t, "sklearn_acc": sk_a,
                     "gpunet_s": gn_t, "gpunet_acc": gn_a, "speedup": sk_t / gn_t})
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
