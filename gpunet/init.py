"""Weight initialisation, done on the host with ``numpy.random.Generator`` so that the same seed
gives bit-identical initial weights on every device.

- He (Kaiming) normal, std sqrt(2 / fan_in): He et al., "Delving Deep into Rectifiers", ICCV 2015.
  The default for ReLU hidden layers.
- Glorot (Xavier) uniform, limit sqrt(6 / (fan_in + fan_out)): Glorot & Bengio, AISTATS 2010.
  The default for sigmoid/tanh/linear hidden layers and for the output layer.

Biases start at zero.
"""
from __future__ import annotations

import numpy as np

SCHEMES = ("auto", "he", "glorot")


def he_normal(rng, fan_in, fan_out):
    return rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)


def glorot_uniform(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def initial_weights(layer_sizes, hidden_activation="relu", scheme="auto", rng=None):
    """Host float64 arrays ``[W1 (n0, n1), b1 (n1,), W2, b2, ...]``.

    ``scheme="auto"`` uses He for ReLU hidden layers and Glorot elsewhere (always for the output).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(SCHEMES)}")
    rng = np.random.default_rng(rng)
    weights = []
    n_layers = len(layer_sizes) - 1
    for i, (fan_in, fan_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
        hidden = i < n_layers - 1
        use_he = scheme == "he" or (scheme == "auto" and hidden and hidden_activation == "relu")
        weights.append((he_normal if use_he else glorot_uniform)(rng, fan_in, fan_out))
        weights.append(np.zeros(fan_out))
    return weights
