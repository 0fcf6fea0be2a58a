"""``gpunet bench``: training throughput of gpunet against its peers, interleaved in one process.

Workloads: MNIST 784-512-256-10 (ReLU, softmax cross-entropy, Adam lr 1e-3) at several batch sizes,
and the seed's small regression net [1, 50 x 9, 1] (ReLU, MSE, Adam) at batch 20. Every
implementation trains the same architecture in the same dtype with the same optimizer on data already
resident on its device, with ``steps`` optimizer steps per timed run after a warm-up; runs of the
different implementations alternate (``repeats`` rounds) and the median is reported. Ratios are
gpunet's median throughput over each peer's, measured in the same run.

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
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from gpunet.init import initial_weights

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
    from gpunet import datasets  # noqa: PLC0415

    (X, y), _ = datasets.load_mnist()
    reps = -(-n_rows // len(X))
    X, y = np.concatenate([X] * reps)[:n_rows], np.concatenate([y] * reps)[:n_rows]
    return Workload(f"mnist-b{batch_size}", MNIST_LAYERS, batch_size, X, y, True)


def small_workload(batch_size, n_rows):
    from gpunet import datasets  # noqa: PLC0415

    X, y = datasets.sinc(n_rows, seed=0)
    return Workload(f"sinc-b{batch_size}", SMALL_LAYERS, batch_size, X.astype(np.float32), y.astype(np.float32), False)


# ----------------------------------------------------------------------------- implementations
class Runner:
    """``run(steps)`` trains ``steps`` optimizer steps and waits for the device; returns seconds."""

    name = "?"
    compile_seconds = None


class GpunetRunner(Runner):
    def __init__(self, w, device, dtype, cuda_graph=False):
        import gpunet as gn  # noqa: PLC0415

        self.name = "gpunet-graph" if cuda_graph else "gpunet"
        self.net = gn.MLP(w.layers, "relu", "softmax" if w.classification else "linear", device=device, dtype=dtype, seed=0)
        self.w = w
        self.cuda_graph = cuda_graph
        self.opt = gn.Adam(lr=1e-3)

    def run(self, steps):
        n = steps * self.w.batch_size
        X, y = self.w.X[:n], self.w.y[:n]
        t0 = time.perf_counter()
        self.net.fit(X, y, epochs=1, batch_size=self.w.batch_size, optimizer=self.opt, verbose=0,
                     cuda_graph=self.cuda_graph)
        self.net.backend.synchronize()
        return time.perf_counter() - t0


class GemmOnlyRunner(Runner):
    """Only the step's GEMMs (forward, weight gradients, deltas) and the batch gather, on gpunet's
    backend: the bound any implementation on this BLAS / cuBLAS can approach."""

    def __init__(self, w, device, dtype):
        from gpunet import backend  # noqa: PLC0415

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
        t0 = time.perf_counter()
        for s in range(steps):
            self.t += 1
            self.params, self.m, self.v = self.step(self.params, self.m, self.v, float(self.t), self.X, self.Y, order, s)
        self.jax.block_until_ready(self.params)
        return time.perf_counter() - t0


class SklearnRunner(Runner):
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


def make_runners(w, device, dtype, peers, compile_=False, notes=None):
    notes = notes if notes is not None else []
    runners = [GpunetRunner(w, device, dtype)]
    gpu = device.startswith("cuda")
    factories = {
        "gpunet-graph": (lambda: GpunetRunner(w, device, dtype, cuda_graph=True)) if gpu else None,
        "gemm-only": lambda: GemmOnlyRunner(w, device, dtype),
        "numpy": (lambda: NumpyRunner(w, dtype)) if not gpu else None,
        "torch": lambda: TorchRunner(w, device, dtype),
        "torch-compile": (lambda: TorchRunner(w, device, dtype, "reduce-overhead" if gpu else "default")) if compile_ else None,
        "jax": lambda: JaxRunner(w, device, dtype),
        "sklearn": (lambda: SklearnRunner(w, dtype)) if not gpu else None,
    }
    for peer in peers:
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
            notes.append(f"{peer}: skipped ({exc})")
        except Exception as exc:  # a peer that cannot run here must not stop the benchmark
            notes.append(f"{peer}: failed to set up ({type(exc).__name__}: {exc})")
    return runners


def measure(runners, steps, repeats, warmup):
    """Interleaved rounds; returns {name: [samples/s per round]}."""
    for r in runners:
        r.run(warmup)
    rates = {r.name: [] for r in runners}
    for _ in range(repeats):
        for r in runners:
            seconds = r.run(steps)
            rates[r.name].append(steps * r.w.batch_size / seconds)
    return rates


# ----------------------------------------------------------------------------- machine facts
def gemm_ceiling(dtype="float32", n=2048, device="cpu"):
    """Best-of-5 GFLOP/s of an n x n matmul (the BLAS / cuBLAS ceiling for this run)."""
    from gpunet import backend  # noqa: PLC0415

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
        info["tf32"] = os.environ.get("CUPY_TF32", "0")
    return info


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
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls on CUDA for gpunet and PyTorch (recorded)")
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


def run(args):
    from gpunet import backend, plot  # noqa: PLC0415

    if getattr(args, "tf32", False):
        backend.set_tf32(True)
        try:
            import torch  # noqa: PLC0415

            torch.backends.cuda.matmul.allow_tf32 = True
        except ImportError:
            pass
    device = backend.resolve(args.device).name
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
    notes, rows = [], []
    ceiling = gemm_ceiling(args.dtype, device=device)
    workloads = [("mnist", b, mnist_workload) for b in batch_sizes]
    if args.small_batch:
        workloads.append(("small", args.small_batch, small_workload))
    for kind, B, make in workloads:
        layers = MNIST_LAYERS if kind == "mnist" else SMALL_LAYERS
        steps = args.steps or default_steps(layers, B, device)
        if args.quick:
            steps = min(steps, 20)
        warmup = max(3, steps // 5)
        w = make(B, max(steps, warmup) * B)  # the warm-up may take more steps than a short timed run
        runners = make_runners(w, device, args.dtype, peers, args.compile, notes)
        rates = measure(runners, steps, args.repeats, warmup=warmup)
        ours = statistics.median(rates["gpunet"])
        for r in runners:
            med = statistics.median(rates[r.name])
            row = {"workload": w.name, "layers": layers, "batch_size": B, "impl": r.name, "samples_per_s": med,
                   "runs": rates[r.name], "steps": steps, "us_per_step": 1e6 * B / med,
                   "gpunet_ratio": ours / med if r.name != "gpunet" else 1.0}
            if r.compile_seconds is not None:
                row["compile_seconds"] = r.compile_seconds
            if r.name == "gpunet":
                row["fraction_of_gemm_ceiling"] = med * flops_per_sample(layers) / (ceiling * 1e9)
            if isinstance(r, TorchRunner):
                row["torch_adam"] = r.fused
            rows.append(row)
        print(format_rows([x for x in rows if x["workload"] == w.name]), flush=True)
    if limiter is not None:
        limiter.restore_original_limits()
    report = {"device": device, "dtype": args.dtype, "threads": threads, "gemm_gflops": ceiling,
              "flops_per_sample": {"mnist": flops_per_sample(MNIST_LAYERS), "small": flops_per_sample(SMALL_LAYERS)},
              "machine": machine_info(device), "notes": notes, "results": rows,
              "protocol": f"median of {args.repeats} interleaved runs after warm-up; data resident on the device"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.startswith("cuda") else "cpu"
    (out / f"bench-{tag}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (out / f"bench-{tag}.md").write_text(markdown(report) + "\n")
    plot.plot_throughput([r for r in rows if r["workload"].startswith("mnist")], out / f"bench-{tag}.png",
                         title=f"MNIST 784-512-256-10 training throughput ({device}, {args.dtype})")
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out}/bench-{tag}.json, .md, .png")
    return report


def format_rows(rows):
    lines = []
    for r in rows:
        ratio = "" if r["impl"] == "gpunet" else f"  gpunet/{r['impl']} = {r['gpunet_ratio']:.2f}x"
        lines.append(f"{r['workload']:>12} {r['impl']:>14}: {r['samples_per_s']:>10.0f} samples/s "
                     f"({r['us_per_step']:.0f} us/step){ratio}")
    return "\n".join(lines)


def markdown(report):
    m = report["machine"]
    head = (f"Device: {report['device']} ({m.get('gpu') or m.get('cpu')}, {m.get('cpu_count')} cores, "
            f"{report['threads']} threads), {report['dtype']}, GEMM ceiling {report['gemm_gflops']:.0f} GFLOP/s; "
            f"numpy {m['numpy']}, torch {m.get('torch')}, jax {m.get('jax')}, scikit-learn {m.get('sklearn')}, "
            f"numba {m.get('numba')}. {report['protocol']}.")
    impls = list(dict.fromkeys(r["impl"] for r in report["results"]))
    lines = [head, "", "| workload | " + " | ".join(f"{i} (samples/s)" for i in impls)
             + " | " + " | ".join(f"gpunet / {i}" for i in impls if i != "gpunet") + " | gpunet % of GEMM ceiling |",
             "|---" * (2 * len(impls) + 1) + "|"]
    for wl in dict.fromkeys(r["workload"] for r in report["results"]):
        rs = {r["impl"]: r for r in report["results"] if r["workload"] == wl}
        cells = [f"{rs[i]['samples_per_s']:,.0f}" if i in rs else "—" for i in impls]
        ratios = [f"{rs[i]['gpunet_ratio']:.2f}x" if i in rs else "—" for i in impls if i != "gpunet"]
        frac = rs["gpunet"].get("fraction_of_gemm_ceiling")
        lines.append(f"| {wl} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {frac:.0%} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
