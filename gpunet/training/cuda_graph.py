"""Training steps replayed as CUDA graphs: :class:`GraphStep`, and the once-per-process check that graph
training equals eager training (:func:`check_graphs`). Graph plumbing (streams, capture, the C-API GEMM) is
in :mod:`gpunet.ops.cuda.graphs`; this module knows the trainer."""
from __future__ import annotations

import numpy as np

from gpunet import optim
from gpunet import backend as _backend
from gpunet.ops.cuda import graphs


def check_graphs(ops, model_type):
    """Whether graphs can be used with ``ops`` (a :class:`gpunet.ops.cuda.CupyOps`): None, or the reason.
    The first call in a process runs the check; ``model_type`` builds the small networks it trains."""
    return ops.check_graphs(lambda backend: check_graph_training(model_type, backend))


def check_graph_training(model_type, backend):
    """Train a small network of ``model_type`` (:class:`gpunet.MLP`) with ``cuda_graph='require'`` and eagerly (Adam, then SGD with momentum), in
    both dtypes, and compare; returns None or the reason the graph path cannot be trusted."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 5))
    y = rng.integers(0, 3, 40)
    for dtype in ("float64", "float32"):
        for make in (lambda: optim.Adam(lr=1e-2), lambda: optim.SGD(lr=0.05, momentum=0.9)):
            nets, hists = [], []
            for graph in (False, "require"):
                net = model_type([5, 8, 3], "relu", "softmax", device=backend, dtype=dtype, seed=1)
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
        self.loss_buf = model.zeros(())
        self.correct_buf = model.zeros(())
        self.stream = graphs.new_stream(xp)
        self.gemm = None  # this graph's own cuBLAS handle and workspace (concurrent graphs never share one)
        self.graph = self.pool = self.hp = None
        self.lr = None
        self.eager_steps = 0
        self.captures = 0
        self.replays = 0  # graph launches: a test can tell a real replay from a silent eager fallback

    def close(self):
        """Release the graph, its pool, cuBLAS handle and stream now (not at some later garbage-collector pass,
        which might fall inside another capture), after the queued replays finish; breaks the trainer <->
        step reference. Called when ``fit`` finishes and when the graph path falls back to eager launches."""
        if self.stream is not None:
            self.stream.synchronize()
        if self.gemm is not None:
            self.gemm.close()
        self.graph = self.pool = self.hp = self.gemm = None
        self.stream = None
        self.t = None

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
        model, ops, opt, ws, B = t.model, t.model.ops, t.opt, t.ws, t.B
        x = ops.take_rows(t.Xd, self.idx, ws.a[0][:B, ...])
        y = ops.take_rows(t.Yd, self.idx, ws.y[:B, ...])
        value, _, correct = model.step_gradients(x, y, ws, t.loss, train=True, count=t.classification)
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
        ops = self.t.model.ops
        self.invalidate()
        reason = ops.graph_reason()
        if reason:
            raise RuntimeError(reason)
        if hasattr(opt, "betas"):
            b1, b2 = opt.betas
            # hp[5] is the step count *before* the captured tick increments it
            self.hp = self.t.model.backend.to_device(
                np.array([opt.lr, b1, b2, opt.eps, opt.weight_decay, opt.step_count], dtype=np.float64))
        fresh = self.gemm is None
        if fresh:
            self.gemm = graphs.make_gemm(self.t.model.backend)
        self.gemm.set_tf32(_backend.tf32_effective())  # round as CuPy's eager GEMMs do now
        self.gemm.bind(self.stream.ptr)  # stream, then workspace, before the capture begins
        if fresh:  # a new handle's lazy set-up and first kernel load happen now, not inside the capture
            with self.stream:
                a = self.t.model.zeros((2, 2))
                self.gemm(a, a, self.t.model.zeros((2, 2)))
        ops.capture_gemm = self.gemm  # the step's GEMMs through cuBLAS's C API (CuPy's refuse to capture)
        try:
            self.graph, self.pool = graphs.capture_graph(self.stream, self._body)
        finally:
            ops.capture_gemm = None
        self.lr = opt.lr
        self.captures += 1
