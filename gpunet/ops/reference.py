"""The handful of primitives a training step is made of, one implementation per backend.

:class:`ArrayOps` is the reference: plain Array-API expressions from :mod:`gpunet.nn.activations` and
:mod:`gpunet.nn.losses`, written into preallocated outputs. It runs unchanged on NumPy, CuPy and
``array_api_strict``. :class:`NumpyOps` replaces the hot ones with in-place NumPy calls (``out=``,
no temporaries) and a fused Numba optimizer when Numba is installed; :class:`gpunet.ops.cuda.CupyOps`
replaces them with fused CUDA kernels. Tests check every fast path against the reference.

Shapes: ``B`` rows (samples) per batch, ``n``/``m`` units; weight matrices are (n_in, n_out).
"""
from __future__ import annotations

from gpunet.nn import activations, losses


class ArrayOps:
    """Reference primitives on any Array-API namespace."""

    name = "reference"
    #: fused optimizer steps, or ``None`` to let :mod:`gpunet.optim` use its reference maths
    adam = None
    sgd = None

    def __init__(self, backend):
        self.backend = backend
        self.xp = backend.xp

    def matmul(self, a, b, out):
        """out (B, m) = a (B, n) @ b (n, m)."""
        out[...] = a @ b
        return out

    def matmul_tn(self, a, b, out):
        """out (n, m) = a.T @ b for a (B, n), b (B, m): the weight gradient."""
        out[...] = a.T @ b
        return out

    def matmul_nt(self, a, b, out):
        """out (B, n) = a (B, m) @ b.T for b (n, m): the delta sent to the previous layer."""
        out[...] = a @ b.T
        return out

    def batched_matmul(self, a, b, out=None, ta=False, tb=False):
        """``op(a[k]) @ op(b[k])`` for every k of 3-D stacks (``op`` transposes the last two axes when ``ta``/``tb``;
        a batch dimension of 1 broadcasts), into ``out`` when given: :class:`gpunet.MLPStack`'s GEMMs."""
        xp = self.xp
        swap = (lambda x: xp.swapaxes(x, 1, 2)) if hasattr(xp, "swapaxes") else (  # noqa: E731
            lambda x: xp.permute_dims(x, (0, 2, 1)))
        r = xp.matmul(swap(a) if ta else a, swap(b) if tb else b)
        if out is None:
            return r
        out[...] = r
        return out

    def take_rows(self, X, idx, out):
        """Gather rows ``X[idx]`` into ``out`` (the mini-batch, on device)."""
        out[...] = self.xp.take(X, idx, axis=0)
        return out

    def bias_activation(self, z, b, act):
        """In place: z <- act(z + b)."""
        z[...] = activations.ACTIVATIONS[act](z + b)
        return z

    def activation(self, act, z, out):
        out[...] = activations.ACTIVATIONS[act](z)
        return out

    def activation_backward(self, delta, a, act):
        """In place: delta <- delta * act'(z), with the derivative written in terms of a = act(z)."""
        delta[...] = activations.backward(act, a, delta)
        return delta

    def sum_rows(self, delta, out):
        out[...] = self.xp.sum(delta, axis=0)
        return out

    def loss_delta(self, loss, output_activation, z, a, y, delta):
        """Write dL/dz of the output layer into ``delta``; return the loss as a 0-d device array."""
        delta[...] = losses.delta(loss, output_activation, z, a, y)
        return losses.value(loss, z, a, y)

    def loss_delta_weighted(self, loss, output_activation, z, a, y, factors, delta):
        """Per-sample weights: ``delta`` rows scaled by ``factors`` (``r w_i / sum(w)``, shape (r, 1), from
        :func:`gpunet.nn.losses.row_factors`) and the weighted mean loss. One implementation for every
        backend: the fused losses and the fused CPU step take no weights (``fit`` reports the fallback)."""
        delta[...] = losses.delta(loss, output_activation, z, a, y) * factors
        return losses.weighted_value(loss, z, a, y, factors)

    def loss_delta_correct(self, loss, output_activation, z, a, y, delta, count):
        """:meth:`loss_delta` and, when ``count``, the number of correct predictions (:meth:`correct`) as a
        0-d device array (else None); the fused CUDA losses produce both in one kernel and one sum."""
        value = self.loss_delta(loss, output_activation, z, a, y, delta)
        return value, (self.correct(loss, a, y) if count else None)

    def loss_writes_output(self, loss, output_activation):
        """Whether :meth:`loss_delta` computes the output activations itself (then the forward pass of a
        gradient step leaves them to it): only the fused CUDA cross-entropy kernels do."""
        return False

    def correct(self, loss, a, y):
        return losses.correct(loss, a, y)

    def scale_(self, a, s):
        """In place: a <- a * s (s an array of a's shape or a scalar)."""
        a *= s
        return a

    def dropout_mask(self, out, rate, rng):
        """Fill ``out`` with 0 (dropped, probability ``rate``) or 1/(1 - rate) (kept): inverted dropout.
        Drawn on the host from the model's seeded ``rng`` and uploaded (no ``xp.random`` in the
        Array API)."""
        keep = 1.0 - rate
        u = self.xp.astype(self.backend.to_device(rng.random(tuple(out.shape))), out.dtype)
        out[...] = self.xp.floor(u + keep) * (1.0 / keep)  # u + keep >= 1  <=>  u >= rate
        return out

    def status(self):
        """Which fast paths this backend has: ``{path: {"live": bool, "reason": str or None}}`` (the
        reference has none)."""
        return {}

    def fused_step(self, model, ws, X, Y, idx, loss):
        """Gather + forward + loss + backward of one training batch in fused code, filling
        ``model.grads``; returns (loss, correct) or ``None`` when this backend has no fused step
        for the model (then the primitives above are used)."""
        return None

    def fused_stack_reason(self, stack, opt):
        """Why :meth:`fused_stack_epoch` cannot train ``stack`` with ``opt`` (``None``: it can)."""
        return f"no fused stacked step on the {self.name} ops (batched GEMMs in the array namespace)"

    def fused_stack_epoch(self, stack, X, Y, idx, B, opt, lr, loss, batch_loss, batch_correct):
        """One epoch of every model of ``stack`` (gather, forward, loss, backward, optimizer) in fused code;
        returns whether it ran (when not, nothing changed and the stack trains with its batched GEMMs)."""
        return False

