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

A training step on the GPU (relu hidden layers, softmax cross-entropy, Adam; ``tests/unit/test_cuda_wiring.py``
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

from gpunet.ops.codes import ACT_CODES, ELEMENTWISE
import gpunet.ops.cuda.cublas as cublas
from gpunet.ops.cuda.selfcheck import SelfCheck, dropout_reference
from gpunet.ops.reference import ArrayOps

log = logging.getLogger("gpunet")

SOURCE_PATH = Path(__file__).with_name("kernels.cu")
TEMPLATED = ("gn_bias_act", "gn_activation", "gn_act_backward", "gn_scale", "gn_adam", "gn_adam_dev", "gn_sgd",
             "gn_softmax_xent", "gn_sigmoid_xent_k", "gn_dropout")
C_TYPES = {"float32": "float", "float64": "double"}
NAME_EXPRESSIONS = tuple(f"{k}<{t}>" for k in TEMPLATED for t in C_TYPES.values())
BLOCK = 256
MAX_GRID = 65535
#: kernel launches (fused kernels, cuBLAS GEMMs and CuPy kernels) per training step of a 3-layer relu /
#: softmax / cross-entropy / Adam network, as counted by the fake CuPy of ``tests/unit/test_cuda_wiring.py``
LAUNCHES_PER_STEP = 23

_REGISTRY = {}  # device name -> CupyOps: what fast_path_status() reports


def source() -> str:
    return SOURCE_PATH.read_text()


def _module(device_id):
    """The compiled kernels of one device (NVRTC, once per process and device; CuPy also caches the
    binary on disk). A compile failure is raised to the self-check, which switches the kernels off."""
    if device_id not in _MODULES:
        import cupy  # noqa: PLC0415  (optional extra: only the CUDA backend imports this module)

        # no --std option: CuPy then compiles with its default, C++17 (cupy/_core/core.pyx,
        # _get_cupy_compiler_options, v14.2)

        with cupy.cuda.Device(device_id):
            _MODULES[device_id] = cupy.RawModule(code=source(), name_expressions=NAME_EXPRESSIONS)
    return _MODULES[device_id]


_MODULES = {}


def _grid(n):
    return (max(1, min((int(n) + BLOCK - 1) // BLOCK, MAX_GRID)),)


def fast_path_status():
    """``{device: {path: {"live": bool or None, "reason": str or None}}}`` for every CUDA backend used in
    this process. ``live`` is None for a graph path not checked yet (checked at the first
    ``fit(cuda_graph=True)``); ``reason`` says why a path is off."""
    return {name: ops.status() for name, ops in _REGISTRY.items()}


class CupyOps(SelfCheck, ArrayOps):
    """CuPy primitives: cuBLAS into preallocated outputs and the fused kernels of ``kernels.cu``, each
    used only while it passes its self-check (otherwise the reference :class:`ArrayOps` expression)."""

    name = "cuda"

    def __init__(self, backend, check=True):
        super().__init__(backend)
        self._device_id = backend.device.id
        self._buffers = {}
        self._handles = {}
        self._init_checks()
        # per thread: the C-API GEMM of the graph this thread is capturing, if any (predict may run in
        # another thread meanwhile: its GEMMs must not be recorded into this thread's graph)
        self._capturing = threading.local()
        self._said = set()
        self.adam = self.fused_adam
        self.sgd = self.fused_sgd
        _REGISTRY[backend.name] = self
        if check:
            self.self_check()

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

    def batched_matmul(self, a, b, out=None, ta=False, tb=False):
        """:meth:`ArrayOps.batched_matmul` through cuBLAS's strided-batched GEMM (:meth:`cublas.Gemm.batched`),
        which reads a stack's weight views and writes its gradient views in place, transposes as flags: CuPy's
        batched ``matmul`` copies each operand that is not contiguous as a whole, every call (the weights are
        column blocks of the flat (K, n_params) buffer; a transpose is a strided view). Full float32 math, as
        CuPy's batched ``matmul`` always computes (its handle stays in the default math mode, whatever
        ``CUPY_TF32`` says), so the two paths round alike. The reference runs when the path is off, while this
        thread captures a graph, or for operands it does not take (said once each): other or mixed dtypes, an
        empty dimension, matrices that are not each C-contiguous, an output whose matrices overlap or that shares
        memory with an input."""
        gemm = self.batched_gemm() if self.capture_gemm is None else None
        if gemm is None:
            return super().batched_matmul(a, b, out, ta, tb)
        why = self._batched_refusal(a, b, out)
        if why:
            if why not in self._said:
                self._said.add(why)
                log.info("gpunet: a batched GEMM runs through CuPy's matmul (copying its operands): %s", why)
            return super().batched_matmul(a, b, out, ta, tb)
        if out is None:
            out = self.xp.empty((max(a.shape[0], b.shape[0]), a.shape[2] if ta else a.shape[1],
                                 b.shape[1] if tb else b.shape[2]), dtype=a.dtype)
        gemm.set_tf32(False)
        gemm.bind(self.xp.cuda.get_current_stream().ptr)
        return gemm.batched(a, b, out, ta, tb)

    def _batched_refusal(self, a, b, out):
        """Why :meth:`batched_matmul` hands these operands to the reference, or None."""
        operands = (a, b) if out is None else (a, b, out)
        if len({np.dtype(x.dtype) for x in operands}) > 1 or np.dtype(a.dtype) not in (np.float32, np.float64):
            return f"dtypes {', '.join(str(x.dtype) for x in operands)}"
        if not all(cublas.matrices_contiguous(x) for x in operands):
            return "an operand's matrices are not each C-contiguous, or a dimension is empty"
        if out is not None:
            if out.shape[0] > 1 and out.strides[0] < out.shape[1] * out.shape[2] * out.dtype.itemsize:
                return "the output's matrices overlap"
            if self.xp.may_share_memory(out, a) or self.xp.may_share_memory(out, b):
                return "the output shares memory with an input"
        return None

    def take_rows(self, X, idx, out):
        return self.xp.take(X, idx, axis=0, out=out)

    def sum_rows(self, delta, out):
        return self.xp.sum(delta, axis=0, out=out)

    # -- fused elementwise (each falls back to the reference when switched off) -------------------
    def bias_activation(self, z, b, act):
        if not self.live["bias_activation"] or act not in ELEMENTWISE:
            return super().bias_activation(z, b, act)
        return self._k_bias_activation(z, b, act)

    def _k_bias_activation(self, z, b, act):
        self._launch("gn_bias_act", z, z.size, z, b, np.int64(z.size), np.int32(z.shape[1]), np.int32(ACT_CODES[act]))
        return z

    def activation(self, act, z, out):
        if act not in ELEMENTWISE or not self.live["activation"]:
            return super().activation(act, z, out)
        return self._k_activation(act, z, out)

    def _k_activation(self, act, z, out):
        self._launch("gn_activation", z, z.size, z, out, np.int64(z.size), np.int32(ACT_CODES[act]))
        return out

    def activation_backward(self, delta, a, act):
        if not self.live["activation_backward"] or act not in ELEMENTWISE:
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
    def fused_adam(self, p, g, m, v, vmax, *, lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt, amsgrad, decoupled):
        t = p.dtype.type
        self._launch("gn_adam", p, p.size, p, g, m, v, vmax if amsgrad else m, np.int64(p.size), t(lr), t(beta1),
                     t(beta2), t(eps), t(weight_decay), t(step_size), t(bc2_sqrt), np.int32(amsgrad), np.int32(decoupled))

    def adam_device(self, p, g, m, v, vmax, hp, *, amsgrad, decoupled):
        """Adam with hyper-parameters and step in the device array ``hp`` (for CUDA graphs): advances
        ``hp[5]`` then updates."""
        self._fn("gn_tick", None)((1,), (1,), (hp,))
        self._launch("gn_adam_dev", p, p.size, p, g, m, v, vmax if amsgrad else m, np.int64(p.size), hp,
                     np.int32(amsgrad), np.int32(decoupled))

    def fused_sgd(self, p, g, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
        t = p.dtype.type
        self._launch("gn_sgd", p, p.size, p, g, buf if buf is not None else p, np.int64(p.size), t(lr), t(momentum),
                     t(dampening), t(weight_decay), np.int32(nesterov), np.int32(first))
