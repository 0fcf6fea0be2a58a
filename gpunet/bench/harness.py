"""Building the runners of a workload and timing them in interleaved rounds."""
from __future__ import annotations

import gc
import sys
import time

from gpunet.bench.machine import describe
from gpunet.bench.peers import JaxRunner, NumpyRunner, SklearnRunner, TorchRunner
from gpunet.bench.runners import GemmOnlyRunner, GpunetRunner


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
