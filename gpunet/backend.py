"""Device resolution and the array namespace ``xp``.

This is the only module that knows which array library runs the maths, and the only place where
data crosses between host (NumPy) and device (CuPy): :meth:`Backend.to_device` and
:meth:`Backend.to_host`. Everything else receives a :class:`Backend` and uses ``backend.xp``.

CuPy is imported lazily and guarded. A CUDA device counts as usable only after a one-time smoke
test (one elementwise kernel and one small matmul read back to the host), because a machine can
report a device and still fail on the first kernel (no driver, no NVRTC).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import warnings

import numpy as np

from gpunet.errors import DeviceUnavailableError, OutOfMemoryError

log = logging.getLogger("gpunet")

INSTALL_HINT = "install the CUDA extra matching your driver: pip install 'gpunet[cuda12]' or 'gpunet[cuda13]'"
DTYPES = ("float32", "float64")


def namespace(a):
    """The array namespace of ``a`` (``numpy``, ``cupy``, ``array_api_strict``, ...): CuPy's
    ``get_array_module`` pattern, through the Array-API ``__array_namespace__`` hook where the array has
    one. CuPy's ndarray does not (CuPy 14), so its arrays are recognised by their type's module."""
    get = getattr(a, "__array_namespace__", None)
    if get is not None:
        return get()
    if type(a).__module__.partition(".")[0] == "cupy":
        return import_cupy()
    raise TypeError(f"expected an array (NumPy, CuPy or Array-API), got {type(a).__name__}")


# ----------------------------------------------------------------------------- CUDA detection
def set_tf32(enabled: bool) -> None:
    """Opt in to TF32 tensor-core matmuls for float32 on CUDA (faster, ~10-bit mantissa products).

    Off by default: the CPU/GPU parity tests assume full float32 precision. CuPy fixes the float32 compute
    type at its first float32 GEMM from ``$CUPY_TF32`` (``cupy/_core/_routines_linalg.pyx``,
    ``get_compute_type``); this sets that variable for a CuPy not imported yet and, once CuPy is imported,
    the compute type itself (``cupy._core.set_compute_type``), so it takes effect whenever it is called.
    gpunet's device probe multiplies float64 matrices only, so it never fixes the float32 mode.
    ``GPUNET_TF32=1`` does the same at the first CUDA use. :func:`tf32_effective` reads the mode back.
    """
    os.environ["CUPY_TF32"] = "1" if enabled else "0"
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT)


def tf32_effective() -> bool:
    """Whether CuPy's float32 GEMMs use TF32 now: its effective compute type
    (``cupy._core.get_compute_type(float32) == COMPUTE_TYPE_TF32``), not the environment variable. False
    without CuPy."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return False
    from cupy._core import _routines_linalg as linalg  # noqa: PLC0415

    return linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32


def import_cupy():
    """Return the ``cupy`` module or raise ``ImportError`` (never anything else)."""
    if os.environ.get("GPUNET_TF32") == "1" and "CUPY_TF32" not in os.environ:
        set_tf32(True)
    try:
        import cupy  # noqa: PLC0415  (lazy on purpose: importing gpunet must not need CUDA)
    except Exception as exc:  # a broken install raises all sorts of errors at import
        raise ImportError(f"CuPy is not installed or failed to import ({type(exc).__name__}: {exc})") from exc
    return cupy


@functools.lru_cache(maxsize=None)
def cuda_status(index: int = 0) -> tuple[bool, str]:
    """Probe CUDA device ``index`` once per process.

    Returns ``(True, "<device name>")`` or ``(False, "<reason>")``; never raises.
    """
    try:
        cupy = import_cupy()
    except ImportError as exc:
        return False, str(exc)
    try:
        if not cupy.cuda.is_available():
            return False, "CuPy is installed but reports no usable CUDA device (no GPU or no driver)"
        count = cupy.cuda.runtime.getDeviceCount()
        if index >= count:
            return False, f"cuda:{index} was requested but only {count} CUDA device(s) exist"
        with cupy.cuda.Device(index):  # float64: a float32 GEMM would fix CuPy's TF32 mode (see set_tf32)
            x = cupy.arange(4, dtype=cupy.float64)
            y = (x * 2.0 + 1.0).reshape(2, 2)
            got = float((y @ y).sum().get())
        if got != 144.0:  # [[1,3],[5,7]] @ [[1,3],[5,7]] = [[16,24],[40,64]]
            return False, f"CUDA device {index} returned a wrong smoke-test result ({got} != 144.0)"
        props = cupy.cuda.runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as exc:  # CUDARuntimeError, NVRTC/cuBLAS load failures, ...
        return False, f"CUDA device {index} failed its smoke test ({type(exc).__name__}: {exc})"
    return True, name


def devices() -> list[str]:
    """Names of the usable devices: ``["cpu"]`` or ``["cpu", "cuda:0", ...]``."""
    names = ["cpu"]
    ok, _ = cuda_status(0)
    if not ok:
        return names
    cupy = import_cupy()
    for i in range(cupy.cuda.runtime.getDeviceCount()):
        if cuda_status(i)[0]:
            names.append(f"cuda:{i}")
    return names


# ----------------------------------------------------------------------------- backends
class Backend:
    """An array namespace bound to one device.

    Attributes
    ----------
    name : str
        ``"cpu"``, ``"cuda:N"`` or, in tests, a stand-in such as ``"array_api_strict"``.
    xp : module
        The array namespace (``numpy``, ``cupy`` or an Array-API namespace).
    kind : {"numpy", "cupy", "generic"}
        Selects the fast primitives (:func:`gpunet.ops.get_ops`).
    """

    def __init__(self, name, xp, kind, device=None):
        self.name, self.xp, self.kind, self.device = name, xp, kind, device

    def __repr__(self):
        return f"Backend({self.name!r})"

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cupy"

    def dtype(self, name: str):
        """The namespace's dtype object for ``"float32"``/``"float64"``/``"int64"``/``"bool"``."""
        return getattr(self.xp, name)

    # -- transfers: the only two places data crosses host <-> device -------------------------
    def to_device(self, a, dtype: str | None = None):
        """Copy a host array (or nested sequence) to this device, optionally casting it."""
        a = np.asarray(a, dtype=dtype)
        try:
            if self.kind == "numpy":
                return np.ascontiguousarray(a)
            if self.kind == "cupy":
                with self.device:
                    return self.xp.asarray(np.ascontiguousarray(a))
            return self.xp.asarray(a, dtype=self.dtype(str(a.dtype)), device=self.device)
        except Exception as exc:
            if not self.is_out_of_memory(exc):
                raise
            raise OutOfMemoryError(f"not enough memory on {self.name} for an array of shape {a.shape} "
                                   f"({a.nbytes / 2 ** 20:,.0f} MiB): use a smaller dataset or dtype='float32', "
                                   f"or train on another device") from None

    def adopt(self, X, n_features, dtype, name="X"):
        """A CUDA array from CuPy or any DLPack producer (PyTorch, JAX) used in place on this CUDA
        device: ``cupy.from_dlpack`` shares the producer's memory (``cupy/_core/dlpack.pyx``), the cast
        to ``dtype`` and the checks (2-D, ``n_features`` columns, real and finite: one device read) run on
        the device, so the data never goes through the host."""
        cp = self.xp
        with self.device:
            a = X if isinstance(X, cp.ndarray) else cp.from_dlpack(X)
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
            if a.ndim == 1 and n_features == 1:
                a = a.reshape(-1, 1)
            if a.ndim != 2 or a.shape[1] != n_features or a.shape[0] == 0:
                raise ValueError(f"{name} must have shape (n_samples >= 1, {n_features}), got {tuple(a.shape)}")
            a = cp.ascontiguousarray(a.astype(dtype, copy=False))
            if not bool(cp.isfinite(a).all()):
                raise ValueError(f"{name} contains NaN or Inf (or values too large for {dtype})")
            return a

    def sparse_rows(self, X, dtype, name="X"):
        """A SciPy CSR/CSC matrix as :class:`SparseRows`: kept sparse on this device, densified a batch at a time."""
        if self.kind == "generic":
            raise TypeError(f"{name} is a sparse matrix; the {self.name} backend takes dense arrays only")
        return SparseRows(self, X, dtype, name)

    def to_host(self, a) -> np.ndarray:
        """Copy a device array to a new host ``numpy.ndarray`` (never a view of device data)."""
        if self.kind == "numpy":
            return np.array(a, copy=True)
        if self.kind == "cupy":
            return a.get()
        return np.asarray(a.to_device(self.xp.Device("CPU_DEVICE")))

    def item(self, a) -> float:
        """A 0-d or 1-element device array as a Python float (one synchronising read)."""
        return float(self.to_host(a).reshape(()))

    def synchronize(self) -> None:
        """Wait for all queued device work (a no-op on CPU)."""
        if self.kind == "cupy":
            self.device.synchronize()

    def is_out_of_memory(self, exc) -> bool:
        """Whether ``exc`` is an allocation failure on this device: a host ``MemoryError``, CuPy's
        ``OutOfMemoryError`` (its memory pool), or a library's failed allocation: cuBLAS's
        ``CUBLAS_STATUS_ALLOC_FAILED`` (status 3: ``CUBLASError`` in ``cupy_backends/cuda/libs/cublas.pyx``,
        ``gpunet.cublas.CublasError``) or the runtime's ``cudaErrorMemoryAllocation`` (status 2:
        ``CUDARuntimeError`` in ``cupy_backends/cuda/api/runtime.pyx``)."""
        if isinstance(exc, MemoryError):
            return True
        if self.kind != "cupy":
            return False
        name, status = type(exc).__name__, getattr(exc, "status", None)
        return (name == "OutOfMemoryError" or (name in ("CUBLASError", "CublasError") and status == 3)
                or (name == "CUDARuntimeError" and status == 2))

    def activate(self):
        """Context manager making this device current (CuPy); a no-op elsewhere."""
        if self.kind == "cupy":
            return self.device
        return _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


CPU = Backend("cpu", np, "numpy")


def install_hint(why=None):
    """Advice for an unusable CUDA device: the extra to install only when CuPy itself is missing."""
    why = cuda_status(0)[1] if why is None else why
    if why.startswith("CuPy is not installed"):
        return INSTALL_HINT
    return "CuPy is installed: check the GPU and its driver with nvidia-smi ('gpunet info' shows the details)"


def _cuda_backend(index: int) -> Backend:
    ok, why = cuda_status(index)
    if not ok:
        raise DeviceUnavailableError(f"cannot use cuda:{index}: {why}; {install_hint(why)}")
    cupy = import_cupy()
    return _cached_cuda_backend(index, cupy)


@functools.lru_cache(maxsize=None)
def _cached_cuda_backend(index, cupy):
    return Backend(f"cuda:{index}", cupy, "cupy", device=cupy.cuda.Device(index))


_announced = set()

#: where launchers put a process's rank among the processes on its node, first match wins: gpunet's own
#: (set by ``gpunet.distributed.init()`` from MPI, or by the user), Open MPI, MPICH and Intel MPI, MVAPICH2, Slurm
LOCAL_RANK_VARIABLES = ("GPUNET_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                        "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


def local_rank() -> int:
    """This process's rank among the processes on its node, from the environment
    (:data:`LOCAL_RANK_VARIABLES`); 0 when none is set (one process per node, or no launcher)."""
    for name in LOCAL_RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def default_cuda_index() -> int:
    """The GPU ``"auto"`` and ``"cuda"`` mean: ``local_rank() % device count``, so the ranks of a job on a node
    with several GPUs each take their own (NCCL refuses two ranks of one communicator on one GPU); 0 for a
    single process, or when the count cannot be read (the probe of device 0 then says why)."""
    rank = local_rank()
    if rank == 0:
        return 0
    try:
        count = import_cupy().cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001  (no CuPy, no driver: cuda_status(0) reports the reason)
        return 0
    return rank % count if count > 0 else 0


def resolve(device="auto") -> Backend:
    """Turn a device spec into a :class:`Backend`.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N"} or Backend
        ``"auto"`` (or ``None``) honours ``$GPUNET_DEVICE`` when set, then picks the CUDA device of
        :func:`default_cuda_index` (``cuda:0`` for a single process; ``local rank % GPUs`` for the ranks of
        an MPI job) if it is usable, otherwise the CPU, logging why once. ``"cuda"`` names that device too.

    Raises
    ------
    DeviceUnavailableError
        A CUDA device was named explicitly and cannot be used.
    ValueError
        The spec is not one of the forms above.
    """
    if isinstance(device, Backend):
        return device
    spec = "auto" if device is None else device
    if not isinstance(spec, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu', 'cuda' or 'cuda:0', got {device!r}")
    spec = spec.strip().lower()
    what = repr(device)
    if spec == "auto" and os.environ.get("GPUNET_DEVICE", "").strip():
        spec = os.environ["GPUNET_DEVICE"].strip().lower()
        what = f"{os.environ['GPUNET_DEVICE']!r} (from $GPUNET_DEVICE)"
    if spec == "cpu":
        return CPU
    if spec == "auto":
        index = default_cuda_index()
        ok, why = cuda_status(index)
        if ok:
            return _cuda_backend(index)
        if why not in _announced:
            _announced.add(why)
            log.info("gpunet: using the CPU (%s)", why)
        return CPU
    if spec == "cuda" or spec == "gpu":
        return _cuda_backend(default_cuda_index())
    if spec.startswith("cuda:"):
        try:
            index = int(spec[5:])
        except ValueError:
            index = -1
        if index < 0:
            raise ValueError(f"bad device {what}: expected 'cuda:N' with N a device number >= 0")
        return _cuda_backend(index)
    raise ValueError(f"unknown device {what}; choose one of 'auto', 'cpu', 'cuda', 'cuda:N'")


def check_dtype(dtype) -> str:
    """Normalise a float dtype spec (``"float32"``, ``np.float64``, ...) to its name."""
    try:
        name = None if dtype is None else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


class SparseRows:
    """Sparse inputs (SciPy CSR/CSC) kept compressed on the device and densified where they are used: the rows of
    a training batch gathered into its dense buffer (:meth:`take`), a slice of rows as a dense block
    (``X[s:e]``, prediction and evaluation chunks). Memory holds the CSR matrix plus one dense batch.

    On CUDA the matrix is a ``cupyx.scipy.sparse.csr_matrix`` and batches are gathered by its row indexing on the
    device; the first gather is checked against SciPy's on the host, and if it differs or fails the device gather
    is switched off with a warning (batches are then gathered on the host and uploaded)."""

    def __init__(self, backend, X, dtype, name="X"):
        csr = X.tocsr().astype(dtype)
        csr.sum_duplicates()  # canonical form: the values a dense copy would hold
        if not np.isfinite(csr.data).all():
            raise ValueError(f"{name} contains NaN or Inf (or values too large for {dtype})")
        self.backend, self.host, self.dtype, self.shape = backend, csr, np.dtype(dtype), csr.shape
        self.device_csr, self.checked = None, backend.kind != "cupy"
        if backend.kind == "cupy":
            try:
                sparse = importlib.import_module("cupyx.scipy.sparse")
                with backend.device:
                    self.device_csr = sparse.csr_matrix(csr)
            except Exception as exc:  # no cupyx sparse (or no memory for it): the host gathers the batches
                warnings.warn(f"gpunet: sparse X stays on the host ({type(exc).__name__}: {exc}); batches are "
                              "densified there and uploaded", UserWarning, stacklevel=3)

    @property
    def ndim(self):
        return 2

    def take(self, idx, out):
        """Dense rows ``X[idx]`` into ``out`` (idx a device index array)."""
        be = self.backend
        if self.device_csr is not None:
            try:
                dense = self.device_csr[idx].toarray()
                if not self.checked:
                    self.checked = True
                    want = self.host[be.to_host(idx)].toarray()
                    if not np.array_equal(be.to_host(dense), want):
                        raise RuntimeError("the device gather differs from SciPy's")
                out[...] = dense
                return out
            except Exception as exc:  # unverified device indexing never trains on wrong rows
                warnings.warn(f"gpunet: gathering sparse rows on {be.name} is off ({type(exc).__name__}: {exc}); "
                              "batches are densified on the host and uploaded", UserWarning, stacklevel=2)
                self.device_csr = None
        rows = be.to_host(idx) if be.kind == "cupy" else idx
        out[...] = be.to_device(self.host[rows].toarray(), self.dtype.name) if be.kind == "cupy" \
            else self.host[rows].toarray()
        return out

    def __getitem__(self, key):
        """Rows ``X[s:e]`` (a slice, optionally with ``...``) as a dense device block."""
        rows = key[0] if isinstance(key, tuple) else key
        if not isinstance(rows, slice):
            raise TypeError("SparseRows takes slices of rows; gather batches with take()")
        return self.backend.to_device(self.host[rows].toarray(), self.dtype.name)
