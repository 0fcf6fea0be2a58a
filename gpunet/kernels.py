"""Fused CUDA kernels for the CuPy backend (GPU only).

The kernels live in ``kernels.cu`` beside this file: per-element maths as ``__host__ __device__``
functions plus thin ``__global__`` wrappers, compiled by NVRTC through one ``cupy.RawModule``. The
CPU test suite compiles the same file with ``nvcc`` and runs its maths through a host harness, so only
the launch wrappers need a GPU to test.

A training step on the GPU is then: cuBLAS GEMMs into preallocated views, one fused bias+activation
kernel per hidden layer, one fused activation-backward kernel per hidden layer, one softmax-cross-
entropy kernel (loss, probabilities and delta), column sums for the bias gradients, and one optimizer
kernel over the whole flat parameter buffer — about 17 launches for three layers instead of 60–90.
The loss stays on the device and is read once per epoch.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from gpunet import losses
from gpunet.ops import ArrayOps

SOURCE_PATH = Path(__file__).with_name("kernels.cu")
ACT_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
TEMPLATED = ("gn_bias_act", "gn_activation", "gn_act_backward", "gn_scale", "gn_adam", "gn_adam_dev", "gn_sgd",
             "gn_softmax_xent", "gn_sigmoid_xent_k")
C_TYPES = {"float32": "float", "float64": "double"}
NAME_EXPRESSIONS = tuple(f"{k}<{t}>" for k in TEMPLATED for t in C_TYPES.values())
BLOCK = 256
MAX_GRID = 65535


def source() -> str:
    return SOURCE_PATH.read_text()


@functools.lru_cache(maxsize=None)
def _module(device_id):
    import cupy  # noqa: PLC0415  (only the CUDA backend imports this module)

    with cupy.cuda.Device(device_id):
        return cupy.RawModule(code=source(), options=("--std=c++14",), name_expressions=NAME_EXPRESSIONS)


def _grid(n):
    return (max(1, min((int(n) + BLOCK - 1) // BLOCK, MAX_GRID)),)


class CupyOps(ArrayOps):
    """CuPy primitives: cuBLAS into preallocated outputs and the fused kernels of ``kernels.cu``."""

    name = "cuda"

    def __init__(self, backend):
        super().__init__(backend)
        self._device_id = backend.device.id
        self._buffers = {}
        self._rng = None
        self.adam = self._adam
        self.sgd = self._sgd

    def _fn(self, name, dtype):
        return _module(self._device_id).get_function(f"{name}<{C_TYPES[np.dtype(dtype).name]}>")

    def _launch(self, name, like, n, *args):
        self._fn(name, like.dtype)(_grid(n), (BLOCK,), args)

    def _scalar(self, like, value):
        return like.dtype.type(value)

    # -- GEMMs, gathers and reductions: cuBLAS / CuPy with out= ----------------------------------
    def matmul(self, a, b, out):
        return self.xp.matmul(a, b, out=out)

    def matmul_tn(self, a, b, out):
        return self.xp.matmul(a.T, b, out=out)

    def matmul_nt(self, a, b, out):
        return self.xp.matmul(a, b.T, out=out)

    def take_rows(self, X, idx, out):
        return self.xp.take(X, idx, axis=0, out=out)

    def sum_rows(self, delta, out):
        return self.xp.sum(delta, axis=0, out=out)

    # -- fused elementwise ------------------------------------------------------------------------
    def bias_activation(self, z, b, act):
        self._launch("gn_bias_act", z, z.size, z, b, np.int64(z.size), np.int32(z.shape[1]), np.int32(ACT_CODES[act]))
        return z

    def activation(self, act, z, out):
        if act == "softmax":
            return super().activation(act, z, out)
        self._launch("gn_activation", z, z.size, z, out, np.int64(z.size), np.int32(ACT_CODES[act]))
        return out

    def activation_backward(self, delta, a, act):
        if act != "linear":
            self._launch("gn_act_backward", delta, delta.size, delta, a, np.int64(delta.size), np.int32(ACT_CODES[act]))
        return delta

    def scale_(self, a, s):
        if not hasattr(s, "shape") or s.shape != a.shape:
            a *= s
            return a
        self._launch("gn_scale", a, a.size, a, s, np.int64(a.size))
        return a

    def dropout_mask(self, out, rate, rng):
        """Masks from CuPy's device generator, seeded once from the model's host dropout generator."""
        if self._rng is None:
            self._rng = self.xp.random.default_rng(int(rng.integers(2 ** 63)))
        keep = 1.0 - rate
        out[...] = self.xp.floor(self._rng.random(out.shape, dtype=out.dtype) + keep) * (1.0 / keep)
        return out

    def loss_delta(self, loss, output_activation, z, a, y, delta):
        """Softmax-CE: one kernel writes probabilities, delta and per-row losses (then one sum);
        sigmoid-BCE likewise per element. Other losses use the reference expressions."""
        rows, k = z.shape
        if loss == "cross_entropy":
            row_loss = self._row_buffer(rows, z.dtype)
            self._launch("gn_softmax_xent", z, rows, z, y, a, delta, row_loss, np.int32(rows), np.int32(k),
                         self._scalar(z, 1.0 / rows))
            return self.xp.sum(row_loss) / rows
        if loss == "binary_cross_entropy":
            elem = self._row_buffer(z.size, z.dtype)
            self._launch("gn_sigmoid_xent_k", z, z.size, z, y, a, delta, elem, np.int64(z.size),
                         self._scalar(z, 1.0 / z.size))
            return self.xp.sum(elem) / z.size
        delta[...] = losses.delta(loss, output_activation, z, a, y)
        return losses.value(loss, z, a, y)

    def _row_buffer(self, n, dtype):
        """A scratch vector of n losses, allocated once per (n, dtype)."""
        key = (n, np.dtype(dtype).name)
        if key not in self._buffers:
            self._buffers[key] = self.xp.empty((n,), dtype=dtype)
        return self._buffers[key]

    # -- fused optimizers over the flat buffer -----------------------------------------------------
    def _adam(self, p, g, m, v, vmax, *, lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt, amsgrad, decoupled):
        t = p.dtype.type
        self._launch("gn_adam", p, p.size, p, g, m, v, vmax if amsgrad else m, np.int64(p.size), t(lr), t(beta1),
                     t(beta2), t(eps), t(weight_decay), t(step_size), t(bc2_sqrt), np.int32(amsgrad), np.int32(decoupled))

    def adam_device(self, p, g, m, v, vmax, hp, *, amsgrad, decoupled):
        """Adam with hyper-parameters and step in the device array ``hp`` (for CUDA graphs): advances
        ``hp[5]`` then updates."""
        _module(self._device_id).get_function("gn_tick")((1,), (1,), (hp,))
        self._launch("gn_adam_dev", p, p.size, p, g, m, v, vmax if amsgrad else m, np.int64(p.size), hp,
                     np.int32(amsgrad), np.int32(decoupled))

    def _sgd(self, p, g, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
        t = p.dtype.type
        self._launch("gn_sgd", p, p.size, p, g, buf if buf is not None else p, np.int64(p.size), t(lr), t(momentum),
                     t(dampening), t(weight_decay), np.int32(nesterov), np.int32(first))


def new_stream():
    import cupy  # noqa: PLC0415

    return cupy.cuda.Stream(non_blocking=True)


def capture_graph(stream, body):
    """Record ``body()`` on ``stream`` as a CUDA graph; temporaries come from a private memory pool that
    is returned with the graph and must live as long as it (cupy#9655)."""
    import cupy  # noqa: PLC0415

    pool = cupy.cuda.MemoryPool()
    with cupy.cuda.using_allocator(pool.malloc):
        stream.begin_capture()
        try:
            body()
        finally:
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
    changes it causes a recapture. ``warmup`` steps run eagerly first (JIT, cuBLAS heuristics).
    """

    def __init__(self, trainer, warmup=3):
        self.t, self.warmup = trainer, warmup
        model = trainer.model
        xp = model.backend.xp
        self.stream = new_stream()
        self.idx = xp.zeros((trainer.B,), dtype=xp.int64)
        self.loss_buf = model._zeros(())
        self.correct_buf = model._zeros(())
        self.graph = self.pool = self.hp = None
        self.lr = None
        self.eager_steps = 0
        self.captures = 0
        self.replays = 0  # graph launches: a test can tell a real replay from a silent eager fallback

    def invalidate(self):
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
        value, a_out = model._step_gradients(x, y, ws, t.loss, train=True)
        if self.hp is not None:
            st = opt.state
            ops.adam_device(model.params, model.grads, st["exp_avg"], st["exp_avg_sq"], st.get("max_exp_avg_sq"),
                            self.hp, amsgrad=opt.amsgrad, decoupled=opt.decoupled)
        else:  # SGD: every scalar is fixed after the first step
            ops.sgd(model.params, model.grads, opt.state.get("momentum_buffer"), lr=opt.lr, momentum=opt.momentum,
                    dampening=opt.dampening, weight_decay=opt.weight_decay, nesterov=opt.nesterov, first=False)
        self.loss_buf[...] = value
        if t.classification:
            self.correct_buf[...] = ops.correct(t.loss, a_out, y)

    def _capture(self):
        opt = self.t.opt
        self.invalidate()
        if hasattr(opt, "betas"):
            b1, b2 = opt.betas
            # hp[5] is the step count *before* the captured tick increments it
            self.hp = self.t.model.backend.to_device(
                np.array([opt.lr, b1, b2, opt.eps, opt.weight_decay, opt.step_count], dtype=np.float64))
        self.graph, self.pool = capture_graph(self.stream, self._body)
        self.lr = opt.lr
        self.captures += 1
