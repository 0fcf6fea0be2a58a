"""A fake CuPy for testing gpunet's CUDA path without a GPU (tinygrad's ``test/mockgpu`` idea).

- :class:`FakeModule` / :class:`FakeKernel`: a ``RawModule`` whose kernels check every launch's arguments against
  the ``__global__`` signatures parsed from ``ops/cuda/kernels.cu`` and execute the kernel's semantics in NumPy
  (:data:`SEMANTICS`);
- :class:`FakeCupy`: NumPy arrays posing as CuPy's (devices, streams, events, memory pools), counting every
  launch (:data:`LAUNCHES`); :class:`RefusingCupy` refuses cuBLAS during stream capture, as CuPy 14.2 does;
- :class:`FakeCublasLib`: a libcublas whose C-API GEMMs run on the arrays' raw host memory, column-major;
- :class:`FakeGraph` / :func:`fake_capture`: stream capture that records the body and replays it.
"""
import ctypes
import itertools
import re
import threading
import types

import numpy as np

from gpunet.nn import activations, losses
from gpunet.ops.codes import ACT_CODES
from gpunet.ops.cuda import cublas, cupy_ops as kernels


CODE_TO_ACT = {v: k for k, v in ACT_CODES.items()}
SCALARS = {"int": np.int32, "long long": np.int64, "unsigned long long": np.uint64, "double": np.float64,
           "float": np.float32}


def parse_signatures():
    sigs = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", kernels.source()):
        parsed = []
        for p in params.split(","):
            words = p.replace("*", " * ").replace("const", " ").split()
            pointer = "*" in words
            base = " ".join(w for w in words[:-1] if w != "*")  # drop the parameter name
            parsed.append((base, pointer))
        sigs[name] = parsed
    return sigs


SIGNATURES = parse_signatures()


def _act(x, code):
    return activations.ACTIVATIONS[CODE_TO_ACT[code]](x)


def _grad(a, code):
    return activations.DERIVATIVES[CODE_TO_ACT[code]](a)


def adam_update(p, g, m, v, vmax, lr, b1, b2, eps, wd, step_size, bc2_sqrt, ams, dec):
    if dec:
        p *= 1 - lr * wd
    else:
        g = g + wd * p
    m += (1 - b1) * (g - m)
    v[...] = v * b2 + (1 - b2) * g * g
    vv = v
    if ams:
        np.maximum(vmax, v, out=vmax)
        vv = vmax
    p -= step_size * (m / (np.sqrt(vv) / bc2_sqrt + eps))


def softmax_xent(z, y, a, delta, out, rows, k, inv_n):
    Z, Y = z.reshape(rows, k), y.reshape(rows, k)
    A = activations.softmax(Z)
    a.reshape(rows, k)[...] = A
    delta.reshape(rows, k)[...] = (A - Y) * inv_n
    out.reshape(rows, 2)[:, 0] = -np.sum(Y * losses.log_softmax(Z), axis=1) * inv_n
    out.reshape(rows, 2)[:, 1] = A.argmax(axis=1) == Y.argmax(axis=1)


def sigmoid_xent(z, y, a, delta, out, n, inv_n):
    a[...] = activations.sigmoid(z)
    delta[...] = (a - y) * inv_n
    out.reshape(n, 2)[:, 0] = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))) * inv_n
    out.reshape(n, 2)[:, 1] = (a > 0.5) == (y > 0.5)


def sgd_update(p, g, buf, n, lr, mom, damp, wd, nesterov, first):
    g = g + wd * p
    if mom:
        b = g.copy() if first else mom * buf + (1 - damp) * g
        buf[...] = b
        g = g + mom * b if nesterov else b
    p -= lr * g


def adam_dev(p, g, m, v, vmax, n, hp, ams, dec):
    lr, b1, b2, eps, wd, t = hp
    adam_update(p, g, m, v, vmax, lr, b1, b2, eps, wd, lr / (1 - b1 ** t), np.sqrt(1 - b2 ** t), ams, dec)


def splitmix_uniform(seed, n):
    """kernels.cu gn_uniform in Python integers (independent of kernels.dropout_reference)."""
    out = np.empty(n)
    for i in range(n):
        x = (seed + (i + 1) * 0x9E3779B97F4A7C15) % 2 ** 64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2 ** 64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2 ** 64
        out[i] = (x ^ (x >> 31)) >> 11
    return out / 2.0 ** 53


def dropout(out, n, seed, rate, scale):
    out[...] = np.where(splitmix_uniform(seed, n) >= rate, scale, 0.0)


SEMANTICS = {
    "gn_bias_act": lambda z, b, n, cols, act: z.__setitem__(Ellipsis, _act(z.reshape(-1, cols) + b, act).reshape(-1)),
    "gn_activation": lambda z, a, n, act: a.__setitem__(Ellipsis, _act(z, act)),
    "gn_act_backward": lambda d, a, n, act: d.__setitem__(Ellipsis, d * _grad(a, act)),
    "gn_scale": lambda a, s, n: a.__setitem__(Ellipsis, a * s),
    "gn_adam": lambda p, g, m, v, vmax, n, *h: adam_update(p, g, m, v, vmax, *h),
    "gn_adam_dev": adam_dev,
    "gn_tick": lambda hp: hp.__setitem__(5, hp[5] + 1),
    "gn_sgd": sgd_update,
    "gn_softmax_xent": softmax_xent,
    "gn_sigmoid_xent_k": sigmoid_xent,
    "gn_dropout": dropout,
}


class Counter:
    """Device work seen by the fake CuPy: every kernel launch (fused kernels, GEMMs through CuPy or the
    C-API, CuPy functions and array operators, copies into arrays). Work done inside one counted call
    (a fake kernel's NumPy semantics, a CuPy function's internals) is not counted again."""

    def __init__(self):
        self.n = 0
        self.depth = 0
        self.names = []

    def count(self, name):
        if self.depth == 0:
            self.n += 1
            self.names.append(name)

    def __enter__(self):
        self.depth += 1

    def __exit__(self, *exc):
        self.depth -= 1


LAUNCHES = Counter()


class FakeKernel:
    def __init__(self, name, T, log):
        self.base = name.split("<")[0]
        self.T, self.log = T, log

    def __call__(self, grid, block, args):
        sig = SIGNATURES[self.base]
        assert len(args) == len(sig), f"{self.base}: {len(args)} arguments for {len(sig)} parameters"
        flat = []
        for i, ((base, pointer), arg) in enumerate(zip(sig, args)):
            ctype = self.T if base == "T" else base
            expected = SCALARS[ctype]
            where = f"{self.base} parameter {i} ({base}{'*' if pointer else ''})"
            if pointer:
                assert isinstance(arg, np.ndarray), f"{where}: got {type(arg).__name__}"
                assert arg.dtype == expected, f"{where}: array of {arg.dtype}, kernel reads {ctype}"
                assert arg.flags.c_contiguous, f"{where}: not contiguous"
                flat.append(arg.reshape(-1))  # a view: the kernel writes through it
            else:
                assert type(arg) is expected, f"{where}: {type(arg).__name__} passed for {ctype}"
                flat.append(arg.item())
        assert grid[0] >= 1 and block[0] == (1 if self.base == "gn_tick" else kernels.BLOCK)
        LAUNCHES.count(self.base)
        self.log.append(self.base)
        if capturing():  # a capture records the launch; it runs at the replays
            return
        with LAUNCHES:
            SEMANTICS[self.base](*flat)


class FakeModule:
    def __init__(self, log, semantics=None):
        self.log = log
        self.fetched = 0

    def get_function(self, name):
        self.fetched += 1
        if "<" in name:
            assert name in kernels.NAME_EXPRESSIONS, f"{name} is not instantiated by name_expressions"
            T = name[name.index("<") + 1:-1]
        else:
            T = None
        return FakeKernel(name, T, self.log)


class FakeDevice:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


_stream_ids = itertools.count(0x7000)


class FakeStream(FakeDevice):
    """cupy.cuda.Stream: a pointer, wait_event, synchronize (recorded), and being current (with)."""

    def __init__(self, non_blocking=False):
        self.ptr = next(_stream_ids)
        self.non_blocking = non_blocking
        self.waited = []
        self.synchronized = 0

    def wait_event(self, event):
        self.waited.append(event)

    def synchronize(self):
        self.synchronized += 1


class FakeEvent:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True


class FakeCupyArray(np.ndarray):
    """Like CuPy 14's ndarray where it matters here: defined in a ``cupy`` module, and without the
    Array-API ``__array_namespace__`` hook (so the maths must find its namespace another way). Its
    operators and copies into it count as kernel launches."""

    @property
    def __array_namespace__(self):
        raise AttributeError("CuPy arrays have no __array_namespace__")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        LAUNCHES.count(f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__)
        with LAUNCHES:
            args = [a.view(np.ndarray) if isinstance(a, FakeCupyArray) else a for a in inputs]
            if "out" in kwargs:
                kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, FakeCupyArray) else o for o in kwargs["out"])
            out = getattr(ufunc, method)(*args, **kwargs)
        if isinstance(out, np.ndarray) and type(out) is np.ndarray:
            return out.view(FakeCupyArray)
        return out

    def __setitem__(self, key, value):
        LAUNCHES.count("copy")
        with LAUNCHES:
            np.ndarray.__setitem__(self.view(np.ndarray), key, value)


FakeCupyArray.__module__ = "cupy._fake"


class FakeCupy:
    """NumPy, returning FakeCupyArray wherever NumPy returns an ndarray, counting each call as a launch,
    with the parts of ``cupy.cuda`` that gpunet uses."""

    def __init__(self):
        self.current_stream = FakeStream()
        self.cuda = types.SimpleNamespace(Stream=FakeStream, Event=FakeEvent,
                                          get_current_stream=lambda: self.current_stream)

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def wrapped(*args, **kwargs):
            LAUNCHES.count(name)
            with LAUNCHES:
                out = attr(*args, **kwargs)
            return out.view(FakeCupyArray) if type(out) is np.ndarray else out
        return wrapped


class FakeCublasLib:
    """libcublas's C API on host memory: the GEMMs read and write the arrays' raw memory as column-major
    matrices with the given leading dimensions, so a wrong m/n/k, lda or transpose gives wrong numbers.
    Checks the handle protocol: the workspace must be set after the stream (SetStream resets it)."""

    def __init__(self):
        self.handles = 0
        self.stream = None
        self.workspace = None
        self.gemms = []  # (stream pointer, capturing) per call
        self.batched = []  # (stream pointer, batch count, transa, transb) per strided-batched call

    def cublasCreate_v2(self, handle_ref):
        self.handles += 1
        handle_ref._obj.value = 0xC0B1A5
        return 0

    def cublasDestroy_v2(self, handle):
        return 0

    def cublasSetMathMode(self, handle, mode):
        assert mode in (cublas.DEFAULT_MATH, cublas.TF32_TENSOR_OP_MATH)
        return 0

    def cublasSetStream_v2(self, handle, stream):
        self.stream, self.workspace = stream.value, None
        return 0

    def cublasSetWorkspace_v2(self, handle, ptr, size):
        assert size == cublas.WORKSPACE_BYTES and ptr.value
        self.workspace = ptr.value
        return 0

    def _gemm(self, ctype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc):
        assert self.workspace is not None, "cublasSetWorkspace_v2 must follow cublasSetStream_v2"
        self.gemms.append((self.stream, capturing()))
        if capturing():  # recorded, not run (the replays run it)
            return 0

        def matrix(ptr, rows, cols, ld):
            assert ld >= max(1, rows)
            size = (cols - 1) * ld + rows
            flat = np.ctypeslib.as_array(ctypes.cast(ptr.value, ctypes.POINTER(ctype)), shape=(size,))
            return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(flat.itemsize, ld * flat.itemsize))
        a = matrix(A, *((m, k) if transa == cublas.OP_N else (k, m)), lda)
        b = matrix(B, *((k, n) if transb == cublas.OP_N else (n, k)), ldb)
        c = matrix(C, m, n, ldc)
        opa = a if transa == cublas.OP_N else a.T
        opb = b if transb == cublas.OP_N else b.T
        c[...] = alpha._obj.value * (opa @ opb) + (beta._obj.value * c if beta._obj.value else 0.0)
        return 0

    def _strided_batched(self, ctype, handle, transa, transb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc,
                         sC, count):
        """cublas{S,D}gemmStridedBatched: matrix i of each operand starts ``i * stride`` elements after the first
        (stride 0 reuses one matrix); each is a column-major GEMM as above."""
        for name, v in (("strideA", sA), ("strideB", sB), ("strideC", sC), ("batchCount", count)):
            assert isinstance(v, int) and v >= 0, (name, v)  # long long / int arguments, not pointers
        assert count == 1 or sC >= ldc * n, "the output matrices of a strided-batched GEMM must not overlap"
        self.batched.append((self.stream, count, transa, transb))
        item = ctypes.sizeof(ctype)
        at = lambda ptr, s, i: ctypes.c_void_p(ptr.value + i * s * item)  # noqa: E731
        for i in range(count):
            self._gemm(ctype, handle, transa, transb, m, n, k, alpha, at(A, sA, i), lda, at(B, sB, i), ldb, beta,
                       at(C, sC, i), ldc)
        del self.gemms[-count:]  # counted once, as one call, in self.batched
        return 0

    def cublasSgemmStridedBatched(self, *args):
        return self._strided_batched(ctypes.c_float, *args)

    def cublasDgemmStridedBatched(self, *args):
        return self._strided_batched(ctypes.c_double, *args)

    def cublasSgemm_v2(self, *args):
        return self._gemm(ctypes.c_float, *args)

    def cublasDgemm_v2(self, *args):
        return self._gemm(ctypes.c_double, *args)


#: stream capture is per thread, as in CUDA and CuPy: cuBLAS refuses a call whose thread's current stream is
#: capturing (cublas.pyx setStream reads the calling thread's stream), not one made by another thread meanwhile
CAPTURE = threading.local()


def capturing():
    return getattr(CAPTURE, "on", False)


class RefusingCupy(FakeCupy):
    """CuPy 14.2 during stream capture: every cuBLAS call raises (cupy_backends/cuda/libs/cublas.pyx,
    setStream: NotImplementedError('calling cuBLAS API during stream capture is currently unsupported'))."""

    def __getattr__(self, name):
        attr = super().__getattr__(name)
        if name in ("matmul", "dot") and callable(attr):
            def guarded(*args, **kwargs):
                if capturing():
                    raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
                return attr(*args, **kwargs)
            return guarded
        return attr


def host_pointer(a):
    return a.ctypes.data


class FakeGraph:
    """Replays by re-running the captured body, counted as one launch (real graphs replay the recorded
    launches)."""

    def __init__(self, body):
        self.body = body

    def launch(self, stream=None):
        LAUNCHES.count("graph")
        with LAUNCHES:
            self.body()


def fake_capture(stream, body):
    """kernels.capture_graph on the fake: the body runs while the stream 'captures', so CuPy's GEMMs
    raise as in CuPy 14.2, and the fused kernels and C-API GEMMs are recorded without running (CuPy's
    other operations only touch scratch buffers then)."""
    CAPTURE.on = True
    try:
        body()
    finally:
        CAPTURE.on = False
    return FakeGraph(body), None


class FakeNodeArray(FakeCupyArray):
    """A FakeCupyArray read back as CuPy's are (``.get()``), whose operators and reductions stay on the
    'device' (0-d arrays, not NumPy scalars): what the device probe's smoke test needs."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = super().__array_ufunc__(ufunc, method, *inputs, **kwargs)
        return np.asarray(out).view(FakeNodeArray) if isinstance(out, (np.ndarray, np.generic)) else out

    def get(self):
        return np.array(self.view(np.ndarray))


class FakeNode(FakeCupy):
    """CuPy on a node with ``count`` GPUs, for device resolution: ``cuda.is_available``,
    ``cuda.runtime.getDeviceCount``/``getDeviceProperties`` and ``cuda.Device(i)``, which records in
    ``entered`` every device made current (the probe's smoke test runs inside one)."""

    def __init__(self, count):
        super().__init__()
        node, self.entered = self, []

        class Device(FakeDevice):
            def __init__(self, i=0):
                self.id = i

            def __enter__(self):
                node.entered.append(self.id)
                return self

        self.cuda.is_available = lambda: count > 0
        self.cuda.Device = Device
        self.cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: count,
                                                  getDeviceProperties=lambda i: {"name": f"Fake GPU {i}".encode()})

    def __getattr__(self, name):
        attr = super().__getattr__(name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def wrapped(*args, **kwargs):
            out = attr(*args, **kwargs)
            return out.view(FakeNodeArray) if isinstance(out, np.ndarray) else out
        return wrapped
