"""Data for many models at once (:class:`gpunet.MLPStack`): one data set shared by every model, or one per model
(k-fold cross-validation: every fold x seed one model), each uploaded through its model's own door
(:meth:`gpunet.MLP.upload`, with that model's standardisation) and laid out on the device as blocks of rows,
one per distinct data set and standardisation. Services on models passed in: nothing here imports the model."""
from __future__ import annotations

import numpy as np


def is_2d(x):
    """Whether ``x`` is a 2-D array or a list of rows (one data set, not a row or a list of data sets)."""
    ndim = getattr(x, "ndim", None)
    if ndim is not None:
        return ndim == 2
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (list, tuple)) and \
        (len(x[0]) == 0 or not isinstance(x[0][0], (list, tuple)))


def per_model(X, K, what):
    """Whether ``X`` is a list of per-model arrays (2-D each) rather than one array for every model (a list of
    rows is one array: its items are rows, not 2-D)."""
    if not isinstance(X, (list, tuple)) or not X or not any(is_2d(x) for x in X):
        return False
    for k, x in enumerate(X):
        if not is_2d(x):
            raise ValueError(f"{what} is a list of per-model arrays, but {what}[{k}] is not 2-D (got "
                             f"{type(x).__name__} of shape {getattr(x, 'shape', None) or np.shape(x)})")
    if len(X) != K:
        raise ValueError(f"{what} is a list of {len(X)} arrays for a stack of {K} models: give one per "
                         f"model, or one array for all of them")
    return True


def groups(items, models):
    """The models grouped by their data and standardisation: ``[(item, [k, ...])]`` in model order (models
    given the same arrays and standardisation, e.g. the seeds of one fold, share one upload)."""
    out = {}
    for k, (item, m) in enumerate(zip(items, models)):
        key = tuple(id(v) for v in (*item, m.input_mean, m.input_scale))
        out.setdefault(key, (item, []))[1].append(k)
    return list(out.values())


def upload_groups(models, items, loss, name):
    """Each distinct (X, y) of ``items`` (one per model) checked and uploaded through the door of its first
    model (:meth:`gpunet.MLP.upload`, with that model's standardisation): ``[(Xd, Yd, [k, ...])]``."""
    out = []
    shared = all(i is items[0] for i in items)
    for (Xk, yk), ks in groups(items, models):
        if yk is None and not shared:  # (shared data: the model's door says that y is required)
            what = "y" if name == "X" else "validation_data"
            raise ValueError(f"{what} has no targets for model {ks[0]}: pass the targets as well as the inputs")
        where = name if shared else f"{name}[{ks[0]}]"
        out.append((*models[ks[0]].upload(Xk, yk, loss, name=where, sparse=False), ks))
    return out


def upload_training(models, backend, X, y, loss):
    """``(Xd, Yd, base)``: the training data on the device, one block of rows per distinct data set and
    standardisation, and each model's first row in it (``base``, host int64 (K,)). Every block goes through
    the model's own door before anything changes."""
    K = len(models)
    if per_model(X, K, "X"):
        if not isinstance(y, (list, tuple)) or len(y) != K:
            raise ValueError(f"X is a list of {K} per-model arrays: y must be a list of {K} target arrays too")
        items = list(zip(X, y))
    else:
        rows = getattr(X, "shape", (len(X),) if isinstance(X, (list, tuple)) else (None,))[0]
        if isinstance(y, (list, tuple)) and len(y) == K and K != rows and y and \
                all(getattr(v, "ndim", 0) >= 1 for v in y):
            raise ValueError(f"y is a list of {K} arrays (one per model) but X is one array: give X as a list of "
                             f"{K} arrays too, or y as one array for every model")
        items = [(X, y)] * K
    blocks = upload_groups(models, items, loss, "X")
    rows = sorted({int(Xg.shape[0]) for Xg, _, _ in blocks})
    if len(rows) > 1:
        raise ValueError(f"the models' training sets have {rows} rows: a stack's models share their batch "
                         f"boundaries, so every model needs the same number of training rows (stack the "
                         f"equal-sized sets together)")
    base = np.empty(K, dtype=np.int64)
    for i, (_, _, ks) in enumerate(blocks):
        base[ks] = i * rows[0]
    if len(blocks) == 1:
        return blocks[0][0], blocks[0][1], base
    xp = backend.xp
    concat = xp.concat if hasattr(xp, "concat") else xp.concatenate
    with backend.activate():
        return concat([b[0] for b in blocks], axis=0), concat([b[1] for b in blocks], axis=0), base


def upload_validation(models, validation_data, loss):
    """``[(Xv, Yv, [k, ...])]``: each distinct validation set on the device (through the model's door, with
    its standardisation) and the models evaluated on it; ``None`` without validation data."""
    if validation_data is None:
        return None
    K = len(models)
    if not isinstance(validation_data, (list, tuple)):
        raise ValueError("validation_data must be a pair (X_val, y_val), or a list of one pair per model")
    if len(validation_data) == 2 and is_2d(validation_data[0]):  # one (X_val, y_val): X_val is 2-D
        return upload_groups(models, [tuple(validation_data)] * K, loss, "validation_data X")
    if len(validation_data) != K:
        raise ValueError(f"validation_data has {len(validation_data)} items for a stack of {K} models: give one "
                         f"(X_val, y_val) pair per model, or one pair for all of them")
    for k, v in enumerate(validation_data):
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise ValueError(f"validation_data[{k}] must be a pair (X_val, y_val) for model {k}, got "
                             f"{type(v).__name__}")
    return upload_groups(models, [tuple(v) for v in validation_data], loss, "validation_data X")
