"""The core runs unchanged under NumPy and array_api_strict (which refuses what CuPy refuses), and
every fast CPU path equals the reference primitives."""
import numpy as np
import pytest

import gpunet as gn
from gpunet import backend, ops as _ops
from gpunet.nn import losses
from gpunet.ops import get_ops

from conftest import strict_or_skip


def make(device, **kw):
    kw.setdefault("dtype", "float64")
    return gn.MLP([5, 8, 6, 3], kw.pop("hidden", "tanh"), kw.pop("out", "softmax"), device=device, seed=7, **kw)


def data(rng, n=13):
    return rng.standard_normal((n, 5)), rng.integers(0, 3, size=n)


@pytest.mark.parametrize("hidden,out,loss", [("relu", "softmax", "cross_entropy"), ("sigmoid", "sigmoid", "binary_cross_entropy"),
                                             ("tanh", "linear", "mse"), ("relu", "tanh", "mae")])
def test_strict_namespace_gives_the_same_numbers(hidden, out, loss, rng):
    strict = strict_or_skip()
    X, labels = data(rng)
    y = labels if loss == "cross_entropy" else (np.eye(3)[labels] if loss == "binary_cross_entropy" else rng.standard_normal((13, 3)))
    a, b = make("cpu", hidden=hidden, out=out), make(strict, hidden=hidden, out=out)
    assert b.device == "array_api_strict"
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-12)
    va, ga = a.loss_and_gradients(X, y, loss=loss)
    vb, gb = b.loss_and_gradients(X, y, loss=loss)
    assert va == pytest.approx(vb, rel=1e-12)
    for x1, x2 in zip(ga, gb):
        np.testing.assert_allclose(x1, x2, rtol=1e-10, atol=1e-14)
    for opt in (lambda: gn.Adam(lr=0.01, amsgrad=True), lambda: gn.SGD(lr=0.05, momentum=0.9, nesterov=True)):
        ha = a.fit(X, y, epochs=3, batch_size=4, optimizer=opt(), loss=loss, verbose=0)
        hb = b.fit(X, y, epochs=3, batch_size=4, optimizer=opt(), loss=loss, verbose=0)
        np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-10)
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)


def test_strict_backend_really_rejects_numpy_mixing():
    strict = strict_or_skip()
    x = strict.to_device(np.ones((2, 2)))
    with pytest.raises(TypeError):
        x + np.ones((2, 2))
    with pytest.raises(RuntimeError):
        np.asarray(x)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "linear"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_fast_ops_equal_reference(act, dtype, rng):
    fast, ref = _ops.NumpyOps(backend.CPU), _ops.ArrayOps(backend.CPU)
    tol = dict(rtol=2e-6 if dtype == "float32" else 1e-13, atol=1e-7 if dtype == "float32" else 1e-15)
    z = (3 * rng.standard_normal((6, 4))).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    np.testing.assert_allclose(fast.bias_activation(z.copy(), b, act), ref.bias_activation(z.copy(), b, act), **tol)
    a = ref.bias_activation(z.copy(), b, act)
    d = rng.standard_normal((6, 4)).astype(dtype)
    np.testing.assert_allclose(fast.activation_backward(d.copy(), a, act), ref.activation_backward(d.copy(), a, act), **tol)
    for out in ("softmax", act):
        np.testing.assert_allclose(fast.activation(out, z, np.empty_like(z)), ref.activation(out, z, np.empty_like(z)), **tol)
    W = rng.standard_normal((4, 3)).astype(dtype)
    for f in ("matmul",):
        np.testing.assert_allclose(getattr(fast, f)(z, W, np.empty((6, 3), dtype)), z @ W, **tol)
    np.testing.assert_allclose(fast.matmul_tn(z, d, np.empty((4, 4), dtype)), z.T @ d, **tol)
    np.testing.assert_allclose(fast.matmul_nt(d, W.T.copy(), np.empty((6, 3), dtype)), d @ W, **tol)
    np.testing.assert_allclose(fast.sum_rows(d, np.empty(4, dtype)), d.sum(axis=0), **tol)
    idx = np.array([3, 0, 5])
    np.testing.assert_array_equal(fast.take_rows(z, idx, np.empty((3, 4), dtype)), z[idx])
    y = np.eye(4, dtype=dtype)[[0, 1, 2, 3, 0, 1]]
    for loss, out in (("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid"), ("mse", act)):
        a_out = ref.activation(out, z, np.empty_like(z))
        d1, d2 = np.empty_like(z), np.empty_like(z)
        v1 = fast.loss_delta(loss, out, z, a_out, y, d1)
        v2 = ref.loss_delta(loss, out, z, a_out, y, d2)
        np.testing.assert_allclose(v1, v2, **tol)
        np.testing.assert_allclose(d1, d2, **tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_optimizer_kernels_equal_reference(dtype, rng):
    ops = get_ops(backend.CPU)
    if ops.adam is None:
        pytest.skip("Numba not installed")
    for make_opt in (lambda: gn.Adam(lr=1e-2, weight_decay=0.01, amsgrad=True), lambda: gn.AdamW(lr=1e-2),
                     lambda: gn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                     lambda: gn.SGD(lr=0.1, momentum=0.5, dampening=0.1)):
        p0 = rng.standard_normal(1000).astype(dtype)
        fast_p, ref_p = p0.copy(), p0.copy()
        fast, ref = make_opt(), make_opt()
        fast.bind(fast_p)
        ref.bind(ref_p)
        for _ in range(10):
            g = rng.standard_normal(1000).astype(dtype)
            fast.step(fast_p, g, ops)
            ref.step(ref_p, g, None)
        tol = 1e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(fast_p, ref_p, rtol=tol, atol=tol)
        assert fast_p.dtype == np.dtype(dtype)


def test_same_seed_same_weights_and_batch_order():
    a, b = make("cpu", dtype="float32"), make("cpu", dtype="float32")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.shuffle_rng.permutation(100), b.shuffle_rng.permutation(100))
    c = gn.MLP([5, 8, 6, 3], "tanh", "softmax", device="cpu", seed=8)
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_float32_and_float64_start_from_the_same_weights():
    a, b = make("cpu", dtype="float32"), make("cpu", dtype="float64")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.dtype == np.float32 and wb.dtype == np.float64
        np.testing.assert_array_equal(wa, wb.astype(np.float32))


FUSED_CASES = [(h, o, l) for h in ("relu", "sigmoid", "tanh", "linear")
               for o, l in (("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("linear", "mse"),
                            ("tanh", "mae"), ("softmax", "mse"), ("relu", "mse"), ("sigmoid", "mae"))]


def fused_or_skip():
    ops = get_ops(backend.CPU)
    if ops._mlp_step is None:
        pytest.skip("Numba (with SciPy BLAS) not available: no fused CPU step")
    return ops


def targets_for(loss, rng, n, k):
    if loss == "cross_entropy":
        return np.eye(k)[rng.integers(0, k, n)]
    if loss == "binary_cross_entropy":
        return rng.uniform(0, 1, (n, k))
    return rng.standard_normal((n, k))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden,out,loss", FUSED_CASES)
def test_fused_cpu_step_equals_reference_gradients(hidden, out, loss, dtype, rng):
    ops = fused_or_skip()
    net = gn.MLP([5, 7, 6, 4], hidden, out, device="cpu", dtype=dtype, seed=2)
    net.set_weights([w + 0.05 * rng.standard_normal(w.shape) for w in net.get_weights()])
    X = rng.standard_normal((30, 5)).astype(dtype)
    Y = targets_for(loss, rng, 30, 4).astype(dtype)
    idx = rng.permutation(30)[:11]  # a partial batch of a 16-row workspace, rows out of order
    ws = net.workspace(16)
    value, correct = ops.fused_step(net, ws, X, Y, idx, loss)
    fused_grads = net.grads.copy()
    counted = loss in ("cross_entropy", "binary_cross_entropy")
    ref_value, a_out, ref_correct = net.step_gradients(X[idx], Y[idx], net.workspace(11), loss, train=False,
                                                        count=counted)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    assert value == pytest.approx(float(ref_value), rel=tol["rtol"], abs=tol["atol"])
    np.testing.assert_allclose(fused_grads, net.grads, **tol)
    if counted:
        assert correct == float(losses.correct(loss, a_out, Y[idx])) == float(ref_correct)


def test_fused_step_is_used_only_for_small_layers(monkeypatch, rng):
    ops = fused_or_skip()
    small = gn.MLP([1] + [50] * 9 + [1], device="cpu")
    large = gn.MLP([784, 512, 10], output_activation="softmax", device="cpu")
    assert ops._fusable(small) and not ops._fusable(large)
    X = rng.standard_normal((8, 784)).astype(np.float32)
    assert ops.fused_step(large, large.workspace(8), X, np.eye(10, dtype=np.float32)[:8], np.arange(8), "cross_entropy") is None
    monkeypatch.setenv("GPUNET_FUSED", "1")
    assert ops._fusable(large)
    monkeypatch.setenv("GPUNET_FUSED", "0")
    assert not ops._fusable(small)


def test_fused_training_matches_the_unfused_path(monkeypatch, rng):
    fused_or_skip()
    X, y = gn.datasets.sinc(200, seed=0)
    a = gn.MLP([1, 16, 16, 1], "tanh", device="cpu", dtype="float64", seed=0)
    ha = a.fit(X, y, epochs=3, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0)
    monkeypatch.setattr(_ops.NumpyOps, "fused_step", lambda self, *args: None)
    b = gn.MLP([1, 16, 16, 1], "tanh", device="cpu", dtype="float64", seed=0)
    hb = b.fit(X, y, epochs=3, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-10)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("penalty", [dict(l2=1e-2), dict(l1=1e-3, l2=1e-3)])
def test_fused_training_with_penalties_matches_the_unfused_path(monkeypatch, penalty):
    """L1/L2 ride beside the fused step (the penalty's gradient is added after it): the same training as
    the per-layer primitives, and the fused step really ran (its step count)."""
    fused_or_skip()
    X, y = gn.datasets.sinc(120, seed=1)
    a = gn.MLP([1, 16, 16, 1], "tanh", device="cpu", dtype="float64", seed=0, **penalty)
    ha = a.fit(X, y, epochs=3, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0)
    assert ha.fast_paths["fused_step"]["steps"] == 3 * 8
    monkeypatch.setattr(_ops.NumpyOps, "fused_step", lambda self, *args: None)
    b = gn.MLP([1, 16, 16, 1], "tanh", device="cpu", dtype="float64", seed=0, **penalty)
    hb = b.fit(X, y, epochs=3, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0)
    assert hb.fast_paths["fused_step"]["steps"] == 0
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-10)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)


def test_strict_namespace_with_dropout_and_penalties(rng):
    """Dropout masks (drawn on the host from the same seeded stream) and L1/L2 penalties give the
    same training under NumPy and under array_api_strict."""
    strict = strict_or_skip()
    X, y = data(rng, n=24)
    kw = dict(dropout=0.25, l1=1e-3, l2=1e-2)
    a, b = make("cpu", **kw), make(strict, **kw)
    ha = a.fit(X, y, epochs=3, batch_size=8, optimizer=gn.Adam(lr=1e-2), verbose=0)
    hb = b.fit(X, y, epochs=3, batch_size=8, optimizer=gn.Adam(lr=1e-2), verbose=0)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-10)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-9, atol=1e-12)
    assert a.evaluate(X, y)["loss"] == pytest.approx(b.evaluate(X, y)["loss"], rel=1e-10)


def test_the_fused_float32_tanh_is_within_4e_7_of_tanh():
    """The fused CPU steps' float32 tanh (Eigen's rational approximation, as XLA uses) against float64 tanh
    on a dense grid, tiny and huge values, with NaN passing through; float64 keeps libm's tanh."""
    fused_or_skip()
    import math

    import numba

    from gpunet.ops import numba_kernels as nk

    @numba.njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = nk._tanh(x[i])

    grid = np.concatenate([np.linspace(-12, 12, 400001), np.logspace(-40, 1.5, 4000), -np.logspace(-40, 1.5, 4000),
                           [0.0, np.inf, -np.inf, np.finfo(np.float32).max]])
    x32 = grid.astype(np.float32)
    out = np.empty_like(x32)
    apply(x32, out)
    ref = np.tanh(x32.astype(np.float64))
    assert np.abs(out - ref).max() < 4e-7
    assert np.all(np.abs(out) <= 1) and np.all(np.sign(out) == np.sign(ref))
    nan = np.array([np.nan], np.float32)
    apply(nan, nan)
    assert np.isnan(nan[0])
    x64 = np.linspace(-5, 5, 1001)
    out64 = np.empty_like(x64)
    apply(x64, out64)
    np.testing.assert_array_equal(out64, [math.tanh(v) for v in x64])
