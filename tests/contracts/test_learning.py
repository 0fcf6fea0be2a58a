"""Training that must reach a real result."""
import numpy as np
import pytest

import gpunet as gn


def test_xor_is_learned():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0])
    net = gn.MLP([2, 8, 2], "tanh", "softmax", device="cpu", seed=0)
    net.fit(X, y, epochs=300, batch_size=4, optimizer=gn.Adam(lr=0.05), verbose=0)
    assert (net.predict(X).argmax(axis=1) == y).all()
    assert net.evaluate(X, y)["loss"] < 0.05


def test_sinc_seed_network_converges_with_default_init():
    """The seed experiment: sin(x)/x + 2 by [1, 50 x 9, 1], plain SGD lr 0.01, batch 20."""
    X, y = gn.datasets.sinc(1000, seed=0)
    Xv, yv = gn.datasets.sinc(300, seed=1)
    net = gn.MLP([1] + [50] * 9 + [1], "relu", "linear", device="cpu", seed=0)
    start = net.evaluate(Xv, yv)["loss"]
    hist = net.fit(X, y, epochs=40, batch_size=20, optimizer=gn.SGD(lr=0.01), validation_data=(Xv, yv), verbose=0)
    assert all(np.isfinite(hist.history["loss"]))
    assert hist.history["val_loss"][-1] < 1e-2 < start
    assert hist.history["loss"][-1] < hist.history["loss"][0] / 50


def test_he_init_with_plain_sgd_diverges_on_the_seed_network_and_says_so():
    X, y = gn.datasets.sinc(1000, seed=0)
    net = gn.MLP([1] + [50] * 9 + [1], "relu", "linear", device="cpu", seed=0, init="he")
    before = net.get_weights()
    with pytest.raises(gn.DivergenceError, match=r"epoch 1, batch \d+ of 50.*learning rate \(0.01\)"):
        net.fit(X, y, epochs=2, batch_size=20, optimizer=gn.SGD(lr=0.01), verbose=0)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sincos_small_network_fits():
    X, y = gn.datasets.sincos(1000, seed=0)
    net = gn.MLP([1, 16, 2], "tanh", "linear", device="cpu", seed=0)
    net.fit(X, y, epochs=150, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0)
    assert net.evaluate(X, y)["loss"] < 2e-3


def test_mnist_reaches_real_accuracy():
    (X, y), (Xt, yt) = gn.datasets.load_mnist()
    net = gn.MLP([784, 256, 10], "relu", "softmax", device="cpu", seed=0)
    hist = net.fit(X, y, epochs=2, batch_size=128, optimizer=gn.Adam(lr=1e-3), verbose=0)
    result = net.evaluate(Xt, yt)
    assert result["accuracy"] >= 0.965, result
    assert hist.history["accuracy"][1] > hist.history["accuracy"][0]


@pytest.mark.parametrize("loss", ["mse", "mae"])
def test_regression_losses_both_train(loss):
    X, y = gn.datasets.sinc(500, seed=2)
    net = gn.MLP([1, 32, 32, 1], "tanh", device="cpu", seed=0)
    before = net.evaluate(X, y, loss=loss)["loss"]
    net.fit(X, y, epochs=30, batch_size=16, optimizer=gn.Adam(lr=3e-3), loss=loss, verbose=0)
    assert net.evaluate(X, y, loss=loss)["loss"] < before / 5


def test_binary_classification_with_sigmoid_output(rng):
    X = rng.standard_normal((400, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(float)
    net = gn.MLP([2, 16, 16, 1], "relu", "sigmoid", device="cpu", seed=0)
    hist = net.fit(X, y, epochs=60, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0)
    assert hist.history["accuracy"][-1] > 0.95
    assert net.evaluate(X, y)["accuracy"] > 0.95


def test_dropout_trains_and_is_off_at_inference(rng):
    X = rng.standard_normal((300, 4))
    y = (X.sum(axis=1) > 0).astype(int)
    net = gn.MLP([4, 32, 2], "relu", "softmax", device="cpu", seed=0, dropout=0.5)
    net.fit(X, y, epochs=40, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0)
    np.testing.assert_array_equal(net.predict(X), net.predict(X))
    assert net.evaluate(X, y)["accuracy"] > 0.93
