"""Per-sample weights in the core at the edges of float32: weights float64 holds but float32 does not, and
batches whose weights are all zero. Each test pins a defect found by attacking MLP.fit(sample_weight=)."""
import numpy as np
import pytest

import gpunet as gn


def _data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    return X, (X[:, :1] > 0).astype(np.float32)


def _net(dtype="float32"):
    return gn.MLP([3, 4, 1], "relu", "sigmoid", device="cpu", dtype=dtype, seed=0)


@pytest.mark.parametrize("scale", [1e-50, 1e39, 1e300])
def test_weights_beyond_float32_range_give_the_weighted_mean(scale):
    """A weighted mean does not depend on the weights' scale; float32 turned 1e39 into inf and 1e-50 into 0
    (NaN loss, reported as a diverged learning rate)."""
    X, y = _data()
    w = np.random.default_rng(1).integers(1, 4, size=len(X)).astype(np.float64)
    v_ref, g_ref = _net().loss_and_gradients(X, y, sample_weight=w)
    v, g = _net().loss_and_gradients(X, y, sample_weight=w * scale)
    assert v == pytest.approx(v_ref, rel=1e-6)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    h = _net().fit(X, y, epochs=2, batch_size=10, sample_weight=w * scale, verbose=0)
    assert np.isfinite(h.history["loss"]).all()


def test_one_huge_weight_among_ones_trains_in_float32():
    X, y = _data()
    w = np.r_[1e39, np.ones(len(X) - 1)]
    h = _net().fit(X, y, epochs=2, batch_size=25, sample_weight=w, verbose=0)
    assert np.isfinite(h.history["loss"]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_batch_of_zero_weights_contributes_nothing(dtype):
    """Rows of weight 0 are removed rows, also when a whole batch is made of them: it was 0/0 = NaN and a
    DivergenceError blaming the learning rate."""
    X, y = _data()
    w = np.r_[np.zeros(10), np.ones(len(X) - 10)]
    net = _net(dtype)
    h = net.fit(X, y, epochs=2, batch_size=10, shuffle=False, sample_weight=w, optimizer=gn.SGD(lr=0.1),
                verbose=0)
    assert np.isfinite(h.history["loss"]).all()
    ref = _net(dtype)
    ref.fit(X, y, epochs=1, batch_size=10, shuffle=False, sample_weight=w, optimizer=gn.SGD(lr=0.1), verbose=0)
    # the zero batch is first: plain SGD (no momentum) takes no step on it (only the zero penalty: l2=0)
    start = _net(dtype)
    start.fit(X[10:], y[10:], epochs=1, batch_size=10, shuffle=False, optimizer=gn.SGD(lr=0.1), verbose=0)
    for a, b in zip(ref.get_weights(), start.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sample_weight", [2.0, np.full(50, 2.0)])
def test_validation_split_takes_the_weights_fit_takes(sample_weight):
    """A scalar weight is accepted by fit, so also with validation_split (it was refused there)."""
    X, y = _data()
    h = _net().fit(X, y, epochs=1, validation_split=0.2, sample_weight=sample_weight, verbose=0)
    ref = _net().fit(X, y, epochs=1, validation_split=0.2, verbose=0)
    assert h.history["loss"] == pytest.approx(ref.history["loss"])


def test_validation_split_names_the_shape_the_caller_passed():
    """A (n, 1) weight column was cut first and then refused as "(40,) expected": name the caller's n."""
    X, y = _data()
    with pytest.raises(ValueError, match=r"shape \(50,\).*got \(50, 1\)"):
        _net().fit(X, y, epochs=1, validation_split=0.2, sample_weight=np.ones((50, 1)), verbose=0)
