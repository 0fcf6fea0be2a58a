"""Weight initialisation, done on the host with ``numpy.random.Generator`` so that the same seed
gives bit-identical initial weights on every device.

- Glorot (Xavier) uniform, limit sqrt(6 / (fan_in + fan_out)): Glorot & Bengio, AISTATS 2010.
  The default for every layer, as in Keras.
- He (Kaiming) normal, std sqrt(2 / fan_in): He et al., "Delving Deep into Rectifiers", ICCV 2015.
  ``init="he"`` uses it for ReLU hidden layers (Glorot stays on the output layer).

Why Glorot by default: on the seed's deep regression net [1, 50 x 9, 1] with plain SGD (lr 0.01,
batch 20) He initialisation diverges within the first few batches, while Glorot converges (measured;
``tests/contracts/test_learning.py``). He remains the better start for deep ReLU nets with smaller steps.

Biases start at zero.
"""
from __future__ import annotations

import numpy as np

SCHEMES = ("glorot", "he")


def he_normal(rng, fan_in, fan_out):
    return rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)


def glorot_uniform(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out))


def initial_weights(layer_sizes, hidden_activation="relu", scheme="glorot", rng=None):
    """Host float64 arrays ``[W1 (n0, n1), b1 (n1,), W2, b2, ...]``.

    ``scheme="he"`` uses He for hidden layers, Glorot for the output layer.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(SCHEMES)}")
    rng = np.random.default_rng(rng)
    weights = []
    n_layers = len(layer_sizes) - 1
    for i, (fan_in, fan_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
        hidden = i < n_layers - 1
        use_he = scheme == "he" and hidden
        weights.append((he_normal if use_he else glorot_uniform)(rng, fan_in, fan_out))
        weights.append(np.zeros(fan_out))
    return weights


def rng_streams(seed):
    """Three independent host generators from one seed: (init, shuffle, dropout)."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
