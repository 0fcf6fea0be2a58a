"""Plots written straight to PNG with matplotlib's Agg canvas (headless, no global pyplot state).

Each function takes host data and a path, writes the figure atomically and returns the path.
"""
from __future__ import annotations

import math

import numpy as np


def _figure(ncols=1, width=6.4, height=4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (import cost only when plotting)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    from gpunet.io import atomic_write  # noqa: PLC0415

    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return str(path)


def plot_history(history, path, title="training"):
    """Loss per epoch (log scale) for training and validation; accuracy beside it when present."""
    h = history.history if hasattr(history, "history") else history
    has_acc = "accuracy" in h
    fig = _figure(2 if has_acc else 1)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    epochs = np.arange(1, len(h.get("loss", [])) + 1)
    ax = axes[0]
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        if h.get(key):
            ax.plot(epochs, h[key], marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    if h.get("loss") and min(min(h["loss"]), min(h.get("val_loss") or [1])) > 0:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if has_acc:
        ax = axes[1]
        for key, label in (("accuracy", "training"), ("val_accuracy", "validation")):
            if h.get(key):
                ax.plot(epochs, h[key], marker="o", ms=3, label=label)
        ax.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
        ax.grid(True, alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_fit(model, X, y, path, title="fit", labels=None):
    """For one input feature: the data as dots and the network's prediction as lines, per output."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(X), -1)
    if X.shape[1] != 1:
        raise ValueError("plot_fit needs a single input feature")
    grid = np.linspace(X.min(), X.max(), 500).reshape(-1, 1)
    pred = model.predict(grid)
    fig = _figure()
    ax = fig.subplots()
    for j in range(y.shape[1]):
        name = labels[j] if labels else (f"y{j}" if y.shape[1] > 1 else "y")
        line = ax.plot(grid[:, 0], pred[:, j], lw=2, label=f"network: {name}")[0]
        ax.scatter(X[:, 0], y[:, j], s=4, alpha=0.35, color=line.get_color(), label=f"data: {name}")
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def confusion_matrix(y_true, y_pred, n_classes):
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def plot_confusion(y_true, y_pred, path, n_classes=10, title="confusion matrix"):
    m = confusion_matrix(y_true, y_pred, n_classes)
    fig = _figure(width=6.0, height=5.4)
    ax = fig.subplots()
    im = ax.imshow(np.log1p(m), cmap="Blues")
    for i in range(n_classes):
        for j in range(n_classes):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 3 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{title} (accuracy {np.trace(m) / max(m.sum(), 1):.2%})",
           xticks=range(n_classes), yticks=range(n_classes))
    fig.colorbar(im, ax=ax, label="log(1 + count)")
    return _save(fig, path)


def plot_misclassified(X, y_true, y_pred, path, n=25, shape=(28, 28), title="misclassified"):
    wrong = np.flatnonzero(np.asarray(y_true) != np.asarray(y_pred))[:n]
    cols = max(1, min(5, len(wrong)))
    rows = max(1, math.ceil(len(wrong) / cols))
    fig = _figure(width=1.6 * cols, height=1.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), wrong):
        ax.imshow(np.asarray(X[i]).reshape(shape), cmap="gray_r")
        ax.set_title(f"true {y_true[i]}, got {y_pred[i]}", fontsize=8)
    fig.suptitle(f"{title}: {len(wrong)} shown")
    return _save(fig, path)


def plot_compare(results, path, metric="loss", title="comparison"):
    """Bar chart of mean +- std of ``metric`` per configuration (``results``: list of dicts with
    ``name``, ``<metric>_mean``, ``<metric>_std``)."""
    names = [r["name"] for r in results]
    means = [r[f"{metric}_mean"] for r in results]
    stds = [r[f"{metric}_std"] for r in results]
    fig = _figure(width=max(6.4, 1.1 * len(names)))
    ax = fig.subplots()
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=title)
    if metric.endswith("loss") and min(means) > 0:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_throughput(rows, path, title="training throughput"):
    """Samples/s against batch size, one line per implementation (``rows``: dicts with ``impl``,
    ``batch_size``, ``samples_per_s``)."""
    fig = _figure()
    ax = fig.subplots()
    for impl in dict.fromkeys(r["impl"] for r in rows):
        pts = sorted((r["batch_size"], r["samples_per_s"]) for r in rows if r["impl"] == impl and r.get("samples_per_s"))
        if pts:
            ax.plot(*zip(*pts), marker="o", label=impl)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples / s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
