"""Arrays from other libraries: DLPack producers (no host copy on the CPU), pandas frames, torch."""
import numpy as np
import pytest

import gpunet as gn
from gpunet import checks


class DLPackOnly:
    """An array that offers nothing but the DLPack protocol (like a foreign library's CPU tensor)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class FakeCudaTensor(DLPackOnly):
    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 3)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(np.int64)


def test_dlpack_input_is_used_without_a_copy_and_gives_numpys_numbers():
    X, y = _data()
    net = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cpu")
    Xd, _ = net.upload(DLPackOnly(X), None, None, targets=False)
    assert np.shares_memory(Xd, X)  # validated and "uploaded" in place: no host copy
    ref = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cpu")
    h1 = ref.fit(X, y, epochs=2, batch_size=16, verbose=0)
    h2 = net.fit(DLPackOnly(X), DLPackOnly(y), epochs=2, batch_size=16, verbose=0)
    assert h1.history == h2.history
    np.testing.assert_array_equal(net.predict(DLPackOnly(X)), ref.predict(X))
    assert net.evaluate(DLPackOnly(X), y) == ref.evaluate(X, y)


def test_pandas_frames():
    pd = pytest.importorskip("pandas")
    X, y = _data()
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    net = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cpu")
    ref = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cpu")
    net.fit(frame, pd.Series(y), epochs=1, batch_size=16, verbose=0)
    ref.fit(X, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_array_equal(net.predict(frame), ref.predict(X))


def test_cuda_array_on_a_cpu_model_says_how_to_copy():
    X, _ = _data()
    net = gn.MLP([3, 8, 2], seed=0, device="cpu")
    before = net.get_weights()
    with pytest.raises(TypeError, match="CUDA array but this model is on the CPU"):
        net.fit(FakeCudaTensor(X), np.zeros((64, 2)), epochs=1, verbose=0)
    assert all((a == b).all() for a, b in zip(before, net.get_weights()))
    assert checks.is_device_array(FakeCudaTensor(X)) and not checks.is_device_array(DLPackOnly(X))


def test_torch_tensors_equal_numpy():
    torch = pytest.importorskip("torch")
    X, y = _data()
    t = torch.from_numpy(X)
    net = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cpu")
    assert np.shares_memory(net.upload(t, None, None, targets=False)[0], X)
    ref = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cpu")
    assert net.fit(t, torch.from_numpy(y), epochs=1, verbose=0).history == ref.fit(X, y, epochs=1, verbose=0).history
    with pytest.raises(TypeError, match="DLPack"):
        net.predict(torch.from_numpy(X).requires_grad_())


@pytest.mark.gpu
def test_cupy_input_stays_on_the_device():
    cupy = pytest.importorskip("cupy")
    from gpunet import backend

    ok, why = backend.cuda_status(0)
    if not ok:
        pytest.skip(why)
    X, y = _data()
    Xg = cupy.asarray(X)
    net = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cuda")
    Xd, _ = net.upload(Xg, None, None, targets=False)
    assert Xd.data.ptr == Xg.data.ptr  # the same device memory: no trip through the host
    ref = gn.MLP([3, 8, 2], "tanh", "softmax", seed=0, device="cuda")
    np.testing.assert_array_equal(net.predict(Xg), ref.predict(X))
    net.fit(Xg, cupy.asarray(y), epochs=1, verbose=0)
