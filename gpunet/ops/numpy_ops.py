"""The CPU fast path: NumPy primitives writing into their outputs (``out=``, no temporaries) and, with
Numba installed, the fused optimizer and the fused training step of :mod:`gpunet.ops.numba_kernels`.
Every primitive is checked against :class:`gpunet.ops.reference.ArrayOps` (``tests/unit/ops``)."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from gpunet.nn import losses
from gpunet.ops.codes import supports
import gpunet.ops.numba_kernels as numba_kernels
from gpunet.ops.reference import ArrayOps

log = logging.getLogger("gpunet")


class NumpyOps(ArrayOps):
    """NumPy primitives writing into their outputs: no temporaries on the hot path."""

    name = "numpy"

    def __init__(self, backend):
        super().__init__(backend)
        self.adam = numba_kernels.adam_step
        self.sgd = numba_kernels.sgd_step
        self._mlp_step = numba_kernels.mlp_step
        self._stack_epoch = numba_kernels.stack_epoch
        self._compiled = set()

    def status(self):
        why = None if numba_kernels.numba is not None else "Numba is not installed (pip install 'gpunet[numba]')"
        if why is None and self._mlp_step is None:
            why = "Numba could not compile gpunet's kernels"
        return {"fused_step": {"live": why is None, "reason": why, "note": "networks with layers up to 256 x 256 "
                               "weights, without dropout, sample weights or the poisson loss (L1/L2 are added after it)"},
                "fused_optimizer": {"live": self.adam is not None, "reason": None if self.adam is not None else why},
                "fused_stack_step": {"live": why is None and self._stack_epoch is not None, "reason": why,
                                     "note": "MLPStack: one compiled call per epoch, the models in parallel; "
                                             "SGD, Adam or AdamW, the fused step's limits"}}

    # np.dot has ~0.5 us less overhead per call than np.matmul on 2-D operands (same BLAS GEMM)
    def matmul(self, a, b, out):
        return np.dot(a, b, out=out)

    def matmul_tn(self, a, b, out):
        return np.dot(a.T, b, out=out)

    def matmul_nt(self, a, b, out):
        return np.dot(a, b.T, out=out)

    def take_rows(self, X, idx, out):
        # mode="clip" skips the bounds-checking slow path (indices come from a permutation)
        return np.take(X, idx, axis=0, out=out, mode="clip")

    def bias_activation(self, z, b, act):
        np.add(z, b, out=z)
        return self._activate_(z, act)

    def activation(self, act, z, out):
        if act == "softmax":
            np.subtract(z, z.max(axis=1, keepdims=True), out=out)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
            return out
        np.copyto(out, z)
        return self._activate_(out, act)

    @staticmethod
    def _activate_(z, act):
        if act == "relu":
            np.maximum(z, 0, out=z)
        elif act == "tanh":
            np.tanh(z, out=z)
        elif act == "sigmoid":  # 1/(1+exp(-z)) = (1 + tanh(z/2)) / 2: no overflow, no temporaries
            z *= 0.5
            np.tanh(z, out=z)
            z += 1.0
            z *= 0.5
        elif act == "exp":
            np.exp(z, out=z)
        elif act != "linear":
            raise ValueError(f"unknown activation {act!r}")
        return z

    def dropout_mask(self, out, rate, rng):
        keep = 1.0 - rate
        rng.random(out=out, dtype=out.dtype)  # in place, from the seeded host generator
        out += keep
        np.floor(out, out=out)
        out *= 1.0 / keep
        return out

    def activation_backward(self, delta, a, act):
        if act == "relu":
            np.multiply(delta, a > 0, out=delta)
            return delta
        return super().activation_backward(delta, a, act)

    def sum_rows(self, delta, out):
        return np.sum(delta, axis=0, out=out)

    def loss_delta(self, loss, output_activation, z, a, y, delta):
        if loss in losses.REQUIRED_OUTPUT:  # canonical link: dL/dz = (a - y) / N
            np.subtract(a, y, out=delta)
            delta *= 1.0 / (z.shape[0] if loss == "cross_entropy" else z.size)
            return losses.value(loss, z, a, y)
        return super().loss_delta(loss, output_activation, z, a, y, delta)

    #: the fused step runs when every weight matrix is at most this big (256 x 256): then a step is bound by
    #: per-call overhead, which fusing removes (2-3x faster on the seed's [1, 50 x 9, 1]). Larger layers
    #: spend their time in GEMMs, equally fast either way, and stay on NumPy's own BLAS (Numba's np.dot
    #: uses SciPy's copy of OpenBLAS, whose busy-waiting threads compete with NumPy's on small machines).
    FUSED_MAX_LAYER_WEIGHTS = 65536

    def fused_step(self, model, ws, X, Y, idx, loss):
        if (self._mlp_step is None or model.dropout or model.fused_failed
                or not supports(model.hidden_activation, model.output_activation, loss)
                or not self._fusable(model)):
            return None
        flat = ws.__dict__.get("flat")
        if flat is None:
            n = sum(model.layer_sizes) * ws.rows
            k = model.layer_sizes[-1] * ws.rows
            dtype = np.dtype(model.dtype)
            flat = ws.flat = (np.zeros(n, dtype), np.zeros(n, dtype), np.zeros(k, dtype), np.zeros(k, dtype))
            ws.sizes = np.asarray(model.layer_sizes, dtype=np.int64)
        args = (X, Y, idx, ws.sizes, ws.rows, model.params, model.grads, flat, model.hidden_activation,
                model.output_activation, loss)
        key = (model.dtype, X.dtype.name)
        if key in self._compiled:
            return self._mlp_step(*args)
        try:  # the first call compiles; a failure there (e.g. no SciPy BLAS for Numba) changes nothing
            result = self._mlp_step(*args)
        except Exception as exc:  # this model uses NumPy; a later model tries the compiled step again
            log.warning("gpunet: fused CPU step unavailable for this model (%s: %s); using NumPy",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            model.fused_failed = True
            return None
        self._compiled.add(key)
        return result

    def _fusable(self, model):
        forced = os.environ.get("GPUNET_FUSED")
        if forced in ("0", "1"):
            return forced == "1"
        sizes = model.layer_sizes
        return max(a * b for a, b in zip(sizes[:-1], sizes[1:])) <= self.FUSED_MAX_LAYER_WEIGHTS

    #: the optimizers the fused stacked epoch runs (their fused single-model kernels)
    STACK_OPTIMIZERS = ("sgd", "adam", "adamw")

    def fused_stack_reason(self, stack, opt):
        if self._stack_epoch is None:
            return self.status()["fused_stack_step"]["reason"] or "Numba could not compile gpunet's kernels"
        if stack.dropout or stack.l1 or stack.l2:
            return "dropout and L1/L2 penalties are not in the fused step"
        if opt.name not in self.STACK_OPTIMIZERS:
            return f"the {opt.name} optimizer is not in the fused stacked step"
        loss = stack.loss or {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy",
                              "exp": "poisson"}.get(stack.output_activation, "mse")
        if not supports(stack.hidden_activation, stack.output_activation, loss):
            return f"the {stack.output_activation} output or the {loss} loss is not in the fused stacked step"
        if stack.fused_failed:
            return f"the fused stacked step failed to compile ({stack.fused_failed})"
        if not self._fusable(stack):
            return ("GPUNET_FUSED=0" if os.environ.get("GPUNET_FUSED") == "0" else
                    f"a layer has over {self.FUSED_MAX_LAYER_WEIGHTS} weights (GEMM-bound: batched GEMMs are as fast)")
        return None

    #: an epoch on the other thread count every this many epochs (the machine's load changes)
    STACK_REPROBE_EPOCHS = 8

    @staticmethod
    def stack_threads(stack):
        """How many threads the next fused stacked epoch of ``stack`` uses, by a measured rule: the models are
        independent, so any count gives the same numbers, and the fastest is the one measured fastest. All of
        Numba's threads and one are each tried once, then the faster of their latest times per model-step
        (``stack.thread_timings``) is used, and the other is timed again every ``STACK_REPROBE_EPOCHS`` epochs:
        on a quiet machine the threads share the models, on a busy one (where a descheduled thread holds up
        the others at the end of the parallel loop) one thread avoids the wait."""
        options = list(dict.fromkeys((numba_kernels.numba.get_num_threads(), 1)))
        timings = stack.thread_timings
        untried = [n for n in options if n not in timings]
        if untried:
            return untried[0]
        best = min(options, key=timings.get)
        if len(options) > 1 and stack.fused_epochs % NumpyOps.STACK_REPROBE_EPOCHS == 0:
            return next(n for n in options if n != best)
        return best

    def fused_stack_epoch(self, stack, X, Y, idx, B, opt, lr, loss, batch_loss, batch_correct):
        if self.fused_stack_reason(stack, opt) is not None:
            return False
        threads = self.stack_threads(stack)
        args = (X, Y, idx, B, np.asarray(stack.layer_sizes, dtype=np.int64), stack.params, stack.grads, opt, lr,
                stack.hidden_activation, stack.output_activation, loss, batch_loss, batch_correct, threads)
        key = ("stack", stack.dtype, X.dtype.name)
        if key in self._compiled:
            t0 = time.perf_counter()
            self._stack_epoch(*args)
            stack.thread_timings[threads] = (time.perf_counter() - t0) / (len(stack) * batch_loss.shape[0])
            stack.fused_epochs += 1
            stack.threads = threads
            return True
        try:  # the first call compiles; a failure there changes nothing (the kernel runs after compiling)
            self._stack_epoch(*args)
        except Exception as exc:  # this stack trains with batched GEMMs; a later stack tries again
            stack.fused_failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("gpunet: fused stacked CPU step unavailable for this MLPStack (%s); using batched NumPy "
                        "GEMMs", stack.fused_failed)
            return False
        self._compiled.add(key)  # (this epoch's time includes compiling: not a timing)
        stack.fused_epochs += 1
        stack.threads = threads
        return True

