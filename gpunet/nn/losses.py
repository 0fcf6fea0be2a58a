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
=========================  ===============================================  ===================

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

LOSSES = ("mse", "mae", "cross_entropy", "binary_cross_entropy")
ALIASES = {"mean_squared_error": "mse", "mean_absolute_error": "mae", "categorical_crossentropy": "cross_entropy",
           "ce": "cross_entropy", "bce": "binary_cross_entropy", "binary_crossentropy": "binary_cross_entropy",
           "categorical_cross_entropy": "cross_entropy", "crossentropy": "cross_entropy"}
REQUIRED_OUTPUT = {"cross_entropy": "softmax", "binary_cross_entropy": "sigmoid"}
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


def value(loss, z, a, y):
    """The loss (0-d array, or one value per model) for output logits ``z`` and activations ``a``."""
    if loss == "cross_entropy":
        return cross_entropy(z, y)
    if loss == "binary_cross_entropy":
        return binary_cross_entropy(z, y)
    return mse(a, y) if loss == "mse" else mae(a, y)


def delta(loss, output_activation, z, a, y):
    """``dL/dz`` of the output layer, shaped like ``z``."""
    if loss == "cross_entropy":
        return (a - y) / z.shape[-2]
    if loss == "binary_cross_entropy":
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
