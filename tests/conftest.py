import numpy as np
import pytest
from helpers import strict_backend

from gpunet import backend


def pytest_collection_modifyitems(config, items):
    ok, why = backend.cuda_status(0)
    if ok:
        return
    skip = pytest.mark.skip(reason=f"no usable CUDA device: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def strict_or_skip():
    pytest.importorskip("array_api_strict")
    return strict_backend()


@pytest.fixture(params=["numpy", "array_api_strict"])
def any_backend(request):
    """The CPU backend and the strict Array-API stand-in for CuPy."""
    return backend.CPU if request.param == "numpy" else strict_or_skip()
