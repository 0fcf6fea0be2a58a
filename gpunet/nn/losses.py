"""Loss functions with their gradients, on any Array-API namespace.

Targets ``y`` always arrive as float arrays shaped like the output (integer class labels are one-hot
encoded once, on upload). All losses are means, so their scale does not depend on the batch size:

=========================  ===============================================  ===================
name                       value                                            output activation
=========================  ===============================================  ===================
``mse``                    mean over all entries of (a - y)^2               any
``mae``                    mean over all entries of |a - y|                 any
``cross_entropy``          -(1/n) sum_i sum_k y_ik log softmax(z_i)_k       softmax
``binary_cross_entropy``   mean of max(z,0) - z y + log(1 + exp(-|z|))      sigmoid
``poisson``                mean of exp(z) - y z + y log(y) - y              exp
=========================  ===============================================  ===================

``poisson`` is half the Poisson deviance, ``y log(y / a) - y + a`` with ``a = exp(z)`` (0 at a perfect fit),
as scikit-learn's ``MLPRegressor(loss="poisson")``; its targets are counts or rates ``y >= 0``.

Per-sample weights (``fit(sample_weight=w)``): each batch's loss is the weighted mean over its rows,
``sum_i w_i l_i / sum_i w_i`` (:func:`weighted_value`), where ``l_i`` is row ``i``'s share of the unweighted
loss times the number of rows, so that constant weights give exactly the unweighted loss (scikit-learn's
convention, ``sklearn/neural_network/_base.py``, ``np.average(..., weights=sample_weight)``).

Cross-entropies are computed from the logits ``z`` (log-sum-exp / softplus), never from ``log(a)``, so
they stay finite when a probability rounds to 0 or 1. With their canonical link (softmax+CE,
sigmoid+BCE) the chain rule collapses to ``dL/dz = (a - y) / N`` where ``N`` is the mean's count; the
other losses return ``dL/da`` and the activation's derivative is applied by
:func:`gpunet.nn.activations.backward`.

Every function works over the last two axes, ``(..., r, k)``: one model's batch (r, k) gives a 0-d value, a
stack of K models (K, r, k) gives K values (:class:`gpunet.MLPStack` uses exactly these functions).
"""
from __future__ import annotations

from gpunet.nn import activations
from gpunet.backend import namespace

LOSSES = ("mse", "mae", "cross_entropy", "binary_cross_entropy", "poisson")
ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae", "categorical_crossentropy": "cross_entropy",
           "ce": "cross_entropy", "bce": "binary_cross_entropy", "binary_crossentropy": "binary_cross_entropy",
           "categorical_cross_entropy": "cross_entropy", "crossentropy": "cross_entropy"}
REQUIRED_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid", "poisson": "exp"}
CLASSIFICATION = ("cross_entropy", "binary_cross_entropy")


def canonical(name) -> str:
    key = str(name).strip().lower() if isinstance(name, str) else None
    key = ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return key


def _count(a):
    """Entries per model: the mean's denominator for mse, mae and binary cross-entropy."""
    return a.shape[-2] * a.shape[-1]


def _total(x):
    """Sum over the last two axes (rows and units): a 0-d array for (r, k), shape (K,) for (K, r, k)."""
    return namespace(x).sum(x, axis=(-2, -1))


def mse(a, y):
    d = a - y
    return _total(d * d) / _count(a)


def mse_grad(a, y):
    return (2.0 / _count(a)) * (a - y)


def mae(a, y):
    return _total(namespace(a).abs(a - y)) / _count(a)


def mae_grad(a, y):
    return namespace(a).sign(a - y) / _count(a)


def log_softmax(z):
    xp = namespace(z)
    s = z - xp.max(z, axis=-1, keepdims=True)
    return s - xp.log(xp.sum(xp.exp(s), axis=-1, keepdims=True))


def cross_entropy(z, y):
    """Softmax cross-entropy from logits ``z`` (..., r, k) and one-hot/probability targets ``y``."""
    return -_total(y * log_softmax(z)) / z.shape[-2]


def binary_cross_entropy(z, y):
    """Sigmoid cross-entropy from logits, averaged over every entry (like BCEWithLogitsLoss)."""
    xp = namespace(z)
    return _total(xp.maximum(z, 0.0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))) / _count(z)


def _xlogy(y):
    """``y log(y)`` with ``0 log 0 = 0``."""
    xp = namespace(y)
    return xp.where(y > 0, y * xp.log(xp.where(y > 0, y, 1.0)), 0.0)


def _poisson_entries(z, y):
    xp = namespace(z)
    return xp.exp(z) - y * z + _xlogy(y) - y


def poisson(z, y):
    """Half the Poisson deviance from log-rates ``z`` (the exp output's input), averaged over every entry."""
    return _total(_poisson_entries(z, y)) / _count(z)


def _entries(loss, z, a, y):
    """Entry-wise terms whose mean over the last two axes is the loss (rows for cross-entropy: its row
    terms are the sums over classes, the mean is over rows)."""
    xp = namespace(z)
    if loss == "cross_entropy":
        return -xp.sum(y * log_softmax(z), axis=-1, keepdims=True)
    if loss == "binary_cross_entropy":
        return xp.maximum(z, 0.0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
    if loss == "poisson":
        return _poisson_entries(z, y)
    d = a - y
    return d * d if loss == "mse" else xp.abs(d)


def value(loss, z, a, y):
    """The loss (0-d array, or one value per model) for output logits ``z`` and activations ``a``."""
    if loss == "cross_entropy":
        return cross_entropy(z, y)
    if loss == "binary_cross_entropy":
        return binary_cross_entropy(z, y)
    if loss == "poisson":
        return poisson(z, y)
    return mse(a, y) if loss == "mse" else mae(a, y)


def row_values(loss, z, a, y):
    """Per-row losses ``l_i`` (..., r, 1) whose plain mean over rows is :func:`value`."""
    xp = namespace(z)
    e = _entries(loss, z, a, y)
    return xp.sum(e, axis=-1, keepdims=True) / e.shape[-1]


def row_factors(w):
    """Weights (..., r, 1) -> the factors ``r w_i / sum(w)`` that turn a mean over rows into the weighted mean.
    A batch whose weights are all zero gets zero factors: it contributes nothing (not 0/0 = NaN, which the
    training loop would report as a diverged learning rate)."""
    xp = namespace(w)
    total = xp.sum(w, axis=-2, keepdims=True)
    return (w / xp.where(total > 0, total, 1)) * w.shape[-2]  # w / total first: r / total can overflow float32


def weighted_value(loss, z, a, y, factors):
    """The weighted mean ``sum_i w_i l_i / sum_i w_i``, with ``factors`` from :func:`row_factors`."""
    xp = namespace(z)
    return xp.sum(row_values(loss, z, a, y) * factors, axis=(-2, -1)) / z.shape[-2]


def delta(loss, output_activation, z, a, y):
    """``dL/dz`` of the output layer, shaped like ``z``."""
    if loss == "cross_entropy":
        return (a - y) / z.shape[-2]
    if loss in ("binary_cross_entropy", "poisson"):
        return (a - y) / _count(z)
    g = mse_grad(a, y) if loss == "mse" else mae_grad(a, y)
    return activations.backward(output_activation, a, g)


def correct(loss, a, y):
    """Number of correct predictions: rows for cross-entropy, entries (threshold 0.5) for BCE."""
    xp = namespace(a)
    if loss == "cross_entropy":
        return xp.sum(xp.astype(xp.argmax(a, axis=-1) == xp.argmax(y, axis=-1), a.dtype), axis=-1)
    return _total(xp.astype((a > 0.5) == (y > 0.5), a.dtype))


def accuracy_count(loss, n_samples, n_outputs):
    """Denominator matching :func:`correct`: samples for cross-entropy, entries for BCE."""
    return n_samples if loss == "cross_entropy" else n_samples * n_outputs
