"""ONNX export: onnxruntime runs the exported graph with model.predict's numbers."""
import numpy as np
import pytest

import gpunet as gn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def run(path, X):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["Y"], {"X": X})[0]


def test_mnist_round_trip(tmp_path):
    (X, y), (Xt, yt) = gn.datasets.load_mnist()
    net = gn.MLP([784, 64, 32, 10], "relu", "softmax", seed=0)
    net.fit(X[:3000], y[:3000], epochs=2, batch_size=128, verbose=0)
    path = net.to_onnx(tmp_path / "mnist.onnx")
    got = run(path, Xt[:1000])
    np.testing.assert_allclose(got, net.predict(Xt[:1000]), rtol=0, atol=1e-5)
    assert (got.argmax(1) == net.predict(Xt[:1000]).argmax(1)).all()


@pytest.mark.parametrize("layers, hidden, output", [
    ([1] + [50] * 9 + [1], "relu", "linear"),      # the seed's sinc network
    ([1, 16, 2], "tanh", "linear"),                 # seed 003's sin/cos network
    ([1, 16, 2], "sigmoid", "sigmoid"),
    ([3, 8, 4], "linear", "tanh"),
    ([3, 8, 4], "tanh", "relu"),
])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_seed_networks_every_activation(tmp_path, layers, hidden, output, dtype, tol):
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, (200, layers[0]))
    y = np.tanh(X[:, :1]) * np.ones((1, layers[-1])) * (0.5 if output in ("sigmoid", "relu") else 1) + 0.5 * (output == "sigmoid")
    net = gn.MLP(layers, hidden, output, seed=1, dtype=dtype)
    net.fit(X, y, epochs=2, batch_size=20, optimizer=gn.Adam(lr=1e-2), verbose=0)
    got = run(net.to_onnx(tmp_path / "m.onnx"), X.astype(dtype))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got, net.predict(X), rtol=0, atol=tol)


def test_input_standardisation_is_exported(tmp_path):
    """A model that stores input statistics (input_mean / input_scale) exports them as Sub/Div."""
    net = gn.MLP([3, 5, 2], "tanh", "softmax", seed=0, dtype="float64")
    mean, scale = np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 4.0])
    net.input_mean, net.input_scale = mean, scale
    X = np.random.default_rng(0).normal(size=(20, 3)) * 3
    got = run(net.to_onnx(tmp_path / "s.onnx"), X)
    net.input_mean = net.input_scale = None
    np.testing.assert_allclose(got, net.predict((X - mean) / scale), rtol=0, atol=1e-12)


def test_estimator_exports(tmp_path):
    from gpunet.sklearn import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0, device="cpu").fit(X, y)
    got = run(clf.to_onnx(tmp_path / "c.onnx"), X)
    np.testing.assert_allclose(got, clf.predict_proba(X), rtol=0, atol=1e-5)


def test_bad_path_writes_nothing(tmp_path):
    net = gn.MLP([2, 3, 1], seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        net.to_onnx(tmp_path / "missing" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tmp_path):
    import subprocess
    import sys

    net = gn.MLP([3, 6, 2], "relu", "softmax", seed=0)
    net.save(tmp_path / "m.npz")
    cmd = [sys.executable, "-m", "gpunet", "export", "--model", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    X = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_allclose(run(tmp_path / "m.onnx", X), net.predict(X), rtol=0, atol=1e-6)
    bad = subprocess.run(cmd[:4] + [str(tmp_path / "nope.npz")] + cmd[5:], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
