"""What one epoch of training changes and how an epoch is laid out: the batch sizes of an epoch, the
start-of-epoch snapshot that divergence, Ctrl-C and errors roll back to, and Keras' ``validation_split``."""
from __future__ import annotations

import math

import numpy as np

from gpunet import optim


def batch_sizes(n, batch_size):
    """The batch layout of an epoch over ``n`` samples: ``(B, sizes)`` with ``B = min(batch_size, n)`` and
    ``sizes`` (float64, one entry per batch) all ``B`` but the last, which holds the remainder."""
    B = min(batch_size, n)
    n_batches = math.ceil(n / B)
    sizes = np.full(n_batches, B, dtype=np.float64)
    sizes[-1] = n - B * (n_batches - 1)
    return B, sizes


class EpochSnapshot:
    """Start-of-epoch copy of everything one epoch of training changes: the parameters, the optimizer's
    state and step, and the shuffle/dropout generators of every model the buffer holds (one for an MLP,
    K for an MLPStack). Divergence, Ctrl-C and errors restore it, so a model is always at an epoch boundary."""

    def __init__(self, zeros, params, opt, models):
        self.live_params, self.opt, self.models = params, opt, models
        self.params = zeros(params.shape)
        self.state = optim.OptimizerState(0, {k: zeros(v.shape) for k, v in opt.state.items()})

    def take(self):
        self.params[...] = self.live_params
        live = self.opt.opt_state
        for k, v in live.buffers.items():
            self.state.buffers[k][...] = v
        self.state.step = live.step
        self.rng = [(m.shuffle_rng.bit_generator.state, m.dropout_rng.bit_generator.state) for m in self.models]

    def restore(self):
        self.live_params[...] = self.params
        live = self.opt.opt_state
        for k, v in live.buffers.items():
            v[...] = self.state.buffers[k]
        live.step = self.state.step
        for m, (shuffle, dropout) in zip(self.models, self.rng):
            m.shuffle_rng.bit_generator.state, m.dropout_rng.bit_generator.state = shuffle, dropout


def split_last(X, y, fraction, sample_weight=None):
    """Keras' ``validation_split``: the last ``fraction`` of the samples, before shuffling (and of the
    sample weights; the validation loss is unweighted)."""
    X, y = np.asarray(X), np.asarray(y)
    n = X.shape[0] if X.ndim else 0
    cut = int(math.floor(n * (1.0 - fraction)))
    if cut < 1 or cut >= n or y.shape[:1] != (n,):
        raise ValueError(f"validation_split={fraction} leaves no training or no validation samples out of {n}")
    if sample_weight is not None:
        w = np.asarray(sample_weight)
        if w.ndim == 0:  # one weight for every sample, as fit takes it without a split
            w = np.full(n, w)
        if w.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},) (one weight per sample), got {w.shape}")
        sample_weight = w[:cut]
    return X[:cut], y[:cut], (X[cut:], y[cut:]), sample_weight
