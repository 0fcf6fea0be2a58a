"""The primitives of a training step, one class per kind of backend, chosen by :func:`get_ops` (thinc's
``get_ops``): :class:`ArrayOps` (the reference, any Array-API namespace), :class:`NumpyOps` (the CPU fast
path, with Numba when installed) and ``gpunet.ops.cuda.CupyOps`` (fused CUDA kernels, self-checked)."""
from __future__ import annotations

import sys
import threading

from gpunet.ops.numpy_ops import NumpyOps
from gpunet.ops.reference import ArrayOps

_CACHE = {}
_LOCK = threading.Lock()


def get_ops(backend):
    """The primitive set of ``backend``, made once per backend object (a CUDA backend's self-check runs at
    that first call)."""
    ops = _CACHE.get(id(backend))
    if ops is not None and ops.backend is backend:
        return ops
    with _LOCK:
        ops = _CACHE.get(id(backend))
        if ops is None or ops.backend is not backend:
            ops = _CACHE[id(backend)] = _make(backend)
    return ops


def _make(backend):
    if backend.kind == "numpy":
        return NumpyOps(backend)
    if backend.kind == "cupy":
        from gpunet.ops.cuda.cupy_ops import CupyOps  # noqa: PLC0415  (keeps the CUDA code out of CPU processes)

        return CupyOps(backend)
    return ArrayOps(backend)


def fast_path_status():
    """``{device: {path: {"live": bool or None, "reason": str or None}}}`` for every CUDA backend used in this
    process (empty when none was)."""
    cuda = sys.modules.get("gpunet.ops.cuda.cupy_ops")
    return cuda.fast_path_status() if cuda is not None else {}


__all__ = ["ArrayOps", "NumpyOps", "get_ops", "fast_path_status"]
