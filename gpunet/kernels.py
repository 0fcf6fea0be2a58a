"""Fused CUDA kernels for the CuPy backend (GPU only), each self-checked at first use.

The kernels live in ``kernels.cu`` beside this file: per-element maths as ``__host__ __device__``
functions plus thin ``__global__`` wrappers, compiled by NVRTC through one ``cupy.RawModule``. The
CPU test suite compiles the same file with ``nvcc`` and runs its maths through a host harness, so only
the launch wrappers need a GPU to test.

**Unverified GPU code must not be able to hurt.** The first time a CUDA backend's primitives are used in
a process (``Backend.ops``), :meth:`CupyOps.self_check` runs every fused kernel once on small inputs in
both dtypes and compares it with the reference :class:`gpunet.ops.ArrayOps` (CuPy's own operations) on the
same device. A kernel that fails to compile, launch or match is switched off for the process, with one
warning naming it, and training uses the reference expressions for it. CUDA graphs are checked the same
way at the first ``fit(cuda_graph=True)`` (:meth:`CupyOps.check_graphs`). :func:`fast_path_status` says
what is live; ``gpunet info`` and ``metrics.json`` show it.

A training step on the GPU (relu hidden layers, softmax cross-entropy, Adam; ``tests/test_gpu_wiring.py``
counts it): two gathers, one GEMM per layer forward, one fused bias+activation kernel per hidden layer and
one bias add for the output, one softmax-cross-entropy kernel (probabilities, delta, and per row the loss
and whether it is classified correctly; the forward pass does not compute the softmax a second time) and one
column sum giving the loss and the accuracy count, per layer a weight-gradient GEMM and a bias-gradient sum,
per hidden layer a delta GEMM and a fused activation-backward kernel, one Adam kernel over the whole flat
parameter buffer, and the loss and count stored: :data:`LAUNCHES_PER_STEP` for three layers.
The loss stays on the device and is read once per epoch.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from gpunet.ops import ArrayOps

log = logging.getLogger("gpunet")

SOURCE_PATH = Path(__file__).with_name("kernels.cu")
ACT_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
TEMPLATED = ("gn_bias_act", "gn_activation", "gn_act_backward", "gn_scale", "gn_adam", "gn_adam_dev", "gn_sgd",
             "gn_softmax_xent", "gn_sigmoid_xent_k", "gn_dropout")
C_TYPES = {"float32": "float", "float64": "double"}
NAME_EXPRESSIONS = tuple(f"{k}<{t}>" for k in TEMPLATED for t in C_TYPES.values())
BLOCK = 256
MAX_GRID = 65535
#: kernel launches (fused kernels, cuBLAS GEMMs and CuPy kernels) per training step of a 3-layer relu /
#: softmax / cross-entropy / Adam network, as counted by the fake CuPy of ``tests/test_gpu_wiring.py``
LAUNCHES_PER_STEP = 23

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
}
#: checked at the first fit(cuda_graph=True), not when the backend starts
GRAPH_PATHS = ("cublas_gemm", "graph_capture")
_REGISTRY = {}  # device name -> CupyOps: what fast_path_status() reports


def source() -> str:
    return SOURCE_PATH.read_text()


def _module(device_id):
    """The compiled kernels of one device (NVRTC, once per process and device; CuPy also caches the
    binary on disk). A compile failure is raised to the self-check, which switches the kernels off."""
    if device_id not in _MODULES:
        import cupy  # noqa: PLC0415  (only the CUDA backend imports this module)

        with cupy.cuda.Device(device_id):
            _MODULES[device_id] = cupy.RawModule(code=source(), options=("--std=c++14",),
                                                 name_expressions=NAME_EXPRESSIONS)
    return _MODULES[device_id]


_MODULES = {}


def _grid(n):
    return (max(1, min((int(n) + BLOCK - 1) // BLOCK, MAX_GRID)),)


def fast_path_status():
    """``{device: {path: {"live": bool or None, "reason": str or None}}}`` for every CUDA backend used in
    this process. ``live`` is None for a graph path not checked yet (checked at the first
    ``fit(cuda_graph=True)``); ``reason`` says why a path is off."""
    return {name: ops.status() for name, ops in _REGISTRY.items()}


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


class CupyOps(ArrayOps):
    """CuPy primitives: cuBLAS into preallocated outputs and the fused kernels of ``kernels.cu``, each
    used only while it passes its self-check (otherwise the reference :class:`ArrayOps` expression)."""

    name = "cuda"

    def __init__(self, backend, check=True):
        super().__init__(backend)
        self._device_id = backend.device.id
        self._buffers = {}
        self._handles = {}
        self.live = {name: name not in GRAPH_PATHS for name in FAST_PATHS}
        self.reasons = {name: None for name in FAST_PATHS}
        self._graphs_checked = False
        self._graph_lock = threading.RLock()  # one graph check; other threads wait for its verdict
        # per thread: the C-API GEMM of the graph this thread is capturing, if any (predict may run in
        # another thread meanwhile: its GEMMs must not be recorded into this thread's graph)
        self._capturing = threading.local()
        self.adam = self._adam
        self.sgd = self._sgd
        _REGISTRY[backend.name] = self
        if check:
            self.self_check()

    def status(self):
        return {name: {"live": self.live[name] if (name not in GRAPH_PATHS or self._graphs_checked) else None,
                       "reason": self.reasons[name]} for name in FAST_PATHS}

    def _switch_off(self, name, reason):
        self.live[name] = False
        self.reasons[name] = reason
        if name == "adam":
            self.adam = None
        elif name == "sgd":
            self.sgd = None

    def _fn(self, name, dtype):
        key = (name, dtype)
        fn = self._handles.get(key)
        if fn is None:  # RawModule.get_function once per kernel and dtype, not per launch
            fn = self._handles[key] = _module(self._device_id).get_function(
                f"{name}<{C_TYPES[np.dtype(dtype).name]}>" if dtype is not None else name)
        return fn

    def _launch(self, name, like, n, *args):
        self._fn(name, like.dtype)(_grid(n), (BLOCK,), args)

    def _scalar(self, like, value):
        return like.dtype.type(value)

    # -- GEMMs, gathers and reductions: cuBLAS / CuPy with out= ----------------------------------
    # While this thread captures a graph the GEMMs go through cuBLAS's C API on the graph's own handle
    # (gpunet/cublas.py): CuPy's own cuBLAS wrappers refuse to run during a capture.
    @property
    def capture_gemm(self):
        """The C-API GEMM of the graph this thread is capturing, or None."""
        return getattr(self._capturing, "gemm", None)

    @capture_gemm.setter
    def capture_gemm(self, gemm):
        self._capturing.gemm = gemm

    def matmul(self, a, b, out):
        if self.capture_gemm is not None:
            return self.capture_gemm(a, b, out)
        return self.xp.matmul(a, b, out=out)

    def matmul_tn(self, a, b, out):
        if self.capture_gemm is not None:
            return self.capture_gemm(a, b, out, True, False)
        return self.xp.matmul(a.T, b, out=out)

    def matmul_nt(self, a, b, out):
        if self.capture_gemm is not None:
            return self.capture_gemm(a, b, out, False, True)
        return self.xp.matmul(a, b.T, out=out)

    def take_rows(self, X, idx, out):
        return self.xp.take(X, idx, axis=0, out=out)

    def sum_rows(self, delta, out):
        return self.xp.sum(delta, axis=0, out=out)

    # -- fused elementwise (each falls back to the reference when switched off) -------------------
    def bias_activation(self, z, b, act):
        if not self.live["bias_activation"]:
            return super().bias_activation(z, b, act)
        return self._k_bias_activation(z, b, act)

    def _k_bias_activation(self, z, b, act):
        self._launch("gn_bias_act", z, z.size, z, b, np.int64(z.size), np.int32(z.shape[1]), np.int32(ACT_CODES[act]))
        return z

    def activation(self, act, z, out):
        if act == "softmax" or not self.live["activation"]:
            return super().activation(act, z, out)
        return self._k_activation(act, z, out)

    def _k_activation(self, act, z, out):
        self._launch("gn_activation", z, z.size, z, out, np.int64(z.size), np.int32(ACT_CODES[act]))
        return out

    def activation_backward(self, delta, a, act):
        if not self.live["activation_backward"]:
            return super().activation_backward(delta, a, act)
        return self._k_activation_backward(delta, a, act)

    def _k_activation_backward(self, delta, a, act):
        if act != "linear":
            self._launch("gn_act_backward", delta, delta.size, delta, a, np.int64(delta.size), np.int32(ACT_CODES[act]))
        return delta

    def scale_(self, a, s):
        if not hasattr(s, "shape") or s.shape != a.shape or not self.live["scale"]:
            return super().scale_(a, s)
        return self._k_scale(a, s)

    def _k_scale(self, a, s):
        self._launch("gn_scale", a, a.size, a, s, np.int64(a.size))
        return a

    def dropout_mask(self, out, rate, rng):
        """Masks from the counter-based generator of ``kernels.cu`` keyed by one draw from the model's
        seeded host dropout generator: reproducible, per model, saved with the model and rolled back with
        an epoch (no device generator state)."""
        seed = int(rng.integers(0, 2 ** 63))
        if not self.live["dropout"]:
            return dropout_reference(self.xp, out, seed, rate)
        return self._k_dropout(out, seed, rate)

    def _k_dropout(self, out, seed, rate):
        self._launch("gn_dropout", out, out.size, out, np.int64(out.size), np.uint64(seed), np.float64(rate),
                     self._scalar(out, 1.0 / (1.0 - rate)))
        return out

    def _fused_loss(self, loss):
        """The live fused kernel for ``loss`` (softmax / sigmoid cross-entropy), or None."""
        if loss == "cross_entropy" and self.live["softmax_xent"]:
            return self._k_softmax_xent
        if loss == "binary_cross_entropy" and self.live["sigmoid_xent"]:
            return self._k_sigmoid_xent
        return None

    def loss_writes_output(self, loss, output_activation):
        """Whether :meth:`loss_delta` writes the output activations itself (the fused softmax / sigmoid
        cross-entropy kernels), so the forward pass of a training step need not compute them first."""
        return self._fused_loss(loss) is not None

    def loss_delta_correct(self, loss, output_activation, z, a, y, delta, count):
        """Softmax-CE: one kernel writes probabilities, delta, and per row the loss and whether the row is
        classified correctly; one column sum gives (loss, number correct). Sigmoid-BCE likewise per element.
        Other losses use the reference expressions."""
        kernel = self._fused_loss(loss)
        if kernel is None:
            return super().loss_delta_correct(loss, output_activation, z, a, y, delta, count)
        sums = kernel(z, y, a, delta)
        return sums[0], (sums[1] if count else None)

    def loss_delta(self, loss, output_activation, z, a, y, delta):
        kernel = self._fused_loss(loss)
        if kernel is None:
            return super().loss_delta(loss, output_activation, z, a, y, delta)
        return kernel(z, y, a, delta)[0]

    def _k_softmax_xent(self, z, y, a, delta):
        rows, k = z.shape
        out = self._row_buffer(rows, z.dtype)
        # per row: the loss scaled by 1/rows and the hit (0 or 1); the column sums are (mean loss, correct)
        self._launch("gn_softmax_xent", z, rows, z, y, a, delta, out, np.int32(rows), np.int32(k),
                     self._scalar(z, 1.0 / rows))
        return self.xp.sum(out, axis=0)

    def _k_sigmoid_xent(self, z, y, a, delta):
        out = self._row_buffer(z.size, z.dtype)
        self._launch("gn_sigmoid_xent_k", z, z.size, z, y, a, delta, out, np.int64(z.size),
                     self._scalar(z, 1.0 / z.size))
        return self.xp.sum(out, axis=0)

    def _row_buffer(self, n, dtype):
        """Scratch (n, 2) for the fused losses: (loss, hit) per row or element, allocated once per (n, dtype)
        (by an eager step, before any graph capture of the same batch size)."""
        key = (n, np.dtype(dtype).name)
        if key not in self._buffers:
            self._buffers[key] = self.xp.empty((n, 2), dtype=dtype)
        return self._buffers[key]

    # -- fused optimizers over the flat buffer -----------------------------------------------------
    def _adam(self, p, g, m, v, vmax, *, lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt, amsgrad, decoupled):
        t = p.dtype.type
        self._launch("gn_adam", p, p.size, p, g, m, v, vmax if amsgrad else m, np.int64(p.size), t(lr), t(beta1),
                     t(beta2), t(eps), t(weight_decay), t(step_size), t(bc2_sqrt), np.int32(amsgrad), np.int32(decoupled))

    def adam_device(self, p, g, m, v, vmax, hp, *, amsgrad, decoupled):
        """Adam with hyper-parameters and step in the device array ``hp`` (for CUDA graphs): advances
        ``hp[5]`` then updates."""
        self._fn("gn_tick", None)((1,), (1,), (hp,))
        self._launch("gn_adam_dev", p, p.size, p, g, m, v, vmax if amsgrad else m, np.int64(p.size), hp,
                     np.int32(amsgrad), np.int32(decoupled))

    def _sgd(self, p, g, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
        t = p.dtype.type
        self._launch("gn_sgd", p, p.size, p, g, buf if buf is not None else p, np.int64(p.size), t(lr), t(momentum),
                     t(dampening), t(weight_decay), np.int32(nesterov), np.int32(first))

    # -- the self-check --------------------------------------------------------------------------
    def self_check(self):
        """Run every fused kernel once per dtype on small inputs against the reference on this device;
        switch off (with one warning naming each) the ones that fail to compile, launch or match."""
        failed = {}
        for name in FAST_PATHS:
            if name in GRAPH_PATHS:
                continue
            for dtype in ("float32", "float64"):
                try:
                    reason = getattr(self, f"_check_{name}")(np.random.default_rng(20260), dtype)
                except Exception as exc:  # compile (NVRTC), launch or driver errors: the path is off
                    reason = _describe(exc)
                if reason:
                    failed[name] = f"{dtype}: {reason}"
                    break
        self._report(failed)
        return self.status()

    def _report(self, failed):
        for name, reason in failed.items():
            self._switch_off(name, reason)
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
        for act in ACT_CODES:
            why = self._compare(act, run(self, act, z.copy(), b, d.copy()), run(ref, act, z.copy(), b, d.copy()),
                                dtype)
            if why:
                return why
        return None

    def _check_bias_activation(self, rng, dtype):
        return self._check_per_activation(rng, dtype, lambda ops, act, z, b, d: (
            ops._k_bias_activation if ops is self else ops.bias_activation)(z, b, act))

    def _check_activation(self, rng, dtype):
        return self._check_per_activation(rng, dtype, lambda ops, act, z, b, d: (
            ops._k_activation if ops is self else ops.activation)(act, z, 0 * z))

    def _check_activation_backward(self, rng, dtype):
        ref = ArrayOps(self.backend)
        return self._check_per_activation(rng, dtype, lambda ops, act, z, b, d: (
            ops._k_activation_backward if ops is self else ops.activation_backward)(
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
        from gpunet import optim  # noqa: PLC0415

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
        from gpunet import optim  # noqa: PLC0415

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
    def check_graphs(self):
        """Check the cuBLAS C-API GEMMs against ``xp.matmul`` and then a small network trained with CUDA
        graphs against eager training, once per process; returns None when graphs can be used, else the
        reason (the failing path is switched off with one warning). Other threads wait for the verdict; the
        check's own fits (this thread, the lock is re-entrant) see the paths it has passed so far."""
        with self._graph_lock:
            return self._check_graphs_locked()

    def _check_graphs_locked(self):
        if self._graphs_checked:
            return self.graph_reason()
        self._graphs_checked = True
        for name in ("adam_device", "sgd"):  # the captured optimizer kernels (their failure was reported)
            if not self.live[name]:
                for path in GRAPH_PATHS:
                    self._switch_off(path, f"not tried: the captured step needs {name}")
                return self.graph_reason()
        failed = {}
        try:
            self._check_cublas_gemm()
            self.live["cublas_gemm"] = True
        except Exception as exc:  # no libcublas, a wrong result, a failed call
            failed["cublas_gemm"] = _describe(exc)
            failed["graph_capture"] = "not tried: the captured GEMMs need cublas_gemm"
        if not failed:
            self.live["graph_capture"] = True  # provisional: the check's own fits capture and replay
            try:
                reason = _check_graph_training(self.backend)
            except Exception as exc:
                reason = _describe(exc)
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

    def _check_cublas_gemm(self):
        """The C-API GEMM on a handle of its own (each graph later gets its own) against ``xp.matmul``."""
        gemm = make_gemm(self.backend)
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


def make_gemm(backend):
    """A :class:`gpunet.cublas.Gemm` on ``backend``'s device, in the effective TF32 mode of CuPy's float32
    GEMMs (so captured and eager steps round alike)."""
    from gpunet import backend as _backend, cublas  # noqa: PLC0415

    with backend.device:
        return cublas.Gemm(backend.xp, tf32=_backend.tf32_effective())


class _FusedOnly:
    """An ops view offering exactly one fused optimizer (for its self-check)."""

    def __init__(self, ops, which):
        self.adam = ops._adam if which == "adam" else None
        self.sgd = ops._sgd if which == "sgd" else None


def _describe(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_graph_training(backend):
    """Train a small network with ``cuda_graph='require'`` and eagerly (Adam, then SGD with momentum), in
    both dtypes, and compare; returns None or the reason the graph path cannot be trusted."""
    from gpunet import backend as _backend, model as _model, optim  # noqa: PLC0415

    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5))
    y = rng.integers(0, 3, 40)
    for dtype in ("float64", "float32"):
        for make in (lambda: optim.Adam(lr=1e-2), lambda: optim.SGD(lr=0.05, momentum=0.9)):
            nets, hists = [], []
            for graph in (False, "require"):
                net = _model.MLP([5, 8, 3], "relu", "softmax", device=backend, dtype=dtype, seed=1)
                hists.append(net.fit(X, y, epochs=2, batch_size=8, optimizer=make(), verbose=0, cuda_graph=graph))
                nets.append(net)
            replays = hists[1].cuda_graph["replays"]
            if replays < 4:
                return f"{replays} graph replays where 7 were expected"
            rtol = (1e-2 if _backend.tf32_effective() else 1e-4) if dtype == "float32" else 1e-9
            for w_eager, w_graph in zip(nets[0].get_weights(), nets[1].get_weights()):
                if not np.allclose(w_graph, w_eager, rtol=rtol, atol=rtol * 0.1):
                    return f"{dtype}: weights after graph replays differ from eager training " \
                           f"(max |diff| {np.max(np.abs(w_graph - w_eager)):.3g})"
    return None


def new_stream(xp):
    """A non-blocking stream for graph capture and replay that first waits for the work already queued on
    the current stream: the data uploads of ``fit`` (``cupy.asarray`` copies asynchronously, and a
    non-blocking stream does not synchronise with the legacy default stream). CuPy API:
    ``cupy/cuda/stream.pyx`` (``Event.record(stream=None)`` records on the current stream,
    ``Stream.wait_event``)."""
    stream = xp.cuda.Stream(non_blocking=True)
    uploaded = xp.cuda.Event(disable_timing=True)
    uploaded.record()
    stream.wait_event(uploaded)
    return stream


def capture_graph(stream, body):
    """Record ``body()`` on ``stream`` as a CUDA graph; temporaries come from a private memory pool that
    is returned with the graph and must live as long as it (cupy#9655). ``begin_capture`` uses
    ``cudaStreamCaptureModeRelaxed`` (``cupy/cuda/stream.pyx``), so that pool may call cudaMalloc."""
    import cupy  # noqa: PLC0415

    pool = cupy.cuda.MemoryPool()
    with cupy.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        try:
            body()
        except BaseException:  # end the capture, but report what broke it (not the invalidated capture)
            try:
                stream.end_capture()
            except Exception:  # noqa: S110  (cudaErrorStreamCaptureInvalidated follows the real error)
                pass
            raise
        graph = stream.end_capture()
    return graph, pool


class GraphStep:
    """One training step for full batches captured as a CUDA graph and replayed (opt-in).

    Hazards handled (``../shared/notes/gpu.md``): capture runs on a non-blocking stream that also
    carries every other training launch (so replays stay ordered with the eager work); every buffer
    the graph reads or writes persists outside it (workspace, flat parameters, optimizer state, the
    static batch-index, loss and hyper-parameter arrays), and temporaries made during capture come from
    a private memory pool kept alive with the graph (cupy#9655); Adam's step count lives in device
    memory and is advanced by a captured kernel; the learning rate is baked in, so a schedule that
    changes it causes a recapture. ``warmup`` steps run eagerly first (NVRTC, CuPy's kernel caches). The
    GEMMs are captured through a cuBLAS handle and workspace of this graph's own (:mod:`gpunet.cublas`).
    """

    def __init__(self, trainer, warmup=3):
        self.t, self.warmup = trainer, warmup
        model = trainer.model
        xp = model.backend.xp
        # the static buffers first: their zero-fills are then ordered before the stream by new_stream's event
        self.idx = xp.zeros((trainer.B,), dtype=xp.int64)
        self.loss_buf = model._zeros(())
        self.correct_buf = model._zeros(())
        self.stream = new_stream(xp)
        self.gemm = None  # this graph's own cuBLAS handle and workspace (concurrent graphs never share one)
        self.graph = self.pool = self.hp = None
        self.lr = None
        self.eager_steps = 0
        self.captures = 0
        self.replays = 0  # graph launches: a test can tell a real replay from a silent eager fallback

    def invalidate(self):
        if self.graph is not None:  # replays still queued use the pool's memory: let them finish first
            self.stream.synchronize()
        self.graph = self.pool = self.hp = None

    def after_eager_step(self):
        """An eager step (the last, partial batch of an epoch) advanced the optimizer on the host: bring
        the device-side step count the captured Adam kernel reads back in line (a fill on the stream)."""
        if self.hp is not None:
            self.hp[5] = float(self.t.opt.step_count)

    def step(self, rows):
        """Train on the full batch ``rows``; returns (loss, correct) as device 0-d arrays."""
        self.idx[...] = rows
        if self.eager_steps < self.warmup:
            self.eager_steps += 1
            return self.t.step(self.idx, self.t.B)
        opt = self.t.opt
        if self.graph is None or self.lr != opt.lr:
            self._capture()
        self.graph.launch(stream=self.stream)
        self.replays += 1
        opt.step_count += 1
        return self.loss_buf, self.correct_buf

    def _body(self):
        t = self.t
        model, ops, opt, ws, B = t.model, t.model.backend.ops, t.opt, t.ws, t.B
        x = ops.take_rows(t.Xd, self.idx, ws.a[0][:B, ...])
        y = ops.take_rows(t.Yd, self.idx, ws.y[:B, ...])
        value, _, correct = model._step_gradients(x, y, ws, t.loss, train=True, count=t.classification)
        if self.hp is not None:
            st = opt.state
            ops.adam_device(model.params, model.grads, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq"),
                            self.hp, amsgrad=opt.amsgrad, decoupled=opt.decoupled)
        else:  # SGD: every scalar is fixed after the first step
            ops.sgd(model.params, model.grads, opt.state.get("momentum_buffer"), lr=opt.lr, momentum=opt.momentum,
                    dampening=opt.dampening, weight_decay=opt.weight_decay, nesterov=opt.nesterov, first=False)
        self.loss_buf[...] = value
        if t.classification:
            self.correct_buf[...] = correct

    def _capture(self):
        opt = self.t.opt
        ops = self.t.model.backend.ops
        self.invalidate()
        reason = ops.graph_reason()
        if reason:
            raise RuntimeError(reason)
        if hasattr(opt, "betas"):
            b1, b2 = opt.betas
            # hp[5] is the step count *before* the captured tick increments it
            self.hp = self.t.model.backend.to_device(
                np.array([opt.lr, b1, b2, opt.eps, opt.weight_decay, opt.step_count], dtype=np.float64))
        if self.gemm is None:
            self.gemm = make_gemm(self.t.model.backend)
        from gpunet import backend as _backend  # noqa: PLC0415

        self.gemm.set_tf32(_backend.tf32_effective())  # round as CuPy's eager GEMMs do now
        self.gemm.bind(self.stream.ptr)  # stream, then workspace, before the capture begins
        ops.capture_gemm = self.gemm  # the step's GEMMs through cuBLAS's C API (CuPy's refuse to capture)
        try:
            self.graph, self.pool = capture_graph(self.stream, self._body)
        finally:
            ops.capture_gemm = None
        self.lr = opt.lr
        self.captures += 1
