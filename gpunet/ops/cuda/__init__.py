"""The CUDA fast path (CuPy): fused kernels (``kernels.cu``), their self-check, CUDA graph plumbing and the
cuBLAS C API. The only package besides :mod:`gpunet.backend` that touches CuPy; imported by
:func:`gpunet.ops.get_ops` for CUDA backends (and by ``gpunet info`` for when its lazy paths are checked); importing
it needs no CuPy."""
from gpunet.ops.cuda.cupy_ops import LAUNCHES_PER_STEP, CupyOps, fast_path_status
from gpunet.ops.cuda.selfcheck import CHECKED_AT, FAST_PATHS, GRAPH_PATHS, LAZY_PATHS, dropout_reference

__all__ = ["CupyOps", "fast_path_status", "CHECKED_AT", "FAST_PATHS", "GRAPH_PATHS", "LAZY_PATHS", "LAUNCHES_PER_STEP",
           "dropout_reference"]
