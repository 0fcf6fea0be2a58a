"""gpunet's own runners: gpunet through its training engine (eager or CUDA graph) and the GEMM-only bound."""
from __future__ import annotations

import time

import numpy as np

import gpunet as gn
from gpunet import backend, training


class Runner:
    """``run(steps)`` trains ``steps`` optimizer steps and waits for the device; returns seconds."""

    name = "?"
    compile_seconds = None

class GpunetRunner(Runner):
    """gpunet's training step as ``fit`` runs it, on data validated and uploaded once.

    ``fit(X, y)`` validates ``X, y`` on the host and uploads them (``MLP.upload``) at every call, so
    timing ``fit`` would time a full data-set upload per run while the peers' data already sits on the
    device. The constructor therefore does what ``fit`` does before its first step, once: ``_upload``,
    then the ``training.Trainer`` with its workspace, optimizer state and (``gpunet-graph``) CUDA graph.
    ``run`` times only the optimizer steps, dispatched as ``_Trainer.epoch`` dispatches full batches
    (``graph_step`` when a graph is live, else ``step``), on batch indices uploaded before the clock
    starts, as the peers do; fit's per-epoch bookkeeping (rollback snapshot, loss read-back) has no
    counterpart in the peers and is not timed.
    """

    def __init__(self, w, device, dtype, cuda_graph=False):

        self.name = "gpunet-graph" if cuda_graph else "gpunet"
        self.net = net = gn.MLP(w.layers, "relu", "softmax" if w.classification else "linear", device=device,
                                dtype=dtype, seed=0)
        self.w = w
        self.cuda_graph = cuda_graph
        self.opt = gn.Adam(lr=1e-3)
        self.rounds = 0
        loss = net.resolve_loss(None)
        with net.backend.activate():
            Xd, Yd = net.upload(w.X, w.y, loss)
            self.trainer = training.Trainer(net, self.opt, loss, Xd, Yd, None, w.batch_size, shuffle=False, verbose=0)
            self.trainer.allocate(cuda_graph)
            net.backend.synchronize()
        net.optimizer, net.loss = self.opt, loss

    @property
    def extra(self):
        """What the CUDA graph did (replays, captures, fallback reason) for the gpunet-graph row."""
        return {"cuda_graph": self.trainer.graph_summary()} if self.cuda_graph else {}

    def run(self, steps):
        t, be, B = self.trainer, self.net.backend, self.w.batch_size
        order = np.random.default_rng(self.rounds).permutation(steps * B).astype(np.int64)
        self.rounds += 1
        with be.activate(), t.stream(), np.errstate(all="ignore"):
            idx = be.to_device(order)
            be.synchronize()
            t0 = time.perf_counter()
            for s in range(steps):
                rows = idx[s * B:(s + 1) * B]
                if t.graph is not None:
                    t.graph_step(rows, B)
                else:
                    t.step(rows, B)
            be.synchronize()
        return time.perf_counter() - t0

class GemmOnlyRunner(Runner):
    """Only the step's GEMMs (forward, weight gradients, deltas) and the batch gather, on gpunet's
    backend: the bound any implementation on this BLAS / cuBLAS can approach."""

    def __init__(self, w, device, dtype):

        self.name, self.w = "gemm-only", w
        self.be = be = backend.resolve(device)
        rng = np.random.default_rng(0)
        with be.activate():
            self.X = be.to_device(w.X, dtype)
            self.W = [be.to_device(rng.standard_normal((a, b)) * 0.01, dtype) for a, b in zip(w.layers[:-1], w.layers[1:])]
            B = w.batch_size
            self.A = [be.xp.zeros((B, n), dtype=dtype) for n in w.layers]
            self.D = [be.xp.zeros((B, n), dtype=dtype) for n in w.layers]
            self.dW = [be.xp.zeros_like(W) for W in self.W]

    def run(self, steps):
        xp, B = self.be.xp, self.w.batch_size
        with self.be.activate():
            order = self.be.to_device(np.random.default_rng(0).permutation(steps * B).astype(np.int64))
            self.be.synchronize()
            t0 = time.perf_counter()
            for s in range(steps):
                xp.take(self.X, order[s * B:(s + 1) * B], axis=0, out=self.A[0])
                for l, W in enumerate(self.W):
                    xp.matmul(self.A[l], W, out=self.A[l + 1])
                for l in range(len(self.W) - 1, -1, -1):
                    xp.matmul(self.A[l].T, self.A[l + 1] if l == len(self.W) - 1 else self.D[l + 1], out=self.dW[l])
                    if l:
                        xp.matmul(self.D[l + 1] if l < len(self.W) - 1 else self.A[l + 1], self.W[l].T, out=self.D[l])
            self.be.synchronize()
        return time.perf_counter() - t0
