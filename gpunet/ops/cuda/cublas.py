"""GEMMs through cuBLAS's C API (``ctypes``), for the GEMMs of a training step captured as a CUDA graph.

Why: CuPy 14.2 refuses every cuBLAS call while a stream captures: each of its cuBLAS wrappers calls
``setStream``, which raises ``NotImplementedError('calling cuBLAS API during stream capture is currently
unsupported')`` when ``runtime.streamIsCapturing(stream)`` (``cupy_backends/cuda/libs/cublas.pyx``). cuBLAS
itself supports capture ("CUDA Graphs Support" in the cuBLAS documentation) when the handle's stream and a
user workspace are set before the capture, because the default workspace pool would allocate during it
(``cublasSetStream`` resets the workspace to that pool, so the workspace is set *after* the stream, as
PyTorch's ``getCurrentCUDABlasHandle`` does).

This module therefore keeps its own cuBLAS handle per device (so CuPy's calls on its own handle never
change the stream, workspace, pointer mode or math mode this one uses), a persistent 32 MiB workspace
(the size cuBLAS recommends for Hopper), and calls ``cublasSgemm_v2`` / ``cublasDgemm_v2`` with host
scalars (the default ``CUBLAS_POINTER_MODE_HOST``). The library is the one CuPy already loaded (found in
``/proc/self/maps``, so the handle and CuPy's never come from two copies of libcublas), else the one
CuPy's own loader picks (``cuda.pathfinder.load_nvidia_dynamic_lib("cublas")``: the nvidia-cublas wheel,
conda, the system, ``CUDA_PATH``), else the versioned soname of the installed CuPy build
(cupy-cuda13x: ``libcublas.so.13``, cupy-cuda12x: ``libcublas.so.12``; never an unversioned
``libcublas.so``, which could be any CUDA major). Like every CUDA fast path it is self-checked against ``xp.matmul`` at
first use (:meth:`gpunet.kernels.CupyOps.check_graphs`) and switched off with a warning if it fails.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

OP_N, OP_T = 0, 1  # cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T (cublas_api.h)
TF32_TENSOR_OP_MATH = 3  # cublasMath_t: CUBLAS_TF32_TENSOR_OP_MATH
DEFAULT_MATH = 0
WORKSPACE_BYTES = 32 * 2 ** 20
SONAMES = {13: "libcublas.so.13", 12: "libcublas.so.12"}  # CUDA major of the CuPy build -> cuBLAS soname


class CublasError(RuntimeError):
    """A cuBLAS C-API call returned a status other than CUBLAS_STATUS_SUCCESS."""

    def __init__(self, call, status):
        self.status = int(status)
        name = {1: "NOT_INITIALIZED", 3: "ALLOC_FAILED", 7: "INVALID_VALUE", 8: "ARCH_MISMATCH",
                13: "EXECUTION_FAILED", 14: "INTERNAL_ERROR", 15: "NOT_SUPPORTED"}.get(self.status, "UNKNOWN")
        super().__init__(f"{call} returned CUBLAS_STATUS_{name} ({self.status})")


def _loaded_path():
    """The libcublas file this process has already mapped (CuPy's), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1]
                if "/libcublas.so" in path and os.path.exists(path):
                    return path
    except OSError:
        pass
    return None


def _pathfinder_path():
    """The libcublas CuPy's loader resolves (``cuda.pathfinder``, imported only here), or None."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib  # noqa: PLC0415  (optional: CuPy's dependency)
    except ImportError:
        return None
    try:
        return load_nvidia_dynamic_lib("cublas").abs_path or None
    except Exception:  # noqa: BLE001  (pathfinder's DynamicLibNotFoundError and friends: try the soname)
        return None


def _cupy_cuda_majors():
    """CUDA majors of the installed CuPy build: from the wheel's name (cupy-cuda13x, cupy-cuda12x), else
    from an already imported CuPy's runtime version; every known major if neither tells."""
    from importlib import metadata  # noqa: PLC0415

    majors = []
    for major in SONAMES:
        try:
            metadata.version(f"cupy-cuda{major}x")
            majors.append(major)
        except metadata.PackageNotFoundError:
            pass
    if not majors:
        import sys  # noqa: PLC0415

        cupy = sys.modules.get("cupy")
        try:
            majors.append(int(cupy.cuda.runtime.runtimeGetVersion()) // 1000)
        except Exception:  # noqa: BLE001  (no CuPy, or no driver)
            pass
    majors = [m for m in majors if m in SONAMES]
    return majors or sorted(SONAMES, reverse=True)


def candidates():
    """Where libcublas is looked for, in order (the first that loads wins)."""
    names = []
    for path in (_loaded_path(), _pathfinder_path()):
        if path and path not in names:
            names.append(path)
    return names + [SONAMES[m] for m in _cupy_cuda_majors()]


def load_library():
    """``ctypes.CDLL`` of libcublas (see :func:`candidates`) with the argument types of the functions used here."""
    errors = []
    for name in candidates():
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            errors.append(str(exc))
    else:
        raise OSError(f"cannot load libcublas ({'; '.join(errors)})")
    vp, i, p = ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
    lib.cublasCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    lib.cublasDestroy_v2.argtypes = [vp]
    lib.cublasSetStream_v2.argtypes = [vp, vp]
    lib.cublasSetWorkspace_v2.argtypes = [vp, vp, ctypes.c_size_t]
    lib.cublasSetMathMode.argtypes = [vp, i]
    for fn, scalar in (("cublasSgemm_v2", ctypes.c_float), ("cublasDgemm_v2", ctypes.c_double)):
        getattr(lib, fn).argtypes = [vp, i, i, i, i, i, ctypes.POINTER(scalar), p, i, p, i,
                                     ctypes.POINTER(scalar), p, i]
    # cublas{S,D}gemmStridedBatched: the batch strides are long long (cupy_backends/cuda/libs/cublas.pyx, v14.2)
    ll = ctypes.c_longlong
    for fn, scalar in (("cublasSgemmStridedBatched", ctypes.c_float), ("cublasDgemmStridedBatched", ctypes.c_double)):
        getattr(lib, fn).argtypes = [vp, i, i, i, i, i, ctypes.POINTER(scalar), p, i, ll, p, i, ll,
                                     ctypes.POINTER(scalar), p, i, ll, i]
    for fn in ("cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
               "cublasSetMathMode", "cublasSgemm_v2", "cublasDgemm_v2", "cublasSgemmStridedBatched",
               "cublasDgemmStridedBatched"):
        getattr(lib, fn).restype = ctypes.c_int
    return lib


def matrices_contiguous(x):
    """Whether every matrix of the 3-D array ``x`` is C-contiguous (any batch stride >= 0), which a strided-batched
    GEMM reads and writes in place. The stride of a size-1 axis is ignored (CuPy's no-copy reshape gives it the
    stride of the axis before it, ``cupy/_core/_routines_manipulation.pyx`` ``_get_strides_for_nocopy_reshape``)."""
    if x.ndim != 3 or min(x.shape) < 1:
        return False
    item = np.dtype(x.dtype).itemsize
    return ((x.shape[2] == 1 or x.strides[2] == item) and (x.shape[1] == 1 or x.strides[1] == x.shape[2] * item)
            and (x.shape[0] == 1 or (x.strides[0] >= 0 and x.strides[0] % item == 0)))


def device_pointer(a):
    """The device address of a CuPy array (``ndarray.data.ptr``, which includes the view's offset)."""
    return a.data.ptr


class Gemm:
    """Row-major ``out = op(a) @ op(b)`` on a private cuBLAS handle bound to one stream at a time.

    cuBLAS is column-major: a row-major (r, c) array is the column-major (c, r) matrix with leading
    dimension c, so ``out (M, N) = op(a) @ op(b)`` is computed as ``out^T = op(b)^T op(a)^T``:
    ``gemm(transa=op of b, transb=op of a, m=N, n=M, k=K, A=b, lda=cols(b), B=a, ldb=cols(a), C=out,
    ldc=N)``. Every operand must be C-contiguous (row slices of a contiguous array are).
    """

    def __init__(self, xp, lib=None, pointer=device_pointer, tf32=False):
        self.xp, self.lib, self.ptr = xp, lib if lib is not None else load_library(), pointer
        handle = ctypes.c_void_p()
        self._check("cublasCreate_v2", self.lib.cublasCreate_v2(ctypes.byref(handle)))
        self.handle = handle
        self.tf32 = None
        self.set_tf32(tf32)
        self.workspace = xp.empty((WORKSPACE_BYTES,), dtype=xp.uint8)
        self._workspaces = {}  # stream pointer -> its workspace (two streams must not share one: cuBLAS guide)
        self.stream = None
        self.calls = 0

    @staticmethod
    def _check(call, status):
        if status != 0:
            raise CublasError(call, status)

    def set_tf32(self, enabled):
        """TF32 tensor-core math for float32 GEMMs (``CUBLAS_TF32_TENSOR_OP_MATH``) or the default."""
        enabled = bool(enabled)
        if enabled != self.tf32:
            self._check("cublasSetMathMode", self.lib.cublasSetMathMode(
                self.handle, TF32_TENSOR_OP_MATH if enabled else DEFAULT_MATH))
            self.tf32 = enabled

    def bind(self, stream_ptr):
        """Issue later GEMMs on the stream with address ``stream_ptr`` (0: the legacy default stream),
        with the persistent workspace (set after the stream: ``cublasSetStream`` resets it)."""
        if self.stream == stream_ptr:
            return
        self._check("cublasSetStream_v2", self.lib.cublasSetStream_v2(self.handle, ctypes.c_void_p(stream_ptr)))
        workspace = self._workspaces.get(stream_ptr)
        if workspace is None:  # the first stream gets the one made with the handle; each further stream its own
            workspace = self.workspace if not self._workspaces else self.xp.empty((WORKSPACE_BYTES,),
                                                                                   dtype=self.xp.uint8)
            self._workspaces[stream_ptr] = workspace
        self._check("cublasSetWorkspace_v2", self.lib.cublasSetWorkspace_v2(
            self.handle, ctypes.c_void_p(self.ptr(workspace)), WORKSPACE_BYTES))
        self.stream = stream_ptr

    def __call__(self, a, b, out, ta=False, tb=False):
        if not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError("cuBLAS GEMM operands must be C-contiguous")
        if a.dtype != out.dtype or b.dtype != out.dtype:
            raise TypeError(f"GEMM dtypes differ: {a.dtype}, {b.dtype} -> {out.dtype}")
        M, K = (a.shape[1], a.shape[0]) if ta else a.shape
        K2, N = (b.shape[1], b.shape[0]) if tb else b.shape
        if K != K2 or tuple(out.shape) != (M, N):
            raise ValueError(f"GEMM shapes do not match: op(a) {(M, K)}, op(b) {(K2, N)}, out {tuple(out.shape)}")
        if np.dtype(out.dtype) == np.float32:
            fn, scalar = self.lib.cublasSgemm_v2, ctypes.c_float
        elif np.dtype(out.dtype) == np.float64:
            fn, scalar = self.lib.cublasDgemm_v2, ctypes.c_double
        else:
            raise TypeError(f"no cuBLAS GEMM for {out.dtype}")
        one, zero = scalar(1.0), scalar(0.0)
        status = fn(self.handle, OP_T if tb else OP_N, OP_T if ta else OP_N, N, M, K, ctypes.byref(one),
                    ctypes.c_void_p(self.ptr(b)), b.shape[1], ctypes.c_void_p(self.ptr(a)), a.shape[1],
                    ctypes.byref(zero), ctypes.c_void_p(self.ptr(out)), N)
        self._check("cublasSgemm_v2" if scalar is ctypes.c_float else "cublasDgemm_v2", status)
        self.calls += 1
        return out

    def batched(self, a, b, out, ta=False, tb=False):
        """``out[k] = op(a[k]) @ op(b[k])`` for 3-D operands whose matrices are each C-contiguous, at any batch
        stride (the ``(K, n_in, n_out)`` column-block views of a stack's flat ``(K, n_params)`` buffer), through
        ``cublas{S,D}gemmStridedBatched``: no operand is copied, and a transpose is a cuBLAS flag (CuPy's batched
        ``matmul`` makes both operands contiguous first, ``cupy/_core/_routines_linalg.pyx`` ``matmul``). A batch
        dimension of 1 in ``a`` or ``b`` is broadcast (batch stride 0). The same row-major to column-major swap as
        :meth:`__call__`."""
        for name, x in (("a", a), ("b", b), ("out", out)):
            if not matrices_contiguous(x):
                raise ValueError(f"batched GEMM operand {name} must be 3-D with C-contiguous matrices "
                                 f"(shape {tuple(x.shape)}, strides {tuple(x.strides)})")
        item = np.dtype(out.dtype).itemsize
        if out.shape[0] > 1 and out.strides[0] < out.shape[1] * out.shape[2] * item:
            raise ValueError(f"batched GEMM output matrices overlap (batch stride {out.strides[0]} bytes)")
        if a.dtype != out.dtype or b.dtype != out.dtype:
            raise TypeError(f"GEMM dtypes differ: {a.dtype}, {b.dtype} -> {out.dtype}")
        count = out.shape[0]
        if a.shape[0] not in (1, count) or b.shape[0] not in (1, count):
            raise ValueError(f"batched GEMM batch sizes differ: {a.shape[0]}, {b.shape[0]} -> {count}")
        M, K = (a.shape[2], a.shape[1]) if ta else a.shape[1:]
        K2, N = (b.shape[2], b.shape[1]) if tb else b.shape[1:]
        if K != K2 or tuple(out.shape[1:]) != (M, N):
            raise ValueError(f"GEMM shapes do not match: op(a) {(M, K)}, op(b) {(K2, N)}, out {tuple(out.shape[1:])}")
        item = np.dtype(out.dtype).itemsize
        stride = lambda x: 0 if x.shape[0] == 1 else x.strides[0] // item  # noqa: E731
        if np.dtype(out.dtype) == np.float32:
            fn, scalar, name = self.lib.cublasSgemmStridedBatched, ctypes.c_float, "cublasSgemmStridedBatched"
        elif np.dtype(out.dtype) == np.float64:
            fn, scalar, name = self.lib.cublasDgemmStridedBatched, ctypes.c_double, "cublasDgemmStridedBatched"
        else:
            raise TypeError(f"no cuBLAS GEMM for {out.dtype}")
        one, zero = scalar(1.0), scalar(0.0)
        status = fn(self.handle, OP_T if tb else OP_N, OP_T if ta else OP_N, N, M, K, ctypes.byref(one),
                    ctypes.c_void_p(self.ptr(b)), b.shape[2], stride(b), ctypes.c_void_p(self.ptr(a)), a.shape[2],
                    stride(a), ctypes.byref(zero), ctypes.c_void_p(self.ptr(out)), N, stride(out), count)
        self._check(name, status)
        self.calls += 1
        return out

    def close(self):
        """Destroy the handle (the graphs captured with it must not be replayed afterwards)."""
        if getattr(self, "handle", None) is not None:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = None

    def __del__(self):  # a GraphStep's handle goes with it (fit synchronised its stream before returning)
        try:
            self.close()
        except Exception:  # noqa: S110  (interpreter shutdown: the library may be gone)
            pass
