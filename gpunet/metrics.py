"""Host-side scores with scikit-learn's definitions (one copy, used by ``MLP.score``, the estimators and the
CLI): the coefficient of determination and accuracy."""
from __future__ import annotations

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
