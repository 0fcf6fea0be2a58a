"""From a table to a task: the target's labels (as their original text), the inferred task and why, stratified
seeded splits and k folds, and the standardisation statistics."""
from __future__ import annotations

import math

import numpy as np

from gpunet.errors import DataError
from gpunet.tabular.schema import as_number, as_text


def target_column(table, target):
    """The target's name in ``table``: ``target`` as a name, an index, or None (the last column)."""
    names = table.names
    if target is None:
        if len(names) < 2:
            raise DataError(f"{table.path} has {len(names)} column; it needs feature columns and a target column")
        return names[-1]
    if str(target) in names:
        return str(target)
    try:
        idx = int(target)
    except (TypeError, ValueError):
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise DataError(f"{table.path}: no target column {target!r} (columns: {shown})") from None
    if not -len(names) <= idx < len(names):
        raise DataError(f"{table.path}: target column index {idx} out of range for {len(names)} columns")
    return names[idx % len(names)]


def infer_task(y):
    """``(task, reason)``: "classify" for text, booleans and integers with few distinct values, else "regress"."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return "regress", f"{y.shape[1]} target columns"
    if y.dtype.kind in "USOb":
        numbers = _numbers_or_none(y)
        if numbers is None:
            return "classify", "the target holds text"
        y = numbers
    distinct = len(np.unique(y))
    limit = max(2, min(50, math.isqrt(len(y)) + 1))
    if np.all(y == np.round(y)):
        if distinct <= limit:
            return "classify", f"integer target with {distinct} distinct values (at most {limit} for {len(y)} rows)"
        return "regress", f"integer target with {distinct} distinct values (over {limit} for {len(y)} rows)"
    return "regress", "the target holds non-integer numbers"


def _numbers_or_none(y):
    try:
        return np.array([float(v) for v in y.tolist()])
    except (TypeError, ValueError):
        return None


def labels(table, name, task, min_classes=2):
    """``(y, classes)``: for classification the labels as their original text, or as integers when every label
    is an integer written plainly ("7", not "007" or "7.0"), and the sorted classes; for regression float64 values
    (classes None). Missing targets are refused."""
    col = table.columns[name]
    where = f"{table.path}: target column {name!r}"
    if col.ndim == 2:
        if task == "classify":
            raise DataError(f"--task classify needs one target column, got targets of shape {col.shape}")
        y = col.astype(np.float64)
        if not np.isfinite(y).all():
            raise DataError(f"{where} has NaN or Inf")
        return y, None
    if task == "regress":
        y = as_number(col, where)
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise DataError(f"{where} is missing or infinite in {bad.size} row(s), first in row {bad[0] + 1}")
        return y, None
    text = as_text(col)
    absent = [i for i, t in enumerate(text.tolist()) if t is None]
    if absent:
        raise DataError(f"{where} is missing in {len(absent)} row(s), first in row {absent[0] + 1}")
    plain = True
    for t in set(text.tolist()):
        try:
            plain = plain and str(int(t)) == t
        except ValueError:
            plain = False
    y = np.array([int(t) for t in text.tolist()], dtype=np.int64) if plain else text.astype(str)
    classes = np.unique(y)
    if len(classes) < min_classes:
        raise DataError(f"{table.path}: the target has a single class ({classes[0]!r}); nothing to classify")
    return y, classes


def _allocate(counts, fraction):
    """Largest-remainder allocation of ``round(fraction * sum(counts))`` rows over the strata."""
    total = int(round(fraction * counts.sum()))
    if fraction and total == 0:
        total = 1
    exact = fraction * counts
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    for i in order[: total - take.sum()]:
        take[i] += 1
    return take


def split_indices(n, test_split, validation_split, seed, strata=None):
    """A seeded split of ``range(n)`` into (train, validation, test) index arrays. With ``strata`` (class labels)
    every class keeps its share in each part (as scikit-learn's ``StratifiedShuffleSplit``): iris' 150 rows with a
    0.2 test split give 10 test rows of each class."""
    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(n)
        n_test = int(round(test_split * n)) if test_split else 0
        n_val = int(round(validation_split * n)) if validation_split else 0
        n_test = max(n_test, 1) if test_split else 0
        n_val = max(n_val, 1) if validation_split else 0
        if n - n_test - n_val < 1:
            raise DataError(f"{n} rows leave no training data after a test split of {n_test} and a validation split "
                            f"of {n_val}")
        return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]
    _, inverse, counts = np.unique(np.asarray(strata), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    n_test = _allocate(counts, test_split or 0.0)
    n_val = _allocate(counts - n_test, (validation_split or 0.0) / max(1e-12, 1 - (test_split or 0.0))) \
        if validation_split else np.zeros_like(counts)
    parts = ([], [], [])
    for c in range(len(counts)):
        rows = rng.permutation(np.flatnonzero(inverse == c))
        parts[2].append(rows[:n_test[c]])
        parts[1].append(rows[n_test[c]:n_test[c] + n_val[c]])
        parts[0].append(rows[n_test[c] + n_val[c]:])
    tr, va, te = (rng.permutation(np.concatenate(p)) for p in parts)
    if len(tr) < 1:
        raise DataError(f"{n} rows leave no training data after a test split of {len(te)} and a validation split "
                        f"of {len(va)}")
    return tr, va, te


def folds(rows, k, seed, strata=None):
    """``k`` (train, validation) index pairs over ``rows``, stratified by ``strata`` (indexed like ``rows``)."""
    rng = np.random.default_rng(seed)
    if k < 2 or k > len(rows):
        raise DataError(f"--folds {k}: needs 2 <= K <= {len(rows)} (the rows outside the test split)")
    assign = np.empty(len(rows), dtype=np.int64)
    if strata is None:
        assign[rng.permutation(len(rows))] = np.arange(len(rows)) % k
    else:
        _, inverse = np.unique(np.asarray(strata), return_inverse=True)
        start = 0
        for c in range(inverse.max() + 1):
            members = rng.permutation(np.flatnonzero(inverse.reshape(-1) == c))
            assign[members] = (np.arange(len(members)) + start) % k
            start += len(members)
    return [(rows[assign != i], rows[assign == i]) for i in range(k)]


def standardisation(X):
    """Mean and scale (population std, 1 where a column is constant), as scikit-learn's StandardScaler."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[~(scale > 0)] = 1.0
    return mean, scale
