"""Finite-difference checks of loss_and_gradients in float64 for every loss x output x hidden activation."""
import itertools

import numpy as np
import pytest

import gpunet as gn

HIDDEN = ["relu", "sigmoid", "tanh", "linear"]
CASES = [("mse", o) for o in ["linear", "sigmoid", "tanh", "softmax"]] + \
        [("mae", o) for o in ["linear", "sigmoid", "softmax"]] + \
        [("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid")]


def targets(loss, rng, n, k):
    if loss == "cross_entropy":
        return rng.integers(0, k, size=n)
    if loss == "binary_cross_entropy":
        return rng.uniform(0, 1, size=(n, k))
    return rng.standard_normal((n, k))


def numeric_gradient(net, X, y, loss, eps=1e-6):
    ws = net.get_weights()
    grads = []
    for w in ws:
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            orig = w[idx]
            w[idx] = orig + eps
            net.set_weights(ws)
            plus = net.evaluate(X, y, loss=loss)["loss"]
            w[idx] = orig - eps
            net.set_weights(ws)
            minus = net.evaluate(X, y, loss=loss)["loss"]
            w[idx] = orig
            g[idx] = (plus - minus) / (2 * eps)
        grads.append(g)
    net.set_weights(ws)
    return grads


@pytest.mark.parametrize("hidden,case", list(itertools.product(HIDDEN, CASES)))
def test_gradient_matches_finite_differences(hidden, case, rng):
    loss, out = case
    n, k = 7, 3
    X = rng.standard_normal((n, 4))
    y = targets(loss, rng, n, k)
    net = gn.MLP([4, 5, 4, k], hidden, out, device="cpu", dtype="float64", seed=3)
    # move ReLU kinks and |.| kinks away from the evaluation point
    net.set_weights([w + 0.1 * rng.standard_normal(w.shape) for w in net.get_weights()])
    value, grads = net.loss_and_gradients(X, y, loss=loss)
    assert value == pytest.approx(net.evaluate(X, y, loss=loss)["loss"], rel=1e-12)
    expected = numeric_gradient(net, X, y, loss)
    for g, e in zip(grads, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.01), (0.003, 0.0), (0.002, 0.005)])
def test_gradient_with_l1_l2_penalties(l1, l2, rng):
    X = rng.standard_normal((6, 3))
    y = rng.integers(0, 2, size=6)
    net = gn.MLP([3, 4, 2], "tanh", "softmax", device="cpu", dtype="float64", seed=1, l1=l1, l2=l2)
    value, grads = net.loss_and_gradients(X, y)
    plain = gn.MLP([3, 4, 2], "tanh", "softmax", device="cpu", dtype="float64", seed=1)
    W = net.get_weights()[0::2]
    penalty = sum(l1 * np.abs(w).sum() + l2 * (w ** 2).sum() for w in W)
    assert value == pytest.approx(plain.evaluate(X, y)["loss"] + penalty, rel=1e-12)
    assert net.evaluate(X, y, penalty=False)["loss"] == pytest.approx(plain.evaluate(X, y)["loss"], rel=1e-12)
    for g, e in zip(grads, numeric_gradient(net, X, y, "cross_entropy")):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_one_hot_and_integer_labels_give_the_same_gradient(rng):
    X = rng.standard_normal((5, 3))
    labels = np.array([0, 2, 1, 2, 0])
    net = gn.MLP([3, 4, 3], output_activation="softmax", device="cpu", dtype="float64")
    v1, g1 = net.loss_and_gradients(X, labels)
    v2, g2 = net.loss_and_gradients(X, np.eye(3)[labels])
    assert v1 == v2
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)
