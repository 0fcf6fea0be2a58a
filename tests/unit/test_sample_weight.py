"""Per-sample weights in the core (MLP.fit / loss_and_gradients) and the poisson loss with its exp output."""
import numpy as np
import pytest

import gpunet as gn


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 3)), rng.normal(size=(n, 2))


@pytest.mark.parametrize("loss,out", [("mse", "linear"), ("mae", "linear"), ("cross_entropy", "softmax"),
                                      ("binary_cross_entropy", "sigmoid"), ("poisson", "exp")])
def test_integer_weights_equal_repeated_rows(loss, out):
    """A weight of k is the row repeated k times: the full-batch value and gradient agree to rounding."""
    X, Y = _data()
    rng = np.random.default_rng(1)
    if loss == "cross_entropy":
        Y = rng.integers(0, 2, size=X.shape[0])
    elif loss in ("binary_cross_entropy",):
        Y = rng.uniform(size=Y.shape)
    elif loss == "poisson":
        Y = rng.poisson(2.0, size=Y.shape).astype(float)
    w = rng.integers(1, 4, size=X.shape[0])
    net = gn.MLP([3, 5, 2], "tanh", out, device="cpu", dtype="float64", seed=3, l2=0.01)
    v1, g1 = net.loss_and_gradients(X, Y, loss=loss, sample_weight=w)
    v2, g2 = net.loss_and_gradients(np.repeat(X, w, axis=0), np.repeat(Y, w, axis=0), loss=loss)
    assert v1 == pytest.approx(v2, rel=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def test_weighted_gradient_matches_finite_differences():
    X, Y = _data(12)
    w = np.random.default_rng(2).uniform(0.1, 3.0, size=12)
    net = gn.MLP([3, 4, 2], "sigmoid", "linear", device="cpu", dtype="float64", seed=0)
    _, grads = net.loss_and_gradients(X, Y, sample_weight=w)
    base = net.get_weights()
    eps = 1e-6
    for k, idx in [(0, (0, 1)), (1, (1,)), (2, (0, 0))]:
        ws = [a.copy() for a in base]
        ws[k][idx] += eps
        net.set_weights(ws)
        up, _ = net.loss_and_gradients(X, Y, sample_weight=w)
        ws[k][idx] -= 2 * eps
        net.set_weights(ws)
        down, _ = net.loss_and_gradients(X, Y, sample_weight=w)
        assert grads[k][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)
        net.set_weights(base)


def test_equal_weights_train_bit_for_bit_like_none_and_keep_the_fused_step():
    X, Y = _data()
    a = gn.MLP([3, 8, 2], device="cpu", dtype="float64", seed=5)
    b = gn.MLP([3, 8, 2], device="cpu", dtype="float64", seed=5)
    ha = a.fit(X, Y, epochs=3, batch_size=7, verbose=0)
    hb = b.fit(X, Y, epochs=3, batch_size=7, verbose=0, sample_weight=np.full(X.shape[0], 2.5))
    assert ha.history["loss"] == hb.history["loss"]
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert hb.fast_paths["fused_step"]["steps"] == ha.fast_paths["fused_step"]["steps"]


def test_weighted_fit_reports_that_the_fused_step_is_off_and_is_scale_free():
    pytest.importorskip("numba")
    X, Y = _data()
    w = np.random.default_rng(3).uniform(0.5, 2.0, size=X.shape[0])
    a = gn.MLP([3, 8, 2], device="cpu", dtype="float64", seed=5)
    h = a.fit(X, Y, epochs=2, batch_size=8, verbose=0, sample_weight=w)
    assert h.fast_paths["fused_step"]["live"] is False
    assert "sample_weight" in h.fast_paths["fused_step"]["reason"]
    assert h.fast_paths["fused_step"]["steps"] == 0
    b = gn.MLP([3, 8, 2], device="cpu", dtype="float64", seed=5)
    hb = b.fit(X, Y, epochs=2, batch_size=8, verbose=0, sample_weight=w * 4.0)  # a weighted mean: scale-free
    assert h.history["loss"] == pytest.approx(hb.history["loss"], rel=1e-12)


def test_sample_weight_is_checked_before_anything_changes():
    X, Y = _data()
    net = gn.MLP([3, 4, 2], device="cpu", seed=0)
    before = net.get_weights()
    for bad, match in [(np.ones(3), "shape"), (-np.ones(X.shape[0]), ">= 0"), (np.zeros(X.shape[0]), "sums to 0"),
                       (np.full(X.shape[0], np.nan), "finite|NaN")]:
        with pytest.raises(ValueError, match=match):
            net.fit(X, Y, epochs=1, verbose=0, sample_weight=bad)
    for u, v in zip(before, net.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert net.optimizer is None and net.epochs_trained == 0


def test_validation_split_splits_the_weights_too():
    X, Y = _data()
    w = np.r_[np.ones(30), np.full(10, 1e6)]  # huge weights only on the held-out rows: no effect on training
    a = gn.MLP([3, 4, 2], device="cpu", dtype="float64", seed=1)
    b = gn.MLP([3, 4, 2], device="cpu", dtype="float64", seed=1)
    ha = a.fit(X, Y, epochs=2, batch_size=8, verbose=0, validation_split=0.25, sample_weight=w)
    hb = b.fit(X, Y, epochs=2, batch_size=8, verbose=0, validation_split=0.25)
    assert ha.history["loss"] == pytest.approx(hb.history["loss"], rel=1e-12)


def test_poisson_gradient_and_known_answer():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2))
    y = rng.poisson(3.0, size=30).astype(float)
    net = gn.MLP([2, 3, 1], "tanh", "exp", device="cpu", dtype="float64", seed=2)
    value, grads = net.loss_and_gradients(X, y, loss="poisson")
    W = net.get_weights()
    mu = np.exp(np.tanh(X @ W[0] + W[1]) @ W[2] + W[3])[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.mean(np.where(y > 0, y * np.log(y / mu), 0.0) - y + mu)
    assert value == pytest.approx(expected, rel=1e-12)
    eps = 1e-6
    for k, idx in [(0, (1, 2)), (3, (0,)), (2, (1, 0))]:
        ws = [a.copy() for a in W]
        ws[k][idx] += eps
        net.set_weights(ws)
        up, _ = net.loss_and_gradients(X, y, loss="poisson")
        ws[k][idx] -= 2 * eps
        net.set_weights(ws)
        down, _ = net.loss_and_gradients(X, y, loss="poisson")
        assert grads[k][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-10)
        net.set_weights(W)
    with pytest.raises(ValueError, match="poisson targets"):
        net.fit(X, -y, loss="poisson", verbose=0)
    with pytest.raises(ValueError, match="needs output_activation='exp'"):
        gn.MLP([2, 3, 1], device="cpu").fit(X, y, loss="poisson", verbose=0)


def test_poisson_fit_stays_off_the_fused_step_and_says_so():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = rng.poisson(np.exp(X[:, 0] * 0.5 + 1)).astype(float)
    net = gn.MLP([2, 8, 1], "tanh", "exp", device="cpu", dtype="float64", seed=0)
    h = net.fit(X, y, loss="poisson", epochs=40, batch_size=10, verbose=0, optimizer=gn.Adam(lr=0.01))
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.fast_paths["fused_step"]["steps"] == 0


def test_exp_output_exports_to_onnx():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import os
    import tempfile
    X = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    net = gn.MLP([2, 3, 1], "tanh", "exp", device="cpu", seed=0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        net.to_onnx(path)
        out = ort.InferenceSession(path).run(None, {"X": X})[0]
    np.testing.assert_allclose(out, net.predict(X), rtol=1e-5)
