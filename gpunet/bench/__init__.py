"""``gpunet bench``: training throughput of gpunet against its peers, interleaved in one process.

Workloads: MNIST 784-512-256-10 (ReLU, softmax cross-entropy, Adam lr 1e-3) at several batch sizes,
and the seed's small regression net [1, 50 x 9, 1] (ReLU, MSE, Adam) at batch 20. Every
implementation trains the same architecture in the same dtype with the same optimizer on data already
resident on its device, with ``steps`` optimizer steps per timed run after a warm-up; runs of the
different implementations alternate (``repeats`` rounds) and the median is reported. Ratios are
gpunet's median throughput over each peer's, measured in the same run.

Like for like: every implementation uploads (gpunet: validates and uploads) its data once, in its
runner's constructor; a timed run is its optimizer steps only, on batch indices prepared before the
clock starts. Floating point: full float32 matmuls everywhere unless ``--tf32`` (CuPy/gpunet, PyTorch
and JAX alike); the report records the mode each library actually uses (``tf32``). JAX runs without
preallocating GPU memory. Each workload row carries the GEMM-only bound (``gemm-only``: the step's
GEMMs and batch gather alone) and every implementation's throughput as a fraction of it.

Robustness: a runner that raises (out of memory included) becomes an ``{"error": "Type: message"}``
cell and the others go on; the JSON and Markdown reports are rewritten atomically after every workload.

Peers (each skipped with a note when its package is missing):
- ``numpy``: a textbook NumPy MLP (allocating forward/backward, Adam as whole-array expressions);
- ``torch``: PyTorch eager with ``Adam(fused=True)`` where supported (else ``foreach``);
- ``torch-compile``: ``torch.compile`` of the step (GPU: ``mode="reduce-overhead"``), opt-in ``--compile``;
- ``jax``: the whole step (batch gather, forward, grad, Adam) in one ``jax.jit``;
- ``sklearn``: ``MLPClassifier``/``MLPRegressor`` ``partial_fit`` (Adam), CPU only;
- ``gemm-only``: just the step's GEMMs and the batch gather on gpunet's backend (the BLAS/cuBLAS bound);
- ``gpunet-graph`` (GPU): gpunet replaying its training step as a CUDA graph.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import gpunet as gn
from gpunet import backend, datasets, plot, training
from gpunet._files import atomic_write
from gpunet.nn.initializers import initial_weights

MNIST_LAYERS = [784, 512, 256, 10]
SMALL_LAYERS = [1] + [50] * 9 + [1]


def flops_per_sample(layers):
    """Training FLOPs per sample: forward and weight-gradient GEMMs, plus the delta GEMMs of layers 2..L."""
    pairs = list(zip(layers[:-1], layers[1:]))
    gemm = sum(2 * a * b for a, b in pairs)
    return 2 * gemm + sum(2 * a * b for a, b in pairs[1:])


# ----------------------------------------------------------------------------- workloads
class Workload:
    def __init__(self, name, layers, batch_size, X, y, classification):
        self.name, self.layers, self.batch_size = name, layers, batch_size
        self.X, self.y, self.classification = X, y, classification


def mnist_workload(batch_size, n_rows):

    (X, y), _ = datasets.load_mnist()
    reps = -(-n_rows // len(X))
    X, y = np.concatenate([X] * reps)[:n_rows], np.concatenate([y] * reps)[:n_rows]
    return Workload(f"mnist-b{batch_size}", MNIST_LAYERS, batch_size, X, y, True)


def small_workload(batch_size, n_rows):

    X, y = datasets.sinc(n_rows, seed=0)
    return Workload(f"sinc-b{batch_size}", SMALL_LAYERS, batch_size, X.astype(np.float32), y.astype(np.float32), False)


# ----------------------------------------------------------------------------- implementations
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


class NumpyRunner(Runner):
    """The textbook NumPy MLP: what gpunet replaces."""

    def __init__(self, w, dtype):
        self.name = "numpy"
        self.w, self.dtype = w, np.dtype(dtype)
        self.params = [p.astype(dtype) for p in initial_weights(w.layers, rng=0)]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0
        self.X = w.X.astype(dtype)
        self.Y = np.eye(w.layers[-1], dtype=dtype)[w.y] if w.classification else w.y.astype(dtype)

    def step(self, x, y):
        Ws, bs = self.params[0::2], self.params[1::2]
        acts = [x]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = acts[-1] @ W + b
            acts.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
        out = acts[-1]
        if self.w.classification:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            delta = (p - y) / len(x)
        else:
            delta = 2 * (out - y) / out.size
        grads = [None] * len(self.params)
        for i in range(len(Ws) - 1, -1, -1):
            grads[2 * i] = acts[i].T @ delta
            grads[2 * i + 1] = delta.sum(axis=0)
            if i:
                delta = (delta @ Ws[i].T) * (acts[i] > 0)
        self.t += 1
        b1, b2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr / (1 - b1 ** self.t)) * m / (np.sqrt(v / (1 - b2 ** self.t)) + eps)

    def run(self, steps):
        B = self.w.batch_size
        order = np.random.default_rng(self.t).permutation(steps * B)
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * B:(s + 1) * B]
            self.step(self.X[idx], self.Y[idx])
        return time.perf_counter() - t0


class TorchRunner(Runner):
    def __init__(self, w, device, dtype, compile_mode=None):
        import torch  # noqa: PLC0415

        self.torch = torch
        self.w = w
        self.dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
        tdtype = getattr(torch, dtype)
        layers = []
        for i, (a, b) in enumerate(zip(w.layers[:-1], w.layers[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(w.layers) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(self.dev, tdtype)
        try:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
            self.fused = "fused"
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, foreach=True)
            self.fused = "foreach"
        self.X = torch.tensor(w.X, dtype=tdtype, device=self.dev)
        self.y = torch.tensor(w.y, device=self.dev) if w.classification else torch.tensor(w.y, dtype=tdtype, device=self.dev)
        self.loss_fn = torch.nn.CrossEntropyLoss() if w.classification else torch.nn.MSELoss()
        step = self._step
        self.name = "torch"
        if compile_mode:
            self.name = "torch-compile"
            step = torch.compile(step, mode=compile_mode)
        self.step = step
        self.gen = torch.Generator(device="cpu").manual_seed(0)

    def _step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def run(self, steps):
        B = self.w.batch_size
        order = self.torch.randperm(steps * B, generator=self.gen).to(self.dev)
        self.sync()
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * B:(s + 1) * B]
            self.step(self.X.index_select(0, idx), self.y.index_select(0, idx))
        self.sync()
        return time.perf_counter() - t0


class JaxRunner(Runner):
    def __init__(self, w, device, dtype):
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        self.name, self.w, self.jax = "jax", w, jax
        platform_ = "gpu" if device.startswith("cuda") else "cpu"
        self.dev = jax.devices(platform_)[0]
        flat = [p.astype(dtype) for p in initial_weights(w.layers, rng=0)]
        params = list(zip(flat[0::2], flat[1::2]))
        put = lambda t: jax.device_put(t, self.dev)  # noqa: E731
        self.params = put(params)
        self.m = put(jax.tree_util.tree_map(np.zeros_like, params))
        self.v = put(jax.tree_util.tree_map(np.zeros_like, params))
        self.t = 0
        self.X = put(w.X.astype(dtype))
        self.Y = put(np.eye(w.layers[-1], dtype=dtype)[w.y] if w.classification else w.y.astype(dtype))
        classification = w.classification

        def loss(params, x, y):
            a = x
            for W, b in params[:-1]:
                a = jax.nn.relu(a @ W + b)
            W, b = params[-1]
            z = a @ W + b
            if classification:
                return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(z), axis=1))
            return jnp.mean((z - y) ** 2)

        B = w.batch_size

        def step(params, m, v, t, X, Y, order, s):
            idx = jax.lax.dynamic_slice(order, (s * B,), (B,))  # the batch gather is inside the jit too
            x, y = jnp.take(X, idx, axis=0), jnp.take(Y, idx, axis=0)
            g = jax.grad(loss)(params, x, y)
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            ss = 1e-3 / (1 - 0.9 ** t)
            bc2 = jnp.sqrt(1 - 0.999 ** t)
            params = jax.tree_util.tree_map(lambda p, m, v: p - ss * m / (jnp.sqrt(v) / bc2 + 1e-8), params, m, v)
            return params, m, v

        self.step = jax.jit(step, donate_argnums=(0, 1, 2))
        order0 = jax.device_put(np.arange(len(w.X)), self.dev)
        t0 = time.perf_counter()
        out = self.step(self.params, self.m, self.v, 1.0, self.X, self.Y, order0, 0)
        jax.block_until_ready(out)
        self.compile_seconds = time.perf_counter() - t0
        self.params, self.m, self.v = out
        self.t = 1

    def run(self, steps):
        order = self.jax.device_put(np.random.default_rng(self.t).permutation(steps * self.w.batch_size), self.dev)
        self.jax.block_until_ready(order)  # the index upload is not timed (as for the other runners)
        t0 = time.perf_counter()
        for s in range(steps):
            self.t += 1
            self.params, self.m, self.v = self.step(self.params, self.m, self.v, float(self.t), self.X, self.Y, order, s)
        self.jax.block_until_ready(self.params)
        return time.perf_counter() - t0


class SklearnRunner(Runner):
    """scikit-learn on the host; ``partial_fit`` checks its input at every call (its only training API)."""

    def __init__(self, w, dtype):
        from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: PLC0415

        self.name, self.w = "sklearn", w
        cls = MLPClassifier if w.classification else MLPRegressor
        self.model = cls(hidden_layer_sizes=tuple(w.layers[1:-1]), activation="relu", solver="adam",
                         learning_rate_init=1e-3, batch_size=w.batch_size, alpha=0.0, shuffle=True, random_state=0)
        self.X = w.X.astype(dtype)
        self.y = w.y if w.classification else w.y.ravel()
        self.classes = np.arange(w.layers[-1]) if w.classification else None

    def run(self, steps):
        n = steps * self.w.batch_size
        t0 = time.perf_counter()
        if self.classes is not None:
            self.model.partial_fit(self.X[:n], self.y[:n], classes=self.classes)
        else:
            self.model.partial_fit(self.X[:n], self.y[:n])
        return time.perf_counter() - t0


def describe(exc):
    """A report cell for a runner that raised: ``"Type: message"``."""
    return f"{type(exc).__name__}: {exc}"


def make_runners(w, device, dtype, peers, compile_=False, notes=None, errors=None):
    """gpunet's runner, then one per peer that can run here.

    A peer whose package is missing is skipped with a note in ``notes``; a runner (gpunet's included)
    whose set-up raises, out of memory included, is left out and recorded in ``errors`` as
    ``{name: "Type: message"}``."""
    notes = notes if notes is not None else []
    errors = errors if errors is not None else {}
    gpu = device.startswith("cuda")
    factories = {
        "gpunet": lambda: GpunetRunner(w, device, dtype),
        "gpunet-graph": (lambda: GpunetRunner(w, device, dtype, cuda_graph=True)) if gpu else None,
        "gemm-only": lambda: GemmOnlyRunner(w, device, dtype),
        "numpy": (lambda: NumpyRunner(w, dtype)) if not gpu else None,
        "torch": lambda: TorchRunner(w, device, dtype),
        "torch-compile": (lambda: TorchRunner(w, device, dtype, "reduce-overhead" if gpu else "default")) if compile_ else None,
        "jax": lambda: JaxRunner(w, device, dtype),
        "sklearn": (lambda: SklearnRunner(w, dtype)) if not gpu else None,
    }
    runners = []
    for peer in dict.fromkeys(["gpunet", *peers]):
        make = factories.get(peer)
        if make is None:
            continue
        try:
            t0 = time.perf_counter()
            r = make()
            if r.compile_seconds is None and peer == "torch-compile":
                r.run(3)
                r.compile_seconds = time.perf_counter() - t0
            runners.append(r)
        except ImportError as exc:
            note = f"{peer}: skipped ({exc})"
            if note not in notes:
                notes.append(note)
        except Exception as exc:  # this cell is an error; the other runners go on
            errors[peer] = describe(exc)
    return runners


def measure(runners, steps, repeats, warmup, errors=None):
    """Interleaved rounds; returns ``{name: [samples/s per round]}``.

    A runner that raises (out of memory included) is recorded in ``errors`` as ``"Type: message"``,
    removed from ``runners`` (so its device memory can be freed) and from the rates: a cell is either
    measured in every round or an error. ``KeyboardInterrupt`` and ``SystemExit`` are not caught."""
    errors = errors if errors is not None else {}
    rates = {r.name: [] for r in runners}

    def timed(r, n):
        try:
            return r.run(n)
        except Exception as exc:
            errors[r.name] = describe(exc)
            rates.pop(r.name, None)
            runners.remove(r)
            return None

    for r in list(runners):
        timed(r, warmup)
    for _ in range(repeats):
        for r in list(runners):
            seconds = timed(r, steps)
            if seconds is not None:
                rates[r.name].append(steps * r.w.batch_size / seconds)
    return rates


def release_device_memory(device):
    """Return cached GPU memory between workloads, so that one library's cache cannot starve the
    next: CuPy's default pool (``cupy.get_default_memory_pool().free_all_blocks()``,
    ``cupy/cuda/memory.pyx``) and PyTorch's caching allocator (``torch.cuda.empty_cache()``); JAX,
    without preallocation, frees its buffers itself."""
    if not device.startswith("cuda"):
        return
    gc.collect()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- machine facts
def gemm_ceiling(dtype="float32", n=2048, device="cpu"):
    """Best-of-5 GFLOP/s of an n x n matmul (the BLAS / cuBLAS ceiling for this run)."""

    be = backend.resolve(device)
    xp = be.xp
    with be.activate():
        a = be.to_device(np.random.default_rng(0).standard_normal((n, n)), dtype)
        out = a @ a
        be.synchronize()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            xp.matmul(a, a, out=out)
            be.synchronize()
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def machine_info(device):
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version", "architecture")}
                               for p in threadpool_info()]
    except ImportError:
        pass
    for mod in ("torch", "jax", "sklearn", "numba", "cupy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    if device.startswith("cuda"):
        import cupy  # noqa: PLC0415

        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["driver"] = cupy.cuda.runtime.driverGetVersion()
    return info


# ----------------------------------------------------------------------------- floating-point mode
#: ``jax_default_matmul_precision`` values: 'float32' (full float32) and 'tensorfloat32' are accepted
#: by every JAX version (jax/_src/config.py: the enum was ['bfloat16', 'tensorfloat32', 'float32'];
#: newer versions add 'highest' and the dot-algorithm presets).
JAX_PRECISION = {False: "float32", True: "tensorfloat32"}
FULL_FP32_JAX = ("float32", "highest", "F32_F32_F32")


def configure_precision(tf32, notes):
    """Before any library touches the GPU: one matmul precision for every implementation (full float32,
    or TF32 with ``--tf32``), and JAX without preallocation (it would otherwise take 75% of the GPU's
    memory from the other implementations in this process)."""

    # CuPy reads CUPY_TF32 once, at its first float32 matmul (get_compute_type in CuPy 14.2
    # cupy/_core/_routines_linalg.pyx): set it before any CUDA use; enforce_cupy_gemm_mode corrects the
    # mode afterwards if an earlier float32 GEMM in this process had fixed it otherwise
    backend.set_tf32(tf32)
    if "jax" in sys.modules:
        notes.append("jax was imported before the benchmark set XLA_PYTHON_CLIENT_PREALLOCATE=false; JAX keeps "
                     f"XLA_PYTHON_CLIENT_PREALLOCATE={os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', 'unset')} "
                     "(unset: it preallocates 75% of the GPU's memory)")
    else:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    try:
        import jax  # noqa: PLC0415

        jax.config.update("jax_default_matmul_precision", JAX_PRECISION[tf32])
    except ImportError:
        pass
    except Exception as exc:  # a broken JAX install: its runner will fail and say so
        notes.append(f"jax: could not set the matmul precision ({describe(exc)})")
    try:
        import torch  # noqa: PLC0415

        torch.backends.cuda.matmul.allow_tf32 = tf32  # set explicitly either way
    except ImportError:
        pass
    except Exception as exc:
        notes.append(f"torch: could not set allow_tf32 ({describe(exc)})")


def cupy_gemm_mode():
    """CuPy's float32 GEMM compute type as CuPy names it: 'COMPUTE_TYPE_DEFAULT' (full float32,
    CUBLAS_COMPUTE_32F) or 'COMPUTE_TYPE_TF32' (CUBLAS_COMPUTE_32F_FAST_TF32). CuPy 14.2
    cupy/_core/_routines_linalg.pyx: every 2-D matmul on compute capability >= 5.0 goes through
    tensordot_core_v11, which reads ``get_compute_type(dtype)`` at each call; ``compute_type_to_str``
    names the value. The first call fixes the mode from ``$CUPY_TF32`` (set by configure_precision)."""
    from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

    return linalg.compute_type_to_str(linalg.get_compute_type(np.float32))


def enforce_cupy_gemm_mode(tf32, notes):
    """Make CuPy's float32 GEMM mode the requested one even when an earlier float32 matmul in this
    process (``scripts/gpu-check`` probes the device first) fixed it from another ``CUPY_TF32``:
    ``set_compute_type`` and the ``COMPUTE_TYPE_*`` constants (a ``cpdef enum`` in
    cupy/_core/_routines_linalg.pxd) are CuPy 14.2's; a note says when it had to change."""
    from cupy._core import _routines_linalg as linalg  # noqa: PLC0415


    want = linalg.COMPUTE_TYPE_TF32 if tf32 else linalg.COMPUTE_TYPE_DEFAULT
    have = linalg.get_compute_type(np.float32)
    if have != want:
        backend.set_tf32(tf32)  # sets CuPy's compute type once CuPy is imported
        notes.append(f"CuPy's float32 GEMM mode had been fixed to {linalg.compute_type_to_str(have)} by an earlier "
                     f"matmul in this process; set to {linalg.compute_type_to_str(want)} for the benchmark")


def tf32_record(tf32, device):
    """The matmul mode each library actually uses (read back, not the flags that asked for it)."""
    rec = {"requested": bool(tf32), "cupy_compute_type": cupy_gemm_mode() if device.startswith("cuda") else None,
           "torch_allow_tf32": None, "jax_matmul_precision": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        rec["torch_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    jax = sys.modules.get("jax")
    if jax is not None:
        rec["jax_matmul_precision"] = getattr(jax.config, "jax_default_matmul_precision", None)
    # TF32 is a CUDA tensor-core mode: CPU matmuls are float32 whatever the flags say
    rec["full_fp32"] = not device.startswith("cuda") or (
        rec["cupy_compute_type"] != "COMPUTE_TYPE_TF32" and rec["torch_allow_tf32"] is not True
        and (jax is None or rec["jax_matmul_precision"] in FULL_FP32_JAX))
    return rec


# ----------------------------------------------------------------------------- entry point
def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpunet bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch-sizes", default="32,128,1024,8192", help="MNIST batch sizes (comma-separated)")
    p.add_argument("--small-batch", type=int, default=20, help="batch size for the small network (0: skip it)")
    p.add_argument("--peers", default="numpy,torch,jax,sklearn", help="comma-separated peers to compare")
    p.add_argument("--compile", action="store_true", help="also torch.compile (adds its compile time)")
    p.add_argument("--steps", type=int, default=0, help="steps per timed run (default: ~1 s of work per run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="BLAS/torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 128 and the small net, few steps")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA for gpunet (CuPy), PyTorch and JAX "
                   "(default: full float32 for all; the effective mode is recorded)")
    p.add_argument("--out", default="benchmarks/results", help="folder for bench.json, bench.md, bench.png")
    args = p.parse_args(argv)
    validate_args(args)
    return args


PEERS = ("numpy", "torch", "torch-compile", "jax", "sklearn", "gemm-only", "gpunet-graph")


def validate_args(args):
    """Every bad value is a ``ValueError`` naming the flag, before anything runs or is written."""
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes needs integers >= 1, got {args.batch_sizes!r}")
    unknown = [p for p in args.peers.split(",") if p.strip() and p.strip() not in PEERS]
    if unknown:
        raise ValueError(f"--peers: unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    for flag, value, low in (("--steps", args.steps, 0), ("--repeats", args.repeats, 1),
                             ("--small-batch", args.small_batch, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def default_steps(layers, batch_size, device):
    """About 0.3-1 s of work per run on a 2-core CPU (more for small batches: overhead-bound)."""
    if device.startswith("cuda"):
        return 200
    work = flops_per_sample(layers) * batch_size
    return int(min(400, max(10, 1.0e10 / work)))


#: column order of the tables: gpunet first, the GEMM-only bound last
IMPL_ORDER = ("gpunet", "gpunet-graph", "numpy", "torch", "torch-compile", "jax", "sklearn", "gemm-only")


def _impl_key(name):
    return (IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER), name)


def run(args):
    """Run the benchmark; returns the report.

    ``bench-{cpu,gpu}.json`` and ``.md`` are rewritten atomically after every workload (``complete`` is
    false until the last one), so a crash or a timeout keeps what was measured; the plot comes at the
    end. Process-wide settings made first (a benchmark process is its own): ``CUPY_TF32`` and CuPy's
    float32 GEMM mode, PyTorch's ``allow_tf32``, JAX's default matmul precision and
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false``.
    """

    tf32 = bool(getattr(args, "tf32", False))
    notes, rows = [], []
    configure_precision(tf32, notes)
    device = backend.resolve(args.device).name
    if device.startswith("cuda"):
        enforce_cupy_gemm_mode(tf32, notes)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if device.startswith("cuda") and "gpunet-graph" not in peers:
        peers.insert(0, "gpunet-graph")
    if "gemm-only" not in peers:
        peers.append("gemm-only")
    if args.compile:
        peers.append("torch-compile")
    if args.quick:
        batch_sizes, args.repeats = [128], 2
    threads = args.threads or os.cpu_count()
    limiter = None
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        limiter = threadpool_limits(threads)
    except ImportError:
        pass
    try:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
    except ImportError:
        pass
    ceiling = gemm_ceiling(args.dtype, device=device)
    workloads = [("mnist", b, mnist_workload) for b in batch_sizes]
    if args.small_batch:
        workloads.append(("small", args.small_batch, small_workload))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.startswith("cuda") else "cpu"
    report = {"device": device, "dtype": args.dtype, "threads": threads, "gemm_gflops": ceiling,
              "flops_per_sample": {"mnist": flops_per_sample(MNIST_LAYERS), "small": flops_per_sample(SMALL_LAYERS)},
              "machine": machine_info(device), "notes": notes, "results": rows, "complete": False,
              "protocol": f"median of {args.repeats} interleaved runs after warm-up; every implementation's data "
                          f"uploaded once before timing, a timed run = its optimizer steps; "
                          f"{'TF32' if tf32 else 'full float32'} matmuls"}
    report["machine"]["tf32"] = tf32_record(tf32, device)
    write_report(report, out, tag)  # the machine facts and settings, before anything is measured
    try:
        for kind, B, make in workloads:
            layers = MNIST_LAYERS if kind == "mnist" else SMALL_LAYERS
            steps = args.steps or default_steps(layers, B, device)
            if args.quick:
                steps = min(steps, 20)
            warmup = max(3, steps // 5)
            w = make(B, max(steps, warmup) * B)  # the warm-up may take more steps than a short timed run
            errors = {}
            runners = make_runners(w, device, args.dtype, peers, args.compile, notes, errors)
            rates = measure(runners, steps, args.repeats, warmup, errors)
            new = workload_rows(w, steps, runners, rates, errors, ceiling)
            del runners, w
            release_device_memory(device)
            rows.extend(new)
            report["machine"]["tf32"] = tf32_record(tf32, device)
            write_report(report, out, tag)
            print(format_rows(new), flush=True)
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    report["complete"] = True
    report["machine"]["tf32"] = tf32_record(tf32, device)
    write_report(report, out, tag)
    measured = [r for r in rows if r["workload"].startswith("mnist") and r.get("samples_per_s")]
    if measured:
        plot.plot_throughput(measured, out / f"bench-{tag}.png",
                             title=f"MNIST 784-512-256-10 training throughput ({device}, {args.dtype})")
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out}/bench-{tag}.json, .md" + (", .png" if measured else ""))
    return report


def workload_rows(w, steps, runners, rates, errors, ceiling):
    """One row per implementation of workload ``w``: the median samples/s, gpunet's ratio to it and
    its fraction of the GEMM-only bound (the ``gemm-only`` runner's samples/s on the same workload: the
    same GEMM shapes per step); or the error that stopped it."""
    med = {name: statistics.median(r) for name, r in rates.items() if r}
    ours, bound = med.get("gpunet"), med.get("gemm-only")
    extra = {r.name: r for r in runners}
    rows = []
    for name in sorted({*med, *errors}, key=_impl_key):
        row = {"workload": w.name, "layers": w.layers, "batch_size": w.batch_size, "impl": name, "steps": steps}
        if name not in med:
            rows.append({**row, "samples_per_s": None, "error": errors[name]})
            continue
        m = med[name]
        row.update(samples_per_s=m, runs=rates[name], us_per_step=1e6 * w.batch_size / m,
                   gpunet_ratio=None if ours is None else ours / m,
                   fraction_of_gemm_bound=None if bound is None else m / bound)
        if name == "gpunet":
            row["fraction_of_gemm_ceiling"] = m * flops_per_sample(w.layers) / (ceiling * 1e9)
        r = extra.get(name)
        if r is not None:
            if r.compile_seconds is not None:
                row["compile_seconds"] = r.compile_seconds
            if isinstance(r, TorchRunner):
                row["torch_adam"] = r.fused
            row.update(getattr(r, "extra", {}))
        rows.append(row)
    return rows


def write_report(report, out, tag):
    """``bench-<tag>.json`` and ``.md``, each replaced atomically (a reader never sees half a file)."""

    with atomic_write(out / f"bench-{tag}.json", "w") as f:
        f.write(json.dumps(report, indent=2, default=float) + "\n")
    with atomic_write(out / f"bench-{tag}.md", "w") as f:
        f.write(markdown(report) + "\n")


def format_rows(rows):
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['workload']:>12} {r['impl']:>14}: error ({r['error']})")
            continue
        ratio = ("" if r["impl"] == "gpunet" or r["gpunet_ratio"] is None
                 else f"  gpunet/{r['impl']} = {r['gpunet_ratio']:.2f}x")
        bound = "" if r["fraction_of_gemm_bound"] is None else f", {r['fraction_of_gemm_bound']:.0%} of GEMM-only"
        lines.append(f"{r['workload']:>12} {r['impl']:>14}: {r['samples_per_s']:>10.0f} samples/s "
                     f"({r['us_per_step']:.0f} us/step{bound}){ratio}")
    return "\n".join(lines)


def _percent(value):
    return "—" if value is None else f"{value:.0%}"


def markdown(report):
    m = report["machine"]
    tf = m.get("tf32") or {}
    mode = "full float32" if tf.get("full_fp32", True) else "TF32"
    head = (f"Device: {report['device']} ({m.get('gpu') or m.get('cpu')}, {m.get('cpu_count')} cores, "
            f"{report['threads']} threads), {report['dtype']} ({mode} matmuls), GEMM ceiling "
            f"{report['gemm_gflops']:.0f} GFLOP/s; numpy {m['numpy']}, torch {m.get('torch')}, jax {m.get('jax')}, "
            f"scikit-learn {m.get('sklearn')}, numba {m.get('numba')}. {report['protocol']}.")
    if not report.get("complete", True):
        head += " Partial: the run had not finished when this was written."
    results = report["results"]
    if not results:
        return head + "\n\nNo workload has finished yet."
    impls = sorted({r["impl"] for r in results}, key=_impl_key)
    peers = [i for i in impls if i not in ("gpunet", "gemm-only")]  # gemm-only has its own column
    lines = [head, "", "| workload | " + " | ".join(f"{i} (samples/s)" for i in impls)
             + "".join(f" | gpunet / {i}" for i in peers)
             + " | gpunet % of GEMM-only bound | gpunet % of GEMM ceiling |",
             "|---" * (len(impls) + len(peers) + 3) + "|"]
    for wl in dict.fromkeys(r["workload"] for r in results):
        rs = {r["impl"]: r for r in results if r["workload"] == wl}
        ours = rs.get("gpunet", {})

        def cell(i):
            r = rs.get(i)
            return "—" if r is None else "error" if r.get("error") else f"{r['samples_per_s']:,.0f}"

        def ratio(i):
            r = rs.get(i)
            if r is None or not ours:
                return "—"
            return "error" if r.get("error") or ours.get("error") else f"{r['gpunet_ratio']:.2f}x"

        fracs = ["error", "error"] if ours.get("error") else [_percent(ours.get("fraction_of_gemm_bound")),
                                                             _percent(ours.get("fraction_of_gemm_ceiling"))]
        lines.append(f"| {wl} | " + " | ".join(cell(i) for i in impls)
                     + "".join(f" | {ratio(i)}" for i in peers) + " | " + " | ".join(fracs) + " |")
    failed = [r for r in results if r.get("error")]
    if failed:
        # the first line of each message (XLA's run long); the JSON has them whole
        lines += ["", "Errors: " + "; ".join(f"{r['workload']} {r['impl']}: {r['error'].splitlines()[0][:300]}"
                                             for r in failed) + "."]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
