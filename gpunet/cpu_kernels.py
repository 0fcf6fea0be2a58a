"""Fused single-pass optimizer steps for the CPU, compiled with Numba when it is installed.

A NumPy Adam step makes a dozen passes over the flat parameter buffer; once the GEMMs have evicted
the caches that costs ~1.8 ms at 536k parameters, about a third of a batch-128 step. One fused loop
costs ~0.26 ms (``../shared/notes/cpu.md``). The maths is the same as the reference in
:mod:`gpunet.optim` (torch.optim semantics) and tests compare the two.

Hyper-parameters arrive cast to the parameters' dtype so float32 arithmetic stays float32, as in the
reference. ``adam_step``/``sgd_step`` are ``None`` when Numba is missing or disabled with
``GPUNET_NUMBA=0``; the optimizers then use the reference.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("gpunet")

adam_step = None
sgd_step = None

if os.environ.get("GPUNET_NUMBA", "1") != "0":
    try:
        import numba
    except Exception as exc:  # not installed, or an incompatible NumPy
        log.debug("gpunet: Numba unavailable (%s); using the NumPy optimizer path", exc)
        numba = None
else:
    numba = None

if numba is not None:
    import math

    @numba.njit(cache=True, error_model="numpy", nogil=True)
    def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt, amsgrad, decoupled):
        one = p.dtype.type(1.0)
        decay = one - lr * wd
        for i in range(p.size):
            gi = g[i]
            if decoupled:
                p[i] *= decay
            elif wd != 0:
                gi = gi + wd * p[i]
            m[i] += (one - beta1) * (gi - m[i])
            v[i] = v[i] * beta2 + (one - beta2) * gi * gi
            vi = v[i]
            if amsgrad:
                if vi > vmax[i]:
                    vmax[i] = vi
                vi = vmax[i]
            p[i] -= step_size * (m[i] / (math.sqrt(vi) / bc2_sqrt + eps))

    @numba.njit(cache=True, error_model="numpy", nogil=True)
    def _sgd(p, g, buf, lr, momentum, dampening, wd, nesterov, first):
        one = p.dtype.type(1.0)
        for i in range(p.size):
            gi = g[i]
            if wd != 0:
                gi = gi + wd * p[i]
            if momentum != 0:
                b = gi if first else momentum * buf[i] + (one - dampening) * gi
                buf[i] = b
                gi = gi + momentum * b if nesterov else b
            p[i] -= lr * gi

    def adam_step(p, g, m, v, vmax, *, lr, beta1, beta2, eps, weight_decay, step, amsgrad, decoupled):
        """Fused Adam/AdamW update of the flat buffers ``p, g, m, v`` (and ``vmax``), in place."""
        t = p.dtype.type
        bc1 = 1.0 - beta1 ** step
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        _adam(p, g, m, v, vmax if amsgrad else m, t(lr), t(beta1), t(beta2), t(eps), t(weight_decay),
              t(lr / bc1), t(bc2_sqrt), bool(amsgrad), bool(decoupled))

    def sgd_step(p, g, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
        """Fused SGD (momentum, Nesterov, coupled weight decay) update, in place."""
        t = p.dtype.type
        _sgd(p, g, buf if buf is not None else p, t(lr), t(momentum), t(dampening), t(weight_decay),
             bool(nesterov), bool(first))
