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
import os
import sys
from pathlib import Path

from gpunet import backend, plot
from gpunet.bench.harness import make_runners, measure, release_device_memory
from gpunet.bench.machine import (configure_precision, describe, cupy_gemm_mode, enforce_cupy_gemm_mode, gemm_ceiling,
                                  machine_info, tf32_record)
from gpunet.bench.peers import JaxRunner, NumpyRunner, SklearnRunner, TorchRunner
from gpunet.bench.report import IMPL_ORDER, format_rows, markdown, workload_rows, write_report
from gpunet.bench.runners import GemmOnlyRunner, GpunetRunner, Runner
from gpunet.bench.workloads import MNIST_LAYERS, SMALL_LAYERS, Workload, flops_per_sample, mnist_workload, small_workload

__all__ = ["main", "run", "parse_args", "markdown", "Workload", "Runner", "GpunetRunner", "GemmOnlyRunner",
           "NumpyRunner", "TorchRunner", "JaxRunner", "SklearnRunner", "make_runners", "measure", "gemm_ceiling",
           "machine_info", "configure_precision", "cupy_gemm_mode", "enforce_cupy_gemm_mode", "tf32_record",
           "workload_rows", "mnist_workload", "small_workload", "flops_per_sample", "MNIST_LAYERS", "SMALL_LAYERS",
           "IMPL_ORDER", "describe", "release_device_memory", "format_rows", "write_report"]


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
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder (bench writes bench.json, bench.md and "
                         f"bench.png into a folder)")

def default_steps(layers, batch_size, device):
    """About 0.3-1 s of work per run on a 2-core CPU (more for small batches: overhead-bound)."""
    if device.startswith("cuda"):
        return 200
    work = flops_per_sample(layers) * batch_size
    return int(min(400, max(10, 1.0e10 / work)))

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

def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
