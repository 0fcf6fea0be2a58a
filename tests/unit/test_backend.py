"""Device resolution, including the CUDA branches a CPU machine can only reach by monkeypatching."""
import contextlib
import logging
import os
import sys
import types

import numpy as np
import pytest

import gpunet as gn
from gpunet import backend


@pytest.fixture(autouse=True)
def fresh_probe():
    backend.cuda_status.cache_clear()
    backend._announced.clear()
    yield
    backend.cuda_status.cache_clear()


def no_cupy(monkeypatch):
    def fail():
        raise ImportError("CuPy is not installed or failed to import (ModuleNotFoundError: No module named 'cupy')")
    monkeypatch.setattr(backend, "import_cupy", fail)


def fake_cupy(monkeypatch, available=True, smoke_error=None, count=1):
    class Device:
        def __init__(self, i=0):
            self.id = i

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    def arange(*a, **k):
        if smoke_error:
            raise smoke_error
        raise AssertionError("unreachable in these tests")

    cuda = types.SimpleNamespace(is_available=lambda: available, Device=Device,
                                 runtime=types.SimpleNamespace(getDeviceCount=lambda: count))
    mod = types.SimpleNamespace(cuda=cuda, arange=arange, float32="float32", float64="float64")
    monkeypatch.setattr(backend, "import_cupy", lambda: mod)


def test_cpu_always_available():
    assert gn.devices()[0] == "cpu"
    assert backend.resolve("cpu") is backend.CPU
    assert gn.MLP([2, 1], device="cpu").device == "cpu"


def test_cuda_without_cupy_names_the_reason_and_the_extra(monkeypatch):
    no_cupy(monkeypatch)
    with pytest.raises(gn.DeviceUnavailableError, match=r"CuPy is not installed.*gpunet\[cuda12\]") as err:
        gn.MLP([2, 1], device="cuda")
    assert isinstance(err.value, RuntimeError)
    assert gn.devices() == ["cpu"]


def test_cupy_without_a_device(monkeypatch):
    fake_cupy(monkeypatch, available=False)
    with pytest.raises(gn.DeviceUnavailableError, match="no usable CUDA device"):
        backend.resolve("cuda:0")


def test_failing_smoke_test_is_unavailable(monkeypatch):
    fake_cupy(monkeypatch, smoke_error=RuntimeError("cudaErrorInsufficientDriver: driver too old"))
    with pytest.raises(gn.DeviceUnavailableError, match="smoke test.*cudaErrorInsufficientDriver"):
        backend.resolve("cuda")


def test_missing_device_index(monkeypatch):
    fake_cupy(monkeypatch, count=1)
    with pytest.raises(gn.DeviceUnavailableError, match="cuda:3 was requested but only 1"):
        backend.resolve("cuda:3")


def test_auto_falls_back_to_cpu_and_logs_why_once(monkeypatch, caplog):
    no_cupy(monkeypatch)
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    with caplog.at_level(logging.INFO, logger="gpunet"):
        assert backend.resolve("auto") is backend.CPU
        assert backend.resolve(None) is backend.CPU
    lines = [r.getMessage() for r in caplog.records if "using the CPU" in r.getMessage()]
    assert len(lines) == 1 and "CuPy is not installed" in lines[0]


def test_env_variable_selects_device(monkeypatch):
    no_cupy(monkeypatch)
    monkeypatch.setenv("GPUNET_DEVICE", "cuda")
    with pytest.raises(gn.DeviceUnavailableError):
        backend.resolve("auto")
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")
    assert backend.resolve("auto") is backend.CPU
    assert backend.resolve("cpu") is backend.CPU  # an explicit device wins over the variable


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cuda:-1", 3, ""])
def test_bad_device_spec(bad):
    with pytest.raises(ValueError, match="device"):
        backend.resolve(bad)


def test_transfers_are_copies():
    a = np.arange(4.0)
    d = backend.CPU.to_device(a, "float32")
    assert d.dtype == np.float32
    h = backend.CPU.to_host(d)
    h[0] = 99
    assert d[0] == 0


def test_dtype_names():
    assert backend.check_dtype(np.float64) == "float64"
    for bad in ("int32", "float16", "complex64", None):
        with pytest.raises(ValueError, match="dtype must be one of float32, float64"):
            backend.check_dtype(bad)


def test_tf32_is_opt_in_and_set_before_cupy_is_used(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    monkeypatch.delenv("GPUNET_TF32", raising=False)
    import os
    import sys
    monkeypatch.setitem(sys.modules, "cupy", None)  # an import that fails, after reading the variable
    with pytest.raises(ImportError):
        backend.import_cupy()
    assert "CUPY_TF32" not in os.environ
    monkeypatch.setenv("GPUNET_TF32", "1")
    with pytest.raises(ImportError):
        backend.import_cupy()
    assert os.environ["CUPY_TF32"] == "1"
    backend.set_tf32(False)
    assert os.environ["CUPY_TF32"] == "0"


def test_namespace_of_cupy_arrays_without_the_array_api_hook(monkeypatch):
    """CuPy 14's ndarray has no __array_namespace__: its arrays are recognised by their module."""
    fake_cupy = types.SimpleNamespace(name="cupy")
    monkeypatch.setattr(backend, "import_cupy", lambda: fake_cupy)
    FakeCupyArray = type("ndarray", (), {"__module__": "cupy._core.core"})
    assert backend.namespace(FakeCupyArray()) is fake_cupy
    assert backend.namespace(np.zeros(2)) is np
    assert backend.namespace(np.float32(1.0)) is np
    with pytest.raises(TypeError, match="expected an array"):
        backend.namespace([1, 2])


def test_installed_cupy_arrays_lack_the_hook_or_resolve_to_cupy():
    """Guards the assumption above against the CuPy actually installed (no GPU needed)."""
    cupy = pytest.importorskip("cupy")
    assert cupy.ndarray.__module__.partition(".")[0] == "cupy"
    if hasattr(cupy.ndarray, "__array_namespace__"):
        pytest.skip("this CuPy implements __array_namespace__")


def test_the_device_probe_does_not_fix_cupys_tf32_mode(monkeypatch):
    """CuPy fixes the float32 compute type at its first float32 GEMM (cupy/_core/_routines_linalg.pyx,
    get_compute_type): the probe multiplies float64 matrices only."""
    seen = []

    class Arr:
        def __init__(self, v):
            self.v = np.asarray(v)

        def __mul__(self, k):
            return Arr(self.v * k)

        def __add__(self, k):
            return Arr(self.v + k)

        def reshape(self, *s):
            return Arr(self.v.reshape(*s))

        def __matmul__(self, o):
            seen.append(self.v.dtype)
            return Arr(self.v @ o.v)

        def sum(self):
            return Arr(self.v.sum())

        def get(self):
            return self.v

    def arange(n, dtype):
        return Arr(np.arange(n, dtype=dtype))
    props = {"name": b"Fake GPU"}
    cuda = types.SimpleNamespace(is_available=lambda: True, Device=lambda i=0: contextlib.nullcontext(),
                                 runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                                               getDeviceProperties=lambda i: props))
    monkeypatch.setattr(backend, "import_cupy", lambda: types.SimpleNamespace(
        cuda=cuda, arange=arange, float32=np.float32, float64=np.float64))
    backend.cuda_status.cache_clear()
    try:
        assert backend.cuda_status(0) == (True, "Fake GPU")
    finally:
        backend.cuda_status.cache_clear()
    assert seen == [np.float64]


def test_set_tf32_sets_cupys_compute_type_once_cupy_is_imported(monkeypatch):
    calls = []
    linalg = types.SimpleNamespace(COMPUTE_TYPE_DEFAULT=1, COMPUTE_TYPE_TF32=7, state={np.float32: 1})
    linalg.set_compute_type = lambda dtype, ct: calls.append((dtype, ct)) or linalg.state.__setitem__(dtype, ct)
    linalg.get_compute_type = lambda dtype: linalg.state[dtype]
    core = types.SimpleNamespace(_routines_linalg=linalg)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(_core=core))
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    monkeypatch.setenv("CUPY_TF32", "0")
    assert backend.tf32_effective() is False
    backend.set_tf32(True)
    assert calls == [(np.float32, 7)] and backend.tf32_effective() is True and os.environ["CUPY_TF32"] == "1"
    backend.set_tf32(False)
    assert backend.tf32_effective() is False


@pytest.mark.parametrize("env, gpus, expected", [
    ({}, 4, "cuda:0"),                                            # one process: the first GPU
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "5"}, 4, "cuda:1"),           # Open MPI's local rank, mod the GPU count
    ({"MPI_LOCALRANKID": "2"}, 4, "cuda:2"),                      # MPICH / Intel MPI
    ({"SLURM_LOCALID": "3"}, 2, "cuda:1"),                        # srun
    ({"GPUNET_LOCAL_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, 4, "cuda:3"),  # gpunet.distributed.init()'s
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}, 1, "cuda:0"),           # one visible GPU per rank
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "x"}, 4, "cuda:0"),           # not a number: ignored
])
def test_auto_and_cuda_pick_the_local_ranks_gpu(monkeypatch, env, gpus, expected):
    """Under MPI on a node with several GPUs, device "auto" and "cuda" name GPU local_rank % n_gpus (the fake
    CuPy of a node with that many GPUs), probed on that device; an explicit "cuda:N" and
    $GPUNET_DEVICE=cpu still win."""
    from fakes.cuda import FakeNode

    node = FakeNode(gpus)
    monkeypatch.setattr(backend, "import_cupy", lambda: node)
    backend._cached_cuda_backend.cache_clear()
    for name in backend.LOCAL_RANK_VARIABLES + ("GPUNET_DEVICE",):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        auto, cuda = backend.resolve("auto"), backend.resolve("cuda")
        assert auto.name == cuda.name == expected and auto.kind == "cupy"
        assert auto.device.id == int(expected[5:]) and node.entered == [int(expected[5:])]  # the probe ran there
        assert backend.resolve("cuda:0").name == "cuda:0"
        monkeypatch.setenv("GPUNET_DEVICE", "cpu")
        assert backend.resolve("auto") is backend.CPU
    finally:
        backend._cached_cuda_backend.cache_clear()
