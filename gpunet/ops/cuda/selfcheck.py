"""The self-check of the CUDA fast paths: every fused kernel against the reference :class:`ArrayOps` (CuPy's
own operations) on the same device, once per process and dtype; the cuBLAS C-API GEMMs and graph training at
the first ``fit(cuda_graph=True)``. A path that fails to compile, launch or match is switched off with one
warning naming it. :class:`SelfCheck` is a base of :class:`gpunet.ops.cuda.CupyOps`.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from gpunet import optim
from gpunet.ops.codes import ELEMENTWISE
import gpunet.ops.cuda.graphs as graphs
from gpunet.ops.reference import ArrayOps

log = logging.getLogger("gpunet")

#: every fast path of the CUDA backend: name -> what falls back to the reference when it is off
FAST_PATHS = {
    "bias_activation": "fused bias + hidden activation (gn_bias_act)",
    "activation": "output activation (gn_activation)",
    "activation_backward": "fused activation derivative (gn_act_backward)",
    "scale": "dropout mask multiply (gn_scale)",
    "dropout": "dropout masks from the counter-based generator (gn_dropout)",
    "softmax_xent": "softmax + cross-entropy: probabilities, delta, row losses (gn_softmax_xent)",
    "sigmoid_xent": "sigmoid + binary cross-entropy (gn_sigmoid_xent_k)",
    "adam": "Adam/AdamW over the flat buffer (gn_adam)",
    "adam_device": "Adam reading its step from device memory, for CUDA graphs (gn_adam_dev, gn_tick)",
    "sgd": "SGD over the flat buffer (gn_sgd)",
    "cublas_gemm": "GEMMs through cuBLAS's C API, for CUDA graph capture (gpunet/cublas.py)",
    "graph_capture": "the training step captured as a CUDA graph and replayed",
    "batched_gemm": "MLPStack's GEMMs through cuBLAS's strided-batched C API on the views of its flat buffer, "
                    "transposes as flags (CuPy's batched matmul copies every strided operand)",
}
#: checked at the first fit(cuda_graph=True), not when the backend starts
GRAPH_PATHS = ("cublas_gemm", "graph_capture")
#: checked at first use, not when the backend starts: path -> when
CHECKED_AT = {"cublas_gemm": "the first fit(cuda_graph=True)", "graph_capture": "the first fit(cuda_graph=True)",
              "batched_gemm": "the first MLPStack step"}
LAZY_PATHS = tuple(CHECKED_AT)

# ---- the dropout generator: kernels.cu gn_uniform / gn_dropout, here in array expressions ----------------
GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def dropout_reference(xp, out, seed, rate):
    """``out`` <- 1/(1 - rate) where u(seed, i) >= rate else 0, with u the splitmix64 counter generator of
    ``kernels.cu`` (``gn_uniform``) over the flattened index: the same masks as the ``gn_dropout`` kernel,
    from CuPy's (or NumPy's) own wrapping uint64 arithmetic."""
    u64 = xp.uint64
    x = xp.arange(1, out.size + 1, dtype=u64) * u64(GOLDEN) + u64(seed)
    x = (x ^ (x >> u64(30))) * u64(MIX1)
    x = (x ^ (x >> u64(27))) * u64(MIX2)
    x = x ^ (x >> u64(31))
    u = (x >> u64(11)).astype(xp.float64) * (1.0 / 2.0 ** 53)  # 53 bits: exact in a double
    keep = 1.0 - rate
    out[...] = xp.reshape(xp.where(u >= rate, 1.0 / keep, 0.0), out.shape)
    return out



def describe(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")



class _FusedOnly:
    """An ops view offering exactly one fused optimizer (for its self-check)."""

    def __init__(self, ops, which):
        self.adam = ops.fused_adam if which == "adam" else None
        self.sgd = ops.fused_sgd if which == "sgd" else None



class SelfCheck:
    """The checks of :class:`CupyOps`: ``live``/``reasons`` per path, :meth:`self_check` at start-up and
    :meth:`check_graphs` at the first graph fit."""

    def _init_checks(self):
        self.live = {name: name not in LAZY_PATHS for name in FAST_PATHS}
        self.reasons = {name: None for name in FAST_PATHS}
        self._graphs_checked = False
        self._graph_lock = threading.RLock()  # one graph check; other threads wait for its verdict
        self._batched_local = threading.local()  # per thread: its own handle for the stacks' batched GEMMs
        self._batched_checked = False

    def _checked(self, name):
        if name in GRAPH_PATHS:
            return self._graphs_checked
        return self._batched_checked if name == "batched_gemm" else True

    def status(self):
        return {name: {"live": self.live[name] if self._checked(name) else None, "reason": self.reasons[name]}
                for name in FAST_PATHS}

    def switch_off(self, name, reason):
        """Turn the fast path ``name`` off for this process, keeping ``reason`` (shown by ``status``)."""
        self.live[name] = False
        self.reasons[name] = reason
        if name == "adam":
            self.adam = None
        elif name == "sgd":
            self.sgd = None

    # -- the self-check --------------------------------------------------------------------------
    def self_check(self):
        """Run every fused kernel once per dtype on small inputs against the reference on this device;
        switch off (with one warning naming each) the ones that fail to compile, launch or match."""
        failed = {}
        for name in FAST_PATHS:
            if name in LAZY_PATHS:
                continue
            for dtype in ("float32", "float64"):
                try:
                    reason = getattr(self, f"_check_{name}")(np.random.default_rng(20260), dtype)
                except Exception as exc:  # compile (NVRTC), launch or driver errors: the path is off
                    reason = describe(exc)
                if reason:
                    failed[name] = f"{dtype}: {reason}"
                    break
        self._report(failed)
        return self.status()

    def _report(self, failed):
        for name, reason in failed.items():
            self.switch_off(name, reason)
        if failed:
            log.warning("gpunet: %s: %d CUDA fast path(s) failed the self-check against the reference and are off "
                        "for this process (the reference CuPy operations run instead): %s", self.backend.name,
                        len(failed), "; ".join(f"{n} ({r})" for n, r in failed.items()))

    def _dev(self, a, dtype):
        return self.backend.to_device(np.array(a, dtype=dtype))  # a fresh host copy: inputs are reused

    def _compare(self, what, fast, ref, dtype, tf32=False):
        """None when the device arrays (or 0-d values) agree to the dtype's tolerance, else why not."""
        f = np.asarray(self.backend.to_host(fast) if hasattr(fast, "shape") else fast, dtype=np.float64)
        r = np.asarray(self.backend.to_host(ref) if hasattr(ref, "shape") else ref, dtype=np.float64)
        rtol, atol = (1e-4, 1e-5) if dtype == "float32" else (1e-10, 1e-12)
        if dtype == "float32" and tf32:  # 10-bit mantissa products, and either side may or may not use them
            rtol, atol = 1e-2, 1e-2
        if f.shape != r.shape:
            return f"{what}: shape {f.shape} != reference {r.shape}"
        bad = ~(np.abs(f - r) <= atol + rtol * np.abs(r))
        if bad.any():
            i = int(np.flatnonzero(bad.ravel())[0])
            return f"{what}: {f.ravel()[i]!r} where the reference gives {r.ravel()[i]!r}"
        return None

    def _inputs(self, rng, dtype):
        z = 3.0 * rng.standard_normal((6, 5))
        return z, rng.standard_normal(5), rng.standard_normal((6, 5))

    def _check_per_activation(self, rng, dtype, run):
        """``run(ops, act, z, b, d)`` with the fast kernels and with the reference, for every activation."""
        z, b, d = (self._dev(v, dtype) for v in self._inputs(rng, dtype))
        ref = ArrayOps(self.backend)
        for act in ELEMENTWISE:
            why = self._compare(act, run(self, act, z.copy(), b, d.copy()), run(ref, act, z.copy(), b, d.copy()),
                                dtype)
            if why:
                return why
        return None

    def _check_bias_activation(self, rng, dtype):
        return self._check_per_activation(rng, dtype, lambda ops, act, z, b, d: (
            self._k_bias_activation if ops is self else ops.bias_activation)(z, b, act))

    def _check_activation(self, rng, dtype):
        return self._check_per_activation(rng, dtype, lambda ops, act, z, b, d: (
            self._k_activation if ops is self else ops.activation)(act, z, 0 * z))

    def _check_activation_backward(self, rng, dtype):
        ref = ArrayOps(self.backend)
        return self._check_per_activation(rng, dtype, lambda ops, act, z, b, d: (
            self._k_activation_backward if ops is self else ops.activation_backward)(
                d, ref.activation(act, z, 0 * z), act))

    def _check_scale(self, rng, dtype):
        _, _, d = self._inputs(rng, dtype)
        s = rng.standard_normal(d.shape)
        return self._compare("a * s", self._k_scale(self._dev(d, dtype), self._dev(s, dtype)), self._dev(d * s, dtype),
                             dtype)

    def _check_dropout(self, rng, dtype):
        rate, seed = 0.3, 0x5DEECE66D1234567
        fast = self.backend.to_host(self._k_dropout(self._dev(np.zeros((7, 33)), dtype), seed, rate))
        ref = self.backend.to_host(dropout_reference(self.xp, self._dev(np.zeros((7, 33)), dtype), seed, rate))
        if not np.array_equal(fast, ref):
            return "masks differ from the reference generator"
        if not np.isin(fast, np.asarray([0.0, 1.0 / (1.0 - rate)], dtype=dtype)).all():
            return "mask values other than 0 and 1/(1 - rate)"
        return None

    def _loss_inputs(self, rng, dtype, loss):
        z, _, _ = self._inputs(rng, dtype)
        y = np.eye(z.shape[1])[rng.integers(0, z.shape[1], z.shape[0])] if loss == "cross_entropy" else \
            rng.uniform(0, 1, z.shape)
        return z, y

    def _check_loss(self, rng, dtype, loss, out, kernel):
        z, y = self._loss_inputs(rng, dtype, loss)
        ref = ArrayOps(self.backend)
        a_ref = ref.activation(out, self._dev(z, dtype), self._dev(0 * z, dtype))
        d_ref = self._dev(0 * z, dtype)
        v_ref, c_ref = ref.loss_delta_correct(loss, out, self._dev(z, dtype), a_ref, self._dev(y, dtype), d_ref, True)
        a, d = self._dev(0 * z, dtype), self._dev(0 * z, dtype)
        sums = kernel(self._dev(z, dtype), self._dev(y, dtype), a, d)
        return (self._compare("loss", sums[0], v_ref, dtype) or self._compare("outputs", a, a_ref, dtype)
                or self._compare("delta", d, d_ref, dtype) or self._compare("correct count", sums[1], c_ref, dtype))

    def _check_softmax_xent(self, rng, dtype):
        return self._check_loss(rng, dtype, "cross_entropy", "softmax", self._k_softmax_xent)

    def _check_sigmoid_xent(self, rng, dtype):
        return self._check_loss(rng, dtype, "binary_cross_entropy", "sigmoid", self._k_sigmoid_xent)

    def _check_optimizer(self, rng, dtype, make, fused):
        """Three steps of an optimizer with ``fused`` as its kernel against its reference maths."""
        p0 = rng.standard_normal(301)
        fast_p, ref_p = self._dev(p0, dtype), self._dev(p0, dtype)
        fast_opt, ref_opt = make(optim), make(optim)
        fast_opt.bind(fast_p)
        ref_opt.bind(ref_p)
        view = _FusedOnly(self, fused)
        for _ in range(3):
            g = self._dev(rng.standard_normal(301), dtype)
            fast_opt.step(fast_p, g, view)
            ref_opt.step(ref_p, g, None)
        return self._compare("parameters", fast_p, ref_p, dtype)

    def _check_adam(self, rng, dtype):
        return (self._check_optimizer(rng, dtype, lambda o: o.Adam(lr=1e-2, weight_decay=0.01, amsgrad=True), "adam")
                or self._check_optimizer(rng, dtype, lambda o: o.AdamW(lr=1e-2), "adam"))

    def _check_sgd(self, rng, dtype):
        return self._check_optimizer(rng, dtype, lambda o: o.SGD(lr=0.05, momentum=0.9, nesterov=True,
                                                                 weight_decay=1e-3), "sgd")

    def _check_adam_device(self, rng, dtype):
        p0 = rng.standard_normal(301)
        fast_p, ref_p = self._dev(p0, dtype), self._dev(p0, dtype)
        ref_opt = optim.AdamW(lr=1e-2, amsgrad=True)
        ref_opt.bind(ref_p)
        m, v, vmax = (self._dev(np.zeros(301), dtype) for _ in range(3))
        hp = self._dev(np.array([1e-2, 0.9, 0.999, 1e-8, 0.01, 0.0]), "float64")
        for _ in range(3):
            g = self._dev(rng.standard_normal(301), dtype)
            self.adam_device(fast_p, g, m, v, vmax, hp, amsgrad=True, decoupled=True)
            ref_opt.step(ref_p, g, None)
        return self._compare("parameters", fast_p, ref_p, dtype) or \
            (None if float(self.backend.to_host(hp)[5]) == 3.0 else "the device step count did not advance")

    # -- CUDA graphs: checked at the first fit(cuda_graph=True) ------------------------------------
    def check_graphs(self, train_check):
        """Check the cuBLAS C-API GEMMs against ``xp.matmul`` and then a small network trained with CUDA
        graphs against eager training, once per process; returns None when graphs can be used, else the
        reason (the failing path is switched off with one warning). ``train_check(backend)`` trains with and
        without graphs and returns None or why they differ (:func:`gpunet.training.cuda_graph.check_graphs`
        passes it: the ops layer knows nothing of models). Other threads wait for the verdict; the
        check's own fits (this thread, the lock is re-entrant) see the paths it has passed so far."""
        with self._graph_lock:
            return self._check_graphs_locked(train_check)

    def _check_graphs_locked(self, train_check):
        if self._graphs_checked:
            return self.graph_reason()
        self._graphs_checked = True
        for name in ("adam_device", "sgd"):  # the captured optimizer kernels (their failure was reported)
            if not self.live[name]:
                for path in GRAPH_PATHS:
                    self.switch_off(path, f"not tried: the captured step needs {name}")
                return self.graph_reason()
        failed = {}
        try:
            self._check_cublas_gemm()
            self.live["cublas_gemm"] = True
        except Exception as exc:  # no libcublas, a wrong result, a failed call
            failed["cublas_gemm"] = describe(exc)
            failed["graph_capture"] = "not tried: the captured GEMMs need cublas_gemm"
        if not failed:
            self.live["graph_capture"] = True  # provisional: the check's own fits capture and replay
            try:
                reason = train_check(self.backend)
            except Exception as exc:
                reason = describe(exc)
            if reason:
                failed["graph_capture"] = reason
        self._report(failed)
        return self.graph_reason()

    def graph_reason(self):
        """Why the training step cannot be captured as a graph here, or None."""
        for name in ("adam_device", "sgd", "cublas_gemm", "graph_capture"):
            if not self.live[name]:
                return f"the {name} fast path is off ({self.reasons[name]})"
        return None

    def batched_gemm(self):
        """This thread's strided-batched C-API GEMM once the path has passed its check (run at the first call, once
        per process and device, under the graph lock), or None (off: the reference ``xp.matmul`` runs). Each thread
        gets a handle of its own (cuBLAS advises against sharing a handle between threads, and each stream of a
        handle gets its own workspace: :meth:`cublas.Gemm.bind`)."""
        local = self._batched_local
        gemm = getattr(local, "gemm", None)
        if gemm is not None:
            return gemm if self.live["batched_gemm"] else None
        if not self._batched_checked:
            with self._graph_lock:
                if not self._batched_checked:
                    try:
                        local.gemm = self._check_batched_gemm()
                        self.live["batched_gemm"] = True
                    except Exception as exc:  # no libcublas, a wrong result, a failed call
                        self._report({"batched_gemm": describe(exc)})
                    self._batched_checked = True
        if not self.live["batched_gemm"]:
            return None
        if getattr(local, "gemm", None) is None:  # a later thread: a handle of its own, like the checked one
            try:
                local.gemm = graphs.make_gemm(self.backend)
            except Exception as exc:  # (out of memory for the workspace, say): this thread uses the reference
                log.warning("gpunet: %s: no cuBLAS handle for this thread's batched GEMMs (%s): CuPy's matmul runs",
                            self.backend.name, describe(exc))
                local.gemm = False
        return local.gemm or None

    def _check_batched_gemm(self):
        """The strided-batched GEMM on a handle of its own against the reference (``xp.matmul`` on contiguous
        copies) in both dtypes, full float32 math: plain, each transpose and both, a broadcast batch of one on
        either side, a one-input layer (size-1 axes), operands that are column blocks of a flat (K, n_params)
        buffer written in place without touching their neighbours, both at an odd offset and at a realistic
        aligned layer size."""
        gemm = graphs.make_gemm(self.backend)
        gemm.set_tf32(False)
        rng = np.random.default_rng(11)
        u = lambda shape: rng.uniform(0.25, 1.0, shape)  # noqa: E731  (positive: no cancellation in a 256-term sum)
        xp = self.xp
        ref = ArrayOps(self.backend)
        stream = xp.cuda.get_current_stream()
        for dtype in ("float32", "float64"):
            align = 16 // np.dtype(dtype).itemsize
            for K, n_in, n_out, rows, offset, width in ((3, 4, 5, 6, 7, 50), (3, 256, 128, 64, 8 * align,
                                                                              256 * 128 + 32 * align),
                                                        (2, 1, 5, 3, 1, 9)):
                flat = self._dev(u((K, width)), dtype)
                W = xp.reshape(flat[:, offset:offset + n_in * n_out], (K, n_in, n_out))
                x = self._dev(u((K, rows, n_in)), dtype)
                d = self._dev(u((K, rows, n_out)), dtype)
                dT = self._dev(u((K, n_out, rows)), dtype)
                one_x = self._dev(u((1, rows, n_in)), dtype)
                one_W = self._dev(u((1, n_in, n_out)), dtype)
                grads = self._dev(np.zeros((K, width)), dtype)
                dW = xp.reshape(grads[:, offset:offset + n_in * n_out], (K, n_in, n_out))
                cases = ((x, W, None, False, False), (x, d, dW, True, False), (d, W, None, False, True),
                         (one_x, W, None, False, False), (x, one_W, None, False, False), (x, dT, None, True, True))
                for a, b, out, ta, tb in cases:
                    count = max(a.shape[0], b.shape[0])
                    shape = (count, a.shape[2] if ta else a.shape[1], b.shape[1] if tb else b.shape[2])
                    target = out if out is not None else xp.empty(shape, dtype=a.dtype)
                    gemm.bind(stream.ptr)
                    gemm.batched(a, b, target, ta, tb)
                    want = ref.batched_matmul(xp.ascontiguousarray(a), xp.ascontiguousarray(b), None, ta, tb)
                    why = self._compare(f"{dtype} batched ({K}, {n_in}, {n_out}) op(a)@op(b) ta={ta} tb={tb}",
                                        target, want, dtype)
                    if why:
                        raise RuntimeError(f"wrong result: {why}")
                untouched = self.backend.to_host(grads)
                if np.any(untouched[:, :offset]) or np.any(untouched[:, offset + n_in * n_out:]):
                    raise RuntimeError("wrong result: the batched GEMM wrote outside its output blocks")
        return gemm

    def _check_cublas_gemm(self):
        """The C-API GEMM on a handle of its own (each graph later gets its own) against ``xp.matmul``."""
        gemm = graphs.make_gemm(self.backend)
        rng = np.random.default_rng(7)
        stream = self.xp.cuda.get_current_stream()
        for dtype in ("float32", "float64"):
            a, b = rng.standard_normal((9, 6)), rng.standard_normal((6, 5))
            c = rng.standard_normal((9, 5))
            cases = ((a, b, (9, 5), False, False), (a, c, (6, 5), True, False), (c, b, (9, 6), False, True))
            for x, y, shape, ta, tb in cases:
                out = self._dev(np.zeros(shape), dtype)
                gemm.bind(stream.ptr)
                gemm(self._dev(x, dtype), self._dev(y, dtype), out, ta, tb)
                ref = self.xp.matmul(self._dev(x.T if ta else x, dtype), self._dev(y.T if tb else y, dtype))
                why = self._compare(f"{dtype} op(a)@op(b) ta={ta} tb={tb}", out, ref, dtype, tf32=gemm.tf32)
                if why:
                    raise RuntimeError(f"wrong result: {why}")
