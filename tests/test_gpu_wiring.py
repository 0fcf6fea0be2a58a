"""The CUDA backend's Python side, without a GPU.

``CupyOps`` is run on NumPy arrays with its ``RawModule`` replaced by a fake whose kernels (1) check every
launch's arguments against the ``__global__`` signatures parsed from ``kernels.cu`` (pointer vs scalar,
``T`` vs ``int`` vs ``long long``, dtype, contiguity: a wrong scalar type would silently corrupt a real
launch) and (2) execute the kernel's semantics in NumPy. Whole training runs through that path must then
equal the CPU backend. The kernels' own arithmetic is checked by ``test_kernels.py`` (nvcc host harness)
and on a GPU by ``test_gpu.py``.
"""
import re

import numpy as np
import pytest

import gpunet as gn
from gpunet import activations, backend, kernels

from helpers import assert_graph_training_equals_eager

CODE_TO_ACT = {v: k for k, v in kernels.ACT_CODES.items()}
SCALARS = {"int": np.int32, "long long": np.int64, "double": np.float64, "float": np.float32}


def parse_signatures():
    sigs = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", kernels.source()):
        parsed = []
        for p in params.split(","):
            words = p.replace("*", " * ").replace("const", " ").split()
            pointer = "*" in words
            base = " ".join(w for w in words[:-1] if w != "*")  # drop the parameter name
            parsed.append((base, pointer))
        sigs[name] = parsed
    return sigs


SIGNATURES = parse_signatures()


def _act(x, code):
    return activations.ACTIVATIONS[CODE_TO_ACT[code]](x)


def _grad(a, code):
    return activations.DERIVATIVES[CODE_TO_ACT[code]](a)


def adam_update(p, g, m, v, vmax, lr, b1, b2, eps, wd, step_size, bc2_sqrt, ams, dec):
    if dec:
        p *= 1 - lr * wd
    else:
        g = g + wd * p
    m += (1 - b1) * (g - m)
    v[...] = v * b2 + (1 - b2) * g * g
    vv = v
    if ams:
        np.maximum(vmax, v, out=vmax)
        vv = vmax
    p -= step_size * (m / (np.sqrt(vv) / bc2_sqrt + eps))


def softmax_xent(z, y, a, delta, row_loss, rows, k, inv_n):
    Z, Y = z.reshape(rows, k), y.reshape(rows, k)
    A = activations.softmax(Z)
    a.reshape(rows, k)[...] = A
    delta.reshape(rows, k)[...] = (A - Y) * inv_n
    row_loss[...] = -np.sum(Y * gn.losses.log_softmax(Z), axis=1)


def sigmoid_xent(z, y, a, delta, loss, n, inv_n):
    a[...] = activations.sigmoid(z)
    delta[...] = (a - y) * inv_n
    loss[...] = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def sgd_update(p, g, buf, n, lr, mom, damp, wd, nesterov, first):
    g = g + wd * p
    if mom:
        b = g.copy() if first else mom * buf + (1 - damp) * g
        buf[...] = b
        g = g + mom * b if nesterov else b
    p -= lr * g


def adam_dev(p, g, m, v, vmax, n, hp, ams, dec):
    lr, b1, b2, eps, wd, t = hp
    adam_update(p, g, m, v, vmax, lr, b1, b2, eps, wd, lr / (1 - b1 ** t), np.sqrt(1 - b2 ** t), ams, dec)


SEMANTICS = {
    "gn_bias_act": lambda z, b, n, cols, act: z.__setitem__(Ellipsis, _act(z.reshape(-1, cols) + b, act).reshape(-1)),
    "gn_activation": lambda z, a, n, act: a.__setitem__(Ellipsis, _act(z, act)),
    "gn_act_backward": lambda d, a, n, act: d.__setitem__(Ellipsis, d * _grad(a, act)),
    "gn_scale": lambda a, s, n: a.__setitem__(Ellipsis, a * s),
    "gn_adam": lambda p, g, m, v, vmax, n, *h: adam_update(p, g, m, v, vmax, *h),
    "gn_adam_dev": adam_dev,
    "gn_tick": lambda hp: hp.__setitem__(5, hp[5] + 1),
    "gn_sgd": sgd_update,
    "gn_softmax_xent": softmax_xent,
    "gn_sigmoid_xent_k": sigmoid_xent,
}


class FakeKernel:
    def __init__(self, name, T, log):
        self.base = name.split("<")[0]
        self.T, self.log = T, log

    def __call__(self, grid, block, args):
        sig = SIGNATURES[self.base]
        assert len(args) == len(sig), f"{self.base}: {len(args)} arguments for {len(sig)} parameters"
        flat = []
        for i, ((base, pointer), arg) in enumerate(zip(sig, args)):
            ctype = self.T if base == "T" else base
            expected = SCALARS[ctype]
            where = f"{self.base} parameter {i} ({base}{'*' if pointer else ''})"
            if pointer:
                assert isinstance(arg, np.ndarray), f"{where}: got {type(arg).__name__}"
                assert arg.dtype == expected, f"{where}: array of {arg.dtype}, kernel reads {ctype}"
                assert arg.flags.c_contiguous, f"{where}: not contiguous"
                flat.append(arg.reshape(-1))  # a view: the kernel writes through it
            else:
                assert type(arg) is expected, f"{where}: {type(arg).__name__} passed for {ctype}"
                flat.append(arg.item())
        assert grid[0] >= 1 and block[0] == (1 if self.base == "gn_tick" else kernels.BLOCK)
        self.log.append(self.base)
        SEMANTICS[self.base](*flat)


class FakeModule:
    def __init__(self, log):
        self.log = log

    def get_function(self, name):
        if "<" in name:
            assert name in kernels.NAME_EXPRESSIONS, f"{name} is not instantiated by name_expressions"
            T = name[name.index("<") + 1:-1]
        else:
            T = None
        return FakeKernel(name, T, self.log)


class FakeDevice:
    id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class FakeCupyArray(np.ndarray):
    """Like CuPy 14's ndarray where it matters here: defined in a ``cupy`` module, and without the
    Array-API ``__array_namespace__`` hook (so the maths must find its namespace another way)."""

    @property
    def __array_namespace__(self):
        raise AttributeError("CuPy arrays have no __array_namespace__")


FakeCupyArray.__module__ = "cupy._fake"


class FakeCupy:
    """NumPy, returning FakeCupyArray wherever NumPy returns an ndarray."""

    def __getattr__(self, name):
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def wrapped(*args, **kwargs):
            out = attr(*args, **kwargs)
            return out.view(FakeCupyArray) if type(out) is np.ndarray else out
        return wrapped


@pytest.fixture
def fake_cuda(monkeypatch):
    """A 'cuda:0' backend whose arrays are NumPy-backed stand-ins for CuPy's and whose kernels are the
    checked fakes above."""
    log = []
    xp = FakeCupy()
    monkeypatch.setattr(kernels, "_module", lambda device_id: FakeModule(log))
    monkeypatch.setattr(backend, "_import_cupy", lambda: xp)
    monkeypatch.setattr(backend.Backend, "to_host", lambda self, a: np.array(a, copy=True).view(np.ndarray))
    be = backend.Backend("cuda:0", xp, "cupy", device=FakeDevice())
    be.launched = log
    return be


CASES = [("relu", "softmax", "cross_entropy", lambda: gn.Adam(lr=1e-2, amsgrad=True)),
         ("tanh", "sigmoid", "binary_cross_entropy", lambda: gn.AdamW(lr=1e-2)),
         ("sigmoid", "linear", "mse", lambda: gn.SGD(lr=0.05, momentum=0.9, nesterov=True)),
         ("relu", "tanh", "mae", lambda: gn.SGD(lr=0.05))]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("hidden,out,loss,make_opt", CASES)
def test_cuda_backend_trains_like_the_cpu(fake_cuda, hidden, out, loss, make_opt, dtype, rng):
    X = rng.standard_normal((70, 6))
    y = rng.integers(0, 3, 70) if loss == "cross_entropy" else (
        rng.uniform(0, 1, (70, 3)) if loss == "binary_cross_entropy" else rng.standard_normal((70, 3)))
    nets = {}
    for name, dev in (("cpu", "cpu"), ("cuda", fake_cuda)):
        net = gn.MLP([6, 9, 7, 3], hidden, out, device=dev, dtype=dtype, seed=4)
        hist = net.fit(X, y, epochs=3, batch_size=16, optimizer=make_opt(), loss=loss, validation_data=(X, y), verbose=0)
        nets[name] = (net, hist)
    assert nets["cuda"][0].device == "cuda:0" and nets["cuda"][0].backend.ops.name == "cuda"
    assert isinstance(nets["cuda"][0].params, FakeCupyArray)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for key in nets["cpu"][1].history:
        np.testing.assert_allclose(nets["cuda"][1].history[key], nets["cpu"][1].history[key], **tol)
    for a, b in zip(nets["cpu"][0].get_weights(), nets["cuda"][0].get_weights()):
        np.testing.assert_allclose(b, a, **tol)
    np.testing.assert_allclose(nets["cuda"][0].predict(X), nets["cpu"][0].predict(X), **tol)
    launched = set(fake_cuda.launched)
    assert {"gn_bias_act", "gn_act_backward"} <= launched
    assert ("gn_adam" if "Adam" in type(nets["cuda"][0].optimizer).__name__ else "gn_sgd") in launched
    if loss == "cross_entropy":
        assert "gn_softmax_xent" in launched
    if loss == "binary_cross_entropy":
        assert "gn_sigmoid_xent_k" in launched
    if out not in ("softmax", "linear"):
        assert "gn_activation" in launched


def test_dropout_and_penalties_on_the_cuda_backend(fake_cuda, rng):
    X = rng.standard_normal((64, 5))
    y = rng.integers(0, 2, 64)
    net = gn.MLP([5, 16, 2], "relu", "softmax", device=fake_cuda, seed=0, dropout=0.3, l2=1e-3)
    hist = net.fit(X, y, epochs=3, batch_size=16, verbose=0)
    assert np.isfinite(hist.history["loss"]).all() and "gn_scale" in fake_cuda.launched


def test_device_side_adam_step_matches_the_eager_kernel(fake_cuda, rng):
    """The graph-mode Adam (step count in device memory, advanced by gn_tick) equals the eager one."""
    ops = fake_cuda.ops
    p0 = rng.standard_normal(300)
    a, b = p0.copy(), p0.copy()
    state = {k: np.zeros(300) for k in ("m1", "v1", "x1", "m2", "v2", "x2")}
    hp = np.array([1e-2, 0.9, 0.99, 1e-7, 0.05, 0.0])
    for t in range(1, 6):
        g = rng.standard_normal(300)
        ops.adam(a, g, state["m1"], state["v1"], state["x1"], lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-7,
                 weight_decay=0.05, step_size=1e-2 / (1 - 0.9 ** t), bc2_sqrt=np.sqrt(1 - 0.99 ** t), amsgrad=True,
                 decoupled=True)
        ops.adam_device(b, g, state["m2"], state["v2"], state["x2"], hp, amsgrad=True, decoupled=True)
    assert hp[5] == 5
    np.testing.assert_allclose(b, a, rtol=1e-12)


def test_a_wrong_scalar_type_is_caught(fake_cuda):
    """The fake really checks: an int where the kernel wants long long fails."""
    ops = fake_cuda.ops
    z = np.zeros((2, 3))
    with pytest.raises(AssertionError, match="long long"):
        ops._launch("gn_bias_act", z, z.size, z, np.zeros(3), np.int32(z.size), np.int32(3), np.int32(1))


class FakeStream(FakeDevice):
    pass


class FakeGraph:
    """Replays by re-running the captured body (real graphs replay the recorded launches)."""

    def __init__(self, body):
        self.body = body

    def launch(self, stream=None):
        self.body()


@pytest.fixture
def fake_graphs(fake_cuda, monkeypatch):
    monkeypatch.setattr(kernels, "new_stream", FakeStream)
    monkeypatch.setattr(kernels, "capture_graph", lambda stream, body: (FakeGraph(body), None))
    return fake_cuda


@pytest.mark.parametrize("make_opt", [lambda: gn.Adam(lr=1e-2), lambda: gn.AdamW(lr=1e-2, amsgrad=True),
                                      lambda: gn.SGD(lr=0.05, momentum=0.9)])
@pytest.mark.parametrize("schedule", [True, False])
def test_graph_step_bookkeeping_matches_eager_training(fake_graphs, make_opt, schedule, rng):
    """Warm-up, the device-side Adam step count, recapture when the schedule changes lr, the eager
    last batch, and step counting: graph mode must train exactly like eager mode."""
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    assert_graph_training_equals_eager(fake_graphs, [6, 8, 3], make_opt, X, y, steps=3 * 7, rtol=1e-12, atol=1e-14,
                                       schedule=schedule)


def test_graph_is_recaptured_after_a_rollback(fake_graphs, rng, monkeypatch):
    X = rng.standard_normal((64, 4))
    y = rng.integers(0, 2, 64)
    net = gn.MLP([4, 8, 2], "relu", "softmax", device=fake_graphs, dtype="float64", seed=0)
    net.fit(X, y, epochs=1, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
    from gpunet import train
    captured = []
    real_allocate = train._Trainer.allocate

    def spy(self, cuda_graph=False):
        real_allocate(self, cuda_graph)
        captured.append(self)
    monkeypatch.setattr(train._Trainer, "allocate", spy)
    net.fit(X, y, epochs=2, batch_size=16, verbose=0, cuda_graph=True)
    trainer = captured[0]
    assert trainer.graph.captures == 1 and trainer.graph.eager_steps == 3
    trainer.rollback()
    assert trainer.graph.graph is None and trainer.graph.hp is None


class RefusingCupy(FakeCupy):
    """CuPy 14.2 during stream capture: every cuBLAS call raises (cupy_backends/cuda/libs/cublas.pyx,
    setStream: NotImplementedError('calling cuBLAS API during stream capture is currently unsupported'))."""

    capturing = False

    def __getattr__(self, name):
        attr = super().__getattr__(name)
        if name in ("matmul", "dot") and callable(attr):
            def guarded(*args, **kwargs):
                if RefusingCupy.capturing:
                    raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
                return attr(*args, **kwargs)
            return guarded
        return attr


@pytest.fixture
def refusing_graphs(fake_cuda, monkeypatch):
    xp = RefusingCupy()
    fake_cuda.xp = xp
    monkeypatch.setattr(backend, "_import_cupy", lambda: xp)
    monkeypatch.setattr(kernels, "new_stream", FakeStream)

    def capture(stream, body):
        RefusingCupy.capturing = True
        try:
            body()
        finally:
            RefusingCupy.capturing = False
        return FakeGraph(body), None
    monkeypatch.setattr(kernels, "capture_graph", capture)
    return fake_cuda


def test_refused_capture_is_reported_once_and_training_stays_exact(refusing_graphs, rng, caplog):
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    eager = gn.MLP([6, 8, 3], "relu", "softmax", device=refusing_graphs, dtype="float64", seed=3)
    he = eager.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0)
    net = gn.MLP([6, 8, 3], "relu", "softmax", device=refusing_graphs, dtype="float64", seed=3)
    hist = net.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
    report = hist.cuda_graph
    assert report["requested"] and report["replays"] == 0 and "cuBLAS API during stream capture" in report["fallback"]
    assert caplog.text.count("CUDA graph capture failed") == 1
    np.testing.assert_allclose(hist.history["loss"], he.history["loss"], rtol=1e-12)


def test_require_raises_when_the_capture_is_refused(refusing_graphs, rng):
    X = rng.standard_normal((64, 6))
    y = rng.integers(0, 3, 64)
    net = gn.MLP([6, 8, 3], "relu", "softmax", device=refusing_graphs, dtype="float64", seed=3)
    with pytest.raises(RuntimeError, match="cuda_graph='require'.*cuBLAS"):
        net.fit(X, y, epochs=1, batch_size=16, verbose=0, cuda_graph="require")
    assert net.epochs_trained == 0


def test_require_on_the_cpu_raises():
    net = gn.MLP([2, 3, 1], seed=0, device="cpu")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        net.fit(np.zeros((4, 2)), np.zeros(4), verbose=0, cuda_graph="require")


def test_graph_replays_are_counted(fake_graphs, rng):
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    net = gn.MLP([6, 8, 3], "relu", "softmax", device=fake_graphs, dtype="float64", seed=3)
    report = net.fit(X, y, epochs=3, batch_size=16, verbose=0, cuda_graph=True).cuda_graph
    # 6 full batches per epoch: 3 eager warm-up steps, then every full batch replays (one capture)
    assert report == {"requested": True, "replays": 3 * 6 - 3, "captures": 1, "fallback": None}
