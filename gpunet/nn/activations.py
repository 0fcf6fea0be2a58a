"""Activation functions and their derivatives.

Every function works on any Array-API namespace (NumPy, CuPy, ``array_api_strict``): the namespace is
taken from the argument. Arrays are ``(..., rows, units)``: softmax works over the last axis, so
the same functions serve one model ``(r, n)`` and a stack of models ``(K, r, n)``. Derivatives are written in terms of the *output* ``a = f(z)``, so the forward
pass can overwrite ``z`` with ``a`` and backprop needs one buffer per layer:

====================  ==========================  =======================
name                  f(z)                        f'(z) written with a
====================  ==========================  =======================
``linear``            z                           1
``relu``              max(z, 0)                   [a > 0]
``sigmoid``           1 / (1 + exp(-z))           a (1 - a)
``tanh``              tanh(z)                     1 - a^2
``softmax`` (output)  exp(z_i) / sum_j exp(z_j)   Jacobian, see :func:`backward`
``exp`` (output)      exp(z)                      a
====================  ==========================  =======================

``exp`` is the inverse of the log link: the output of a Poisson regression (loss ``poisson``), as
scikit-learn's ``MLPRegressor(loss="poisson")``.
"""
from __future__ import annotations

from gpunet.backend import namespace


def linear(z):
    return z


def relu(z):
    return namespace(z).maximum(z, 0.0)


def sigmoid(z):
    """Logistic function, evaluated without overflow for large |z|."""
    xp = namespace(z)
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tanh(z):
    return namespace(z).tanh(z)


def softmax(z):
    """Row-wise softmax of ``z`` (n_samples, n_classes), max-subtracted for stability."""
    xp = namespace(z)
    e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def exp(z):
    return namespace(z).exp(z)


def linear_grad(a):
    return namespace(a).ones_like(a)


def relu_grad(a):
    xp = namespace(a)
    return xp.astype(a > 0, a.dtype)


def sigmoid_grad(a):
    return a * (1.0 - a)


def tanh_grad(a):
    return 1.0 - a * a


def exp_grad(a):
    return a


ACTIVATIONS = {"linear": linear, "relu": relu, "sigmoid": sigmoid, "tanh": tanh, "softmax": softmax, "exp": exp}
DERIVATIVES = {"linear": linear_grad, "relu": relu_grad, "sigmoid": sigmoid_grad, "tanh": tanh_grad, "exp": exp_grad}
ALIASES = {"identity": "linear", "none": "linear", "logistic": "sigmoid"}
HIDDEN = ("relu", "sigmoid", "tanh", "linear")
OUTPUT = ("linear", "sigmoid", "softmax", "tanh", "relu", "exp")


def canonical(name, allowed, what="activation") -> str:
    """Normalise an activation name (case, aliases) and check it is one of ``allowed``."""
    key = ALIASES.get(str(name).strip().lower(), str(name).strip().lower()) if isinstance(name, str) else None
    if key not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}")
    return key


def backward(name, a, g):
    """Back-propagate ``g = dL/da`` through the activation: returns ``dL/dz``, shape of ``a``.

    For softmax this is the Jacobian-vector product ``a * (g - sum(a * g, axis=-1))``.
    """
    if name == "softmax":
        xp = namespace(a)
        return a * (g - xp.sum(a * g, axis=-1, keepdims=True))
    return g * DERIVATIVES[name](a)
