"""Property-based tests over random shapes, dtypes, activations and losses."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import gpunet as gn

LOSS_FOR_OUTPUT = {"linear": ["mse", "mae"], "tanh": ["mse", "mae"], "relu": ["mse"], "sigmoid": ["binary_cross_entropy", "mse"],
                   "softmax": ["cross_entropy", "mse"]}


@st.composite
def problems(draw):
    layers = draw(st.lists(st.integers(1, 7), min_size=2, max_size=5))
    out = draw(st.sampled_from(sorted(LOSS_FOR_OUTPUT)))
    if out == "softmax" and layers[-1] < 2:
        layers[-1] = 2
    loss = draw(st.sampled_from(LOSS_FOR_OUTPUT[out]))
    hidden = draw(st.sampled_from(["relu", "sigmoid", "tanh", "linear"]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    n = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, layers[0])) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    k = layers[-1]
    if loss == "cross_entropy":
        y = rng.integers(0, k, n)
    elif loss == "binary_cross_entropy":
        y = rng.uniform(0, 1, (n, k))
    else:
        y = rng.standard_normal((n, k))
    return dict(layers=layers, hidden=hidden, out=out, loss=loss, dtype=dtype, X=X, y=y, seed=seed)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems())
def test_forward_backward_shapes_and_finiteness(p):
    net = gn.MLP(p["layers"], p["hidden"], p["out"], device="cpu", dtype=p["dtype"], seed=p["seed"] % 1000)
    out = net.predict(p["X"])
    assert out.shape == (len(p["X"]), p["layers"][-1]) and out.dtype == np.dtype(p["dtype"])
    assert np.isfinite(out).all()
    if p["out"] == "softmax":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    value, grads = net.loss_and_gradients(p["X"], p["y"], loss=p["loss"])
    assert np.isfinite(value) and value >= 0
    weights = net.get_weights()
    assert [g.shape for g in grads] == [w.shape for w in weights]
    assert all(np.isfinite(g).all() and g.dtype == np.dtype(p["dtype"]) for g in grads)
    hist = net.fit(p["X"], p["y"], epochs=2, batch_size=3, loss=p["loss"], optimizer=gn.SGD(lr=1e-3), verbose=0)
    assert len(hist.history["loss"]) == 2 and all(np.isfinite(hist.history["loss"]))


@SETTINGS
@given(p=problems())
def test_save_load_round_trip(tmp_path_factory, p):
    path = tmp_path_factory.mktemp("rt") / "m.npz"
    net = gn.MLP(p["layers"], p["hidden"], p["out"], device="cpu", dtype=p["dtype"], seed=p["seed"] % 1000)
    net.fit(p["X"], p["y"], epochs=1, batch_size=4, loss=p["loss"], optimizer=gn.Adam(lr=1e-3), verbose=0)
    net.save(path)
    back = gn.load(path, device="cpu")
    assert back.layer_sizes == net.layer_sizes and back.dtype == net.dtype and back.loss == net.loss
    for a, b in zip(net.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(net.predict(p["X"]), back.predict(p["X"]))
    assert back.optimizer.step_count == net.optimizer.step_count
    for k, v in net.optimizer.state.items():
        np.testing.assert_array_equal(v, back.optimizer.state[k])


@SETTINGS
@given(problems(), st.integers(1, 12))
def test_predict_is_independent_of_batch_size(p, batch_size):
    net = gn.MLP(p["layers"], p["hidden"], p["out"], device="cpu", dtype="float64", seed=1)
    np.testing.assert_allclose(net.predict(p["X"], batch_size=batch_size), net.predict(p["X"]), rtol=1e-12, atol=1e-14)
    e1 = net.evaluate(p["X"], p["y"], loss=p["loss"], batch_size=batch_size)
    e2 = net.evaluate(p["X"], p["y"], loss=p["loss"])
    assert e1["loss"] == pytest.approx(e2["loss"], rel=1e-10, abs=1e-12)
