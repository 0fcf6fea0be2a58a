"""Every CPU speed target in one run: gpunet against jax.jit and eager PyTorch on the four MLP workloads, and
16 stacked models (MLPStack) against 16 sequential fits and against JAX ``vmap`` inside one ``jit``.

    python benchmarks/speed_vs_peers.py [--rounds 5] [--quick] [--out benchmarks/results/speed-vs-peers.json]

Part 1 uses ``gpunet bench``'s runners (``gpunet.bench``: data uploaded once, a timed run is optimizer steps
only, implementations interleaved, median of the rounds) on MNIST 784-512-256-10 (ReLU, softmax
cross-entropy, Adam lr 1e-3) at batch 32, 128 and 1024 and on the seed's sinc net [1, 50 x 9, 1] (ReLU, MSE,
Adam) at batch 20, with the GEMM-only bound (the step's GEMMs and gather alone on the same BLAS).

Part 2 trains K = 16 models, batch 20, Adam lr 1e-3, float32, on the sinc net (``datasets.sinc()``, 1,000
rows) and seed 003's [1, 16, 2] tanh net (``datasets.sincos()``): ``sequential`` is 16 ``MLP(seed=s).fit``
calls, ``stack`` one ``MLPStack(seeds=range(16)).fit`` (the fused stacked step where it applies: its status is
printed), ``jax-vmap`` the K models' training step (batch gather, forward, grad, Adam) as ``jax.vmap`` inside
one ``jax.jit``, one call per step, on data and batch orders already on the device. Throughput is
model-steps/s (K x optimizer steps / seconds); rounds alternate between the three, after a warm-up that
compiles everything. The machine (CPU model, cores, load average) is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import gpunet as gn
from gpunet import bench, datasets
from gpunet.nn.initializers import initial_weights


def mlp_part(rounds, quick, notes):
    rows = []
    workloads = [("mnist", b) for b in ((128,) if quick else (32, 128, 1024))] + [("small", 20)]
    for kind, B in workloads:
        layers = bench.MNIST_LAYERS if kind == "mnist" else bench.SMALL_LAYERS
        steps = min(400, max(10, int(1.0e10 / (bench.flops_per_sample(layers) * B))))
        if quick:
            steps = min(steps, 30)
        warmup = max(3, steps // 5)
        make = bench.mnist_workload if kind == "mnist" else bench.small_workload
        w = make(B, max(steps, warmup) * B)
        errors = {}
        runners = bench.make_runners(w, "cpu", "float32", ["torch", "jax", "gemm-only"], False, notes, errors)
        rates = bench.measure(runners, steps, rounds, warmup, errors)
        med = {k: statistics.median(v) for k, v in rates.items() if v}
        rows.append({"workload": w.name, "samples_per_s": med, "errors": errors,
                     "gpunet/jax": med["gpunet"] / med["jax"] if "jax" in med else None,
                     "gpunet/torch": med["gpunet"] / med["torch"] if "torch" in med else None,
                     "gpunet/gemm-only": med["gpunet"] / med["gemm-only"]})
        print(_mlp_line(rows[-1]), flush=True)
    return rows


def _mlp_line(r):
    m = r["samples_per_s"]
    f = lambda k: f"{m[k]:,.0f}" if k in m else "-"  # noqa: E731
    g = lambda k: f"{r[k]:.2f}x" if r[k] is not None else "-"  # noqa: E731
    return (f"| {r['workload']} | {f('gpunet')} | {f('jax')} | {f('torch')} | {f('gemm-only')} | {g('gpunet/jax')} | "
            f"{g('gpunet/torch')} | {r['gpunet/gemm-only']:.0%} |")


# ------------------------------------------------------------------ stacks
NETS = {"sinc": ([1] + [50] * 9 + [1], "relu", datasets.sinc), "seed-003": ([1, 16, 2], "tanh", datasets.sincos)}


class JaxVmap:
    """K models' Adam step as ``jax.vmap`` inside one ``jax.jit`` (each model its own batch order)."""

    def __init__(self, layers, act, X, y, K, B, steps):
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        self.jax, self.K, self.B = jax, K, B
        flats = [[p.astype(np.float32) for p in initial_weights(layers, act, rng=s)] for s in range(K)]
        params = [(np.stack([f[2 * i] for f in flats]), np.stack([f[2 * i + 1] for f in flats]))
                  for i in range(len(layers) - 1)]
        f = jax.nn.relu if act == "relu" else jnp.tanh
        self.params = jax.device_put(params)
        self.m = jax.device_put(jax.tree_util.tree_map(np.zeros_like, params))
        self.v = jax.device_put(jax.tree_util.tree_map(np.zeros_like, params))
        self.X, self.Y = jax.device_put(X), jax.device_put(y)
        n = X.shape[0]
        self.orders = jax.device_put(np.stack([np.random.default_rng(k).permutation(np.resize(np.arange(n), steps * B))
                                               for k in range(K)]).astype(np.int32))

        def loss(p, x, y):
            a = x
            for W, b in p[:-1]:
                a = f(a @ W + b)
            W, b = p[-1]
            return jnp.mean((a @ W + b - y) ** 2)

        def one(p, m, v, order, t, s, X, Y):
            idx = jax.lax.dynamic_slice(order, (s * B,), (B,))
            g = jax.grad(loss)(p, jnp.take(X, idx, axis=0), jnp.take(Y, idx, axis=0))
            m = jax.tree_util.tree_map(lambda m, g: m + 0.1 * (g - m), m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            ss = 1e-3 / (1 - 0.9 ** t)
            bc2 = jnp.sqrt(1 - 0.999 ** t)
            p = jax.tree_util.tree_map(lambda p, m, v: p - ss * m / (jnp.sqrt(v) / bc2 + 1e-8), p, m, v)
            return p, m, v

        step = jax.vmap(one, in_axes=(0, 0, 0, 0, None, None, None, None))
        self.step = jax.jit(step, donate_argnums=(0, 1, 2))
        self.t = 0

    def run(self, steps):
        jax = self.jax
        t0 = time.perf_counter()
        for s in range(steps):
            self.t += 1
            self.params, self.m, self.v = self.step(self.params, self.m, self.v, self.orders, float(self.t), s,
                                                    self.X, self.Y)
        jax.block_until_ready(self.params)
        return time.perf_counter() - t0


def stack_part(rounds, quick, notes):
    rows = []
    for name, (layers, act, data) in NETS.items():
        rows.append(_stack_row(name, layers, act, data, rounds, quick, notes))
        print(_stack_line(rows[-1]), flush=True)
    return rows


def _stack_row(name, layers, act, data, rounds, quick, notes, K=16, B=20):
    X, y = data()
    X, y = X.astype(np.float32), y.astype(np.float32)
    epochs = 1 if quick else (5 if name == "sinc" else 20)
    steps = epochs * -(-X.shape[0] // B)
    kw = dict(hidden_activation=act, output_activation="linear", dtype="float32", device="cpu")
    status = {}

    def sequential():
        t0 = time.perf_counter()
        for s in range(K):
            gn.MLP(layers, seed=s, **kw).fit(X, y, epochs=epochs, batch_size=B, optimizer=gn.Adam(lr=1e-3),
                                             verbose=0)
        return time.perf_counter() - t0

    def stacked(record=True):
        stack = gn.MLPStack(layers, seeds=range(K), **kw)
        t0 = time.perf_counter()
        stack.fit(X, y, epochs=epochs, batch_size=B, optimizer=gn.Adam(lr=1e-3))
        seconds = time.perf_counter() - t0
        if record:
            status.update(stack.fast_paths["fused_stack_step"])
        return seconds

    def stacked_one_thread():  # the fused stacked step on one core: how much of the stack's speed is threads
        import numba  # noqa: PLC0415

        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return stacked(record=False)
        finally:
            numba.set_num_threads(threads)

    impls = {"sequential": sequential, "stack": stacked, "stack-1-thread": stacked_one_thread}
    try:
        vm = JaxVmap(layers, act, X, y, K, B, steps * (rounds + 1))
        impls["jax-vmap"] = lambda: vm.run(steps)
    except ImportError as exc:
        notes.append(f"jax-vmap: skipped ({exc})")
    times = {k: [] for k in impls}
    for fn in impls.values():  # warm-up: compilation, allocators
        fn()
    for _ in range(rounds):
        for k, fn in impls.items():
            times[k].append(fn())
    rate = {k: K * steps / statistics.median(v) for k, v in times.items()}
    best = {k: K * steps / min(v) for k, v in times.items()}
    row = {"net": name, "layers": layers, "models": K, "batch_size": B, "epochs": epochs, "steps_per_model": steps,
           "model_steps_per_s": rate, "best_model_steps_per_s": best, "fused_stack_step": dict(status),
           "stack/sequential": rate["stack"] / rate["sequential"],
           "stack/jax-vmap": rate["stack"] / rate["jax-vmap"] if "jax-vmap" in rate else None}
    return row


def _stack_line(r):
    m = r["model_steps_per_s"]
    vm = f"{m['jax-vmap']:,.0f}" if "jax-vmap" in m else "-"
    rv = f"{r['stack/jax-vmap']:.2f}x" if r["stack/jax-vmap"] is not None else "-"
    fused = "fused" if r["fused_stack_step"].get("live") else f"batched ({r['fused_stack_step'].get('reason')})"
    return (f"| {r['net']} {r['layers'] if len(r['layers']) < 5 else '[1, 50 x 9, 1]'} | {m['sequential']:,.0f} | "
            f"{m['stack']:,.0f} ({fused}) | {m['stack-1-thread']:,.0f} | {vm} | {r['stack/sequential']:.2f}x | {rv} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smoke test: batch 128 only, few steps, 2 rounds")
    p.add_argument("--part", choices=("all", "mlp", "stack"), default="all")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for every library (BLAS via threadpoolctl, PyTorch, Numba, XLA); default: all cores")
    p.add_argument("--out", default="benchmarks/results/speed-vs-peers.json")
    a = p.parse_args(argv)
    rounds = 2 if a.quick else a.rounds
    notes = []
    if a.threads:  # before JAX and PyTorch start their thread pools
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   + ("true" if a.threads > 1 else "false")
                                   + f" intra_op_parallelism_threads={a.threads}").strip()
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(a.threads)
        import numba  # noqa: PLC0415

        numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            import torch  # noqa: PLC0415

            torch.set_num_threads(a.threads)
        except ImportError:
            pass
    bench.configure_precision(False, notes)  # before anything imports JAX (machine_info reads its version)
    info = bench.machine_info("cpu")
    machine = f"{info.get('cpu')}, {info['cpu_count']} cores"
    print(f"machine: {machine}; threads {a.threads or 'all'}; load average at start {info.get('load_avg')}; numpy {info['numpy']}, "
          f"numba {info.get('numba')}, torch {info.get('torch')}, jax {info.get('jax')}", flush=True)
    report = {"machine": machine, "machine_info": info, "threads": a.threads or os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rounds": rounds, "notes": notes}
    if a.part in ("all", "mlp"):
        print("\n| workload | gpunet samples/s | jax.jit | torch eager | GEMM-only | gpunet / jax | gpunet / torch | "
              "% of GEMM-only |\n|---|---|---|---|---|---|---|---|", flush=True)
        report["mlp"] = mlp_part(rounds, a.quick, notes)
    if a.part in ("all", "stack"):
        print("\n| 16 models, batch 20, Adam | sequential fits (model-steps/s) | MLPStack | MLPStack, 1 thread | "
              "JAX vmap in one jit | stack / sequential | stack / JAX vmap |\n|---|---|---|---|---|---|---|", flush=True)
        report["stack"] = stack_part(rounds, a.quick, notes)
    try:
        report["load_avg_end"] = os.getloadavg()
    except OSError:
        pass
    print(f"\nload average at the end: {report.get('load_avg_end')}")
    for n in notes:
        print(f"note: {n}")
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
