"""The machine a benchmark ran on: the GEMM ceiling, CPU/GPU/BLAS facts, and the floating-point mode of every
library (full float32 or TF32), configured, enforced and recorded."""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np

from gpunet import backend


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


def describe(exc):
    """A report cell for a runner that raised: ``"Type: message"``."""
    return f"{type(exc).__name__}: {exc}"
