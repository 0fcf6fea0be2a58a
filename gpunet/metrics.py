"""Host-side scores with scikit-learn's definitions (one copy, used by ``MLP.score``, the estimators and the
CLI): the coefficient of determination and accuracy."""
from __future__ import annotations

import warnings

import numpy as np


def r2_score(y_true, y_pred):
    """``sklearn.metrics.r2_score`` with ``multioutput="uniform_average"``: ``1 - SS_res / SS_tot`` per
    output, averaged. A constant target scores 1.0 when predicted exactly and 0.0 otherwise (scikit-learn's
    ``force_finite=True``)."""
    Y = np.asarray(y_true, dtype=np.float64)
    P = np.asarray(y_pred, dtype=np.float64)
    if Y.ndim == 1:
        Y, P = Y[:, None], np.reshape(P, (-1, 1))
    ss_res = ((Y - P) ** 2).sum(axis=0)
    ss_tot = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
    safe = np.where(ss_tot > 0, ss_tot, 1.0)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / safe, np.where(ss_res == 0, 1.0, 0.0))
    return float(r2.mean())


def accuracy(y_true, y_pred):
    """The fraction of equal entries (rows of labels, or entries of multi-label 0/1 rows all equal per row)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim == 2:
        return float(np.mean(np.all(t == p, axis=1)))
    return float(np.mean(t == p))


def _sklearn_metrics():
    """scikit-learn's metrics module when it is installed (an optional extra), else None: the NumPy definitions
    below are then used, and tests/unit/test_metrics.py holds them equal to scikit-learn's."""
    try:
        import sklearn.metrics as skm  # noqa: PLC0415  (optional extra gpunet[sklearn])
    except ImportError:
        return None
    return skm


def _binary_auc(positive, score):
    """ROC AUC as the Mann-Whitney statistic with ties counted half (scikit-learn's value)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score, dtype=np.float64)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_report(y_true, proba, names=None, use_sklearn=True):
    """Accuracy, balanced accuracy, log loss, ROC AUC (binary, or one-vs-rest macro over the classes present), and
    per class precision, recall, F1 and support, for class indices ``y_true`` and probabilities ``proba`` (n, k)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if p.shape[1] == 1:
        p = np.hstack([1 - p, p])
    k = p.shape[1]
    names = [str(c) for c in (names if names is not None else range(k))]
    pred = p.argmax(axis=1)
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (y, pred), 1)
    tp = np.diag(m).astype(np.float64)
    support, predicted = m.sum(axis=1), m.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
        recall = np.where(support > 0, tp / np.maximum(support, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    present = support > 0
    eps = np.finfo(np.float64).eps
    report = {
        "accuracy": float(tp.sum() / max(len(y), 1)),
        "balanced_accuracy": float(recall[present].mean()),
        "log_loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0)))),
        "macro_f1": float(f1[present].mean()),
    }
    if k == 2:
        auc = _binary_auc(y == 1, p[:, 1])
    else:
        aucs = [_binary_auc(y == c, p[:, c]) for c in range(k) if present[c]]
        auc = float(np.mean(aucs)) if aucs and None not in aucs and present.all() else None
    report["roc_auc"] = auc
    skm = _sklearn_metrics() if use_sklearn else None
    if skm is not None:
        with warnings.catch_warnings():  # classes absent from a small test split: the values below say it already
            warnings.simplefilter("ignore")
            return _sklearn_classification(skm, report, y, pred, p, k, names, present, support, auc)
    return _finish(report, names, precision, recall, f1, support, m)


def _sklearn_classification(skm, report, y, pred, p, k, names, present, support, auc):
    labels = list(range(k))
    q = p / p.sum(axis=1, keepdims=True)
    report["balanced_accuracy"] = float(skm.balanced_accuracy_score(y, pred))
    report["log_loss"] = float(skm.log_loss(y, q, labels=labels))
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    report["macro_f1"] = float(np.mean(f1[present]))
    if auc is not None:
        report["roc_auc"] = float(skm.roc_auc_score(y, p[:, 1]) if k == 2 else
                                  skm.roc_auc_score(y, q, multi_class="ovr", labels=labels))
    m = skm.confusion_matrix(y, pred, labels=labels)
    return _finish(report, names, precision, recall, f1, support, m)


def _finish(report, names, precision, recall, f1, support, m):
    report["per_class"] = {n: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                               "support": int(support[c])} for c, n in enumerate(names)}
    report["confusion"] = m.tolist()
    return report


def regression_report(y_true, y_pred):
    """MAE, RMSE and R² (averaged uniformly over outputs, as scikit-learn)."""
    Y = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    P = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    return {"mae": float(np.mean(np.abs(Y - P))), "rmse": float(np.mean(np.sqrt(np.mean((Y - P) ** 2, axis=0)))),
            "r2": r2_score(Y, P)}
