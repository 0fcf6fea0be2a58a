"""Plots written straight to PNG with matplotlib's Agg canvas (headless, no global pyplot state).

Each function takes host data and a path, writes the figure atomically and returns the path.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet._files import atomic_write


def _figure(ncols=1, width=6.4, height=4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (import cost only when plotting)
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width * ncols, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):

    with atomic_write(path) as f:
        fig.savefig(f, format="png")
    return str(path)


def _integer_epochs(ax):
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_history(history, path, title="training", val_label="validation"):
    """Loss per epoch (log scale) for training and validation; accuracy beside it when present.
    ``val_label`` names the second curve ("test" when the held-out set is the test set)."""
    h = history.history if hasattr(history, "history") else history
    has_acc = "accuracy" in h
    fig = _figure(2 if has_acc else 1)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    epochs = np.arange(1, len(h.get("loss", [])) + 1)
    ax = axes[0]
    for key, label in (("loss", "training"), ("val_loss", val_label)):
        if h.get(key):
            ax.plot(epochs, h[key], marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    _integer_epochs(ax)
    if h.get("loss") and min(min(h["loss"]), min(h.get("val_loss") or [1])) > 0:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if has_acc:
        ax = axes[1]
        for key, label in (("accuracy", "training"), ("val_accuracy", val_label)):
            if h.get(key):
                ax.plot(epochs, h[key], marker="o", ms=3, label=label)
        ax.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
        _integer_epochs(ax)
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
    # data and fit in distinct colours (a light and a dark shade of one hue pair per output)
    pairs = [("tab:gray", "tab:red"), ("tab:cyan", "tab:blue"), ("tab:olive", "tab:purple"), ("tab:pink", "tab:green")]
    for j in range(y.shape[1]):
        name = labels[j] if labels else (f"y{j}" if y.shape[1] > 1 else "y")
        data_colour, fit_colour = pairs[j % len(pairs)]
        ax.scatter(X[:, 0], y[:, j], s=6, alpha=0.5, color=data_colour, label=f"data: {name}", zorder=1)
        ax.plot(grid[:, 0], pred[:, j], lw=2, color=fit_colour, label=f"network: {name}", zorder=2)
    ax.set(xlabel="x", ylabel="y", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def confusion_matrix(y_true, y_pred, n_classes):
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def plot_confusion(y_true, y_pred, path, n_classes=10, title="confusion matrix", labels=None):
    """Counts of (true, predicted) class indices on a linear colour scale, each cell's count written in it;
    ``labels`` names the classes on the axes."""
    m = confusion_matrix(y_true, y_pred, n_classes)
    size = min(10.0, 4.0 + 0.45 * n_classes)
    fig = _figure(width=size + 1.0, height=size)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
    fontsize = 11 if n_classes <= 6 else (9 if n_classes <= 12 else 7)
    for i in range(n_classes):
        for j in range(n_classes):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"{title} (accuracy {np.trace(m) / max(m.sum(), 1):.2%})",
           xticks=range(n_classes), yticks=range(n_classes))
    if labels is not None:
        ax.set_xticklabels([str(c) for c in labels], rotation=30 if n_classes > 4 else 0, ha="right" if n_classes > 4 else "center")
        ax.set_yticklabels([str(c) for c in labels])
    fig.colorbar(im, ax=ax, label="count")
    return _save(fig, path)


def plot_calibration(y_true, proba, path, labels=None, title="calibration", bins=10):
    """Reliability curve: per bin of predicted probability, the observed frequency (binary: of the positive class;
    several classes: of the predicted class being right), against the diagonal."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if p.shape[1] == 1:
        p = np.hstack([1 - p, p])
    if p.shape[1] == 2:
        conf, hit, what = p[:, 1], (y == 1).astype(float), f"P({labels[1] if labels else 1})"
    else:
        conf, hit, what = p.max(axis=1), (p.argmax(axis=1) == y).astype(float), "confidence of the predicted class"
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    xs, ys, ns = [], [], []
    for b in range(bins):
        sel = which == b
        if sel.any():
            xs.append(conf[sel].mean())
            ys.append(hit[sel].mean())
            ns.append(int(sel.sum()))
    fig = _figure(width=5.2, height=4.8)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="tab:red", lw=1.2, label="perfectly calibrated")
    ax.plot(xs, ys, marker="o", color="tab:blue", label="model")
    for x, yv, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, yv), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"predicted {what}", ylabel="observed frequency", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    return _save(fig, path)


def plot_residuals(y_true, y_pred, path, title="residuals", name=None):
    """Residuals (true - predicted) against the prediction, first output."""
    t = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)[:, 0]
    p = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)[:, 0]
    fig = _figure(width=5.6, height=4.4)
    ax = fig.subplots()
    ax.axhline(0.0, color="tab:red", lw=1.2)
    ax.scatter(p, t - p, s=10, alpha=0.6, color="tab:blue")
    label = name or "y"
    ax.set(xlabel=f"predicted {label}", ylabel=f"true - predicted {label}",
           title=f"{title} (RMSE {np.sqrt(np.mean((t - p) ** 2)):.4g})")
    ax.grid(True, alpha=0.3)
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


def plot_scatter(y_true, y_pred, path, title="predicted vs true", name=None):
    """Predicted against true values (one panel per output) with the diagonal y = x."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    k = y_true.shape[1]
    fig = _figure(ncols=min(k, 3), width=4.6, height=4.4)
    axes = fig.subplots(1, min(k, 3), squeeze=False)[0]
    for j, ax in enumerate(axes):
        lo = min(y_true[:, j].min(), y_pred[:, j].min())
        hi = max(y_true[:, j].max(), y_pred[:, j].max())
        ax.plot([lo, hi], [lo, hi], color="tab:red", lw=1.5, label="y = x", zorder=2)
        ax.scatter(y_true[:, j], y_pred[:, j], s=10, alpha=0.6, color="tab:blue", label="samples", zorder=1)
        label = name or "y"
        label = label if k == 1 else f"{label}[{j}]"
        ss = ((y_true[:, j] - y_true[:, j].mean()) ** 2).sum()
        r2 = 1 - ((y_true[:, j] - y_pred[:, j]) ** 2).sum() / ss if ss > 0 else float("nan")
        ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}", title=f"{title} (R² {r2:.3f})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_compare(results, path, metric="loss", title="comparison"):
    """Grouped bars of mean +- std per configuration: validation and test ``metric`` (``results``: dicts with
    ``name`` and ``<metric>_mean``/``_std``, and ``val_<metric>_mean``/``_std`` where a validation set was scored)."""
    names = [r["name"] for r in results]
    series = [(label, prefix) for label, prefix in (("validation", "val_"), ("test", ""))
              if all(f"{prefix}{metric}_mean" in r for r in results)]
    fig = _figure(width=max(6.4, 1.3 * len(names)))
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for i, (label, prefix) in enumerate(series):
        means = [r[f"{prefix}{metric}_mean"] for r in results]
        stds = [r[f"{prefix}{metric}_std"] for r in results]
        xs = np.arange(len(names)) + (i - (len(series) - 1) / 2) * width
        bars = ax.bar(xs, means, width, yerr=stds, capsize=4, alpha=0.85, label=label)
        ax.bar_label(bars, labels=[f"{m:.3g}" for m in means], fontsize=7, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=title)
    if metric.endswith("loss") and all(r[f"{p}{metric}_mean"] > 0 for r in results for _, p in series):
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_compare_curves(results, path, title="loss per epoch"):
    """Every configuration's mean training loss per epoch (solid) and validation loss (dashed, where recorded)
    over its runs, in one plot."""
    fig = _figure(width=7.2, height=4.6)
    ax = fig.subplots()
    positive = True
    for i, r in enumerate(results):
        colour = f"C{i % 10}"
        for key, style in (("loss", "-"), ("val_loss", "--")):
            curves = [run["history"].get(key) for run in r["runs"] if run.get("history", {}).get(key)]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            positive = positive and bool((mean > 0).all())
            ax.plot(np.arange(1, n + 1), mean, style, color=colour,
                    label=f"{r['name']} ({'training' if key == 'loss' else 'validation'})")
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    _integer_epochs(ax)
    if positive and ax.lines:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_throughput(rows, path, title="training throughput"):
    """Samples/s against batch size, one line per implementation (``rows``: dicts with ``impl``,
    ``batch_size``, ``samples_per_s``)."""
    fig = _figure()
    ax = fig.subplots()
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    sizes = sorted({r["batch_size"] for r in rows})
    if len(sizes) == 1:  # one batch size: a labelled bar per implementation reads better than lone dots
        vals = [max((r["samples_per_s"] or 0) for r in rows if r["impl"] == impl) for impl in impls]
        bars = ax.bar(range(len(impls)), vals, color="tab:blue", alpha=0.85)
        ax.bar_label(bars, [f"{v:,.0f}" for v in vals], fontsize=8)
        ax.set_xticks(range(len(impls)), impls, rotation=20, ha="right")
        ax.set(ylabel="samples / s", title=f"{title} (batch {sizes[0]})")
        ax.grid(True, axis="y", alpha=0.3)
        return _save(fig, path)
    for impl in impls:
        pts = sorted((r["batch_size"], r["samples_per_s"]) for r in rows if r["impl"] == impl and r.get("samples_per_s"))
        if pts:
            ax.plot(*zip(*pts), marker="o", label=impl)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples / s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
