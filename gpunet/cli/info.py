"""``gpunet info``: versions, devices, BLAS, and which fast paths are live."""
from __future__ import annotations

import sys

import numpy as np

import gpunet as gn
from gpunet import backend
from gpunet.ops import get_ops
from gpunet.ops.cuda import CHECKED_AT


def cmd_info(args):

    print(f"gpunet {gn.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}")
    try:
        cupy = backend.import_cupy()
        print(f"cupy {cupy.__version__}")
    except ImportError as exc:
        print(f"cupy: not available ({exc}); {backend.INSTALL_HINT}")
    try:
        import numba  # noqa: PLC0415

        print(f"numba {numba.__version__} (fused CPU training step and optimizer on)")
    except Exception:
        print("numba: not installed (CPU optimizer uses plain NumPy; pip install 'gpunet[numba]')")
    print(f"BLAS: {blas_info()}")
    print("devices:")
    print("  cpu")
    print(fast_path_lines(backend.CPU))
    ok, why = backend.cuda_status(0)
    if not ok:
        print(f"  (no CUDA device: {why})")
    for name in gn.devices()[1:]:
        cupy = backend.import_cupy()
        idx = int(name.split(":")[1])
        props = cupy.cuda.runtime.getDeviceProperties(idx)
        dev_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"  {name}: {dev_name}, {props['totalGlobalMem'] / 2 ** 30:.1f} GiB, "
              f"compute capability {props['major']}.{props['minor']}")
        print(fast_path_lines(backend.resolve(name)))
    return 0

def fast_path_lines(be):
    """The fast paths of a backend after its self-check (``gpunet info``)."""

    if be.is_gpu:
        lines = [f"    fast paths (each self-checked against the reference at first use; float32 GEMMs: "
                 f"{'TF32' if backend.tf32_effective() else 'full fp32'}):"]
    else:
        lines = ["    fast paths:"]
    for path, st in get_ops(be).status().items():
        state = {True: "on", False: "OFF", None: f"checked at {CHECKED_AT.get(path, 'first use')}"}[st["live"]]
        lines.append(f"      {path:<20} {state}" + (f" ({st['reason']})" if st.get("reason") else ""))
    return "\n".join(lines)

def blas_info():
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415

        pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
        if pools:
            p = pools[0]
            return f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, {p.get('num_threads')} threads)"
    except Exception:
        pass
    cfg = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
    blas = (cfg.get("Build Dependencies", {}) or {}).get("blas", {}) if isinstance(cfg, dict) else {}
    return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
