"""The CUDA backend's Python side, without a GPU.

``CupyOps`` is run on NumPy arrays with its ``RawModule`` replaced by a fake whose kernels (1) check every
launch's arguments against the ``__global__`` signatures parsed from ``kernels.cu`` (pointer vs scalar,
``T`` vs ``int`` vs ``long long``, dtype, contiguity: a wrong scalar type would silently corrupt a real
launch) and (2) execute the kernel's semantics in NumPy. Whole training runs through that path must then
equal the CPU backend. The fake CuPy counts kernel launches (fused kernels, GEMMs, CuPy's own kernels and
copies), models CuPy 14.2's refusal of cuBLAS during stream capture, and a fake libcublas executes the
C-API GEMMs of ``gpunet/cublas.py`` on the arrays' raw memory (column-major, as cuBLAS). Failures of each
fast path are injected to check the self-check's fallback. The kernels' own arithmetic is checked by
``tests/unit/test_kernels_cu.py`` (nvcc host harness) and on a GPU by ``tests/gpu/test_gpu.py``.
"""
import logging
import threading
import ctypes
import sys
import types

import numpy as np
import pytest

import gpunet as gn
from gpunet import backend, training
from gpunet.ops import get_ops
from gpunet.ops.cuda import cublas, cupy_ops as kernels, graphs as cuda_graphs, selfcheck
from gpunet.training import cuda_graph

from helpers import assert_graph_training_equals_eager

from fakes.cuda import (LAUNCHES, SEMANTICS, FakeCublasLib, FakeCupyArray, FakeDevice, FakeModule, RefusingCupy,
                        fake_capture, host_pointer, splitmix_uniform)


@pytest.fixture
def fake_cuda(monkeypatch, caplog):
    """A 'cuda:0' backend whose arrays are NumPy-backed stand-ins for CuPy's (refusing cuBLAS during
    capture, as CuPy 14.2), whose kernels are the checked fakes above and whose libcublas is the fake
    above. The self-check runs (and must pass: no warning) before the test sees the backend; its launches
    are not in ``be.launched``."""
    log = []
    xp = RefusingCupy()
    lib = FakeCublasLib()
    module = FakeModule(log)
    monkeypatch.setattr(kernels, "_module", lambda device_id: module)
    monkeypatch.setattr(cuda_graphs, "make_gemm", lambda be: cublas.Gemm(be.xp, lib=lib, pointer=host_pointer))
    monkeypatch.setattr(backend, "import_cupy", lambda: xp)
    monkeypatch.setattr(backend.Backend, "to_host", lambda self, a: np.array(a, copy=True).view(np.ndarray))
    be = backend.Backend("cuda:0", xp, "cupy", device=FakeDevice())
    be.launched, be.cublas, be.module = log, lib, module
    with caplog.at_level(logging.WARNING, logger="gpunet"):
        assert all(v["live"] is not False for v in get_ops(be).status().values()), get_ops(be).status()
    assert "self-check" not in caplog.text
    log.clear()
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
    assert nets["cuda"][0].device == "cuda:0" and nets["cuda"][0].ops.name == "cuda"
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
    ops = get_ops(fake_cuda)
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
    ops = get_ops(fake_cuda)
    z = np.zeros((2, 3))
    with pytest.raises(AssertionError, match="long long"):
        ops._launch("gn_bias_act", z, z.size, z, np.zeros(3), np.int32(z.size), np.int32(3), np.int32(1))


@pytest.fixture
def fake_graphs(monkeypatch, caplog):
    monkeypatch.setattr(cuda_graphs, "capture_graph", fake_capture)
    return None


@pytest.fixture
def graphs(fake_graphs, fake_cuda):
    return fake_cuda


@pytest.mark.parametrize("make_opt", [lambda: gn.Adam(lr=1e-2), lambda: gn.AdamW(lr=1e-2, amsgrad=True),
                                      lambda: gn.SGD(lr=0.05, momentum=0.9)])
@pytest.mark.parametrize("schedule", [True, False])
def test_graph_step_bookkeeping_matches_eager_training(graphs, make_opt, schedule, rng):
    """Warm-up, the device-side Adam step count, recapture when the schedule changes lr, the eager
    last batch, and step counting: graph mode must train exactly like eager mode (and really replay)."""
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    assert_graph_training_equals_eager(graphs, [6, 8, 3], make_opt, X, y, steps=3 * 7, rtol=1e-12, atol=1e-14,
                                       schedule=schedule, require_replay=True)


def test_graph_is_recaptured_after_a_rollback(graphs, rng, monkeypatch):
    X = rng.standard_normal((64, 4))
    y = rng.integers(0, 2, 64)
    net = gn.MLP([4, 8, 2], "relu", "softmax", device=graphs, dtype="float64", seed=0)
    net.fit(X, y, epochs=1, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
    seen = []
    real_finish = training.Trainer.finish

    def spy(self):  # the graph is closed when fit finishes: look at it just before
        seen.append((self.graph.captures, self.graph.eager_steps))
        self.rollback()
        seen.append((self.graph.graph, self.graph.hp))
        real_finish(self)
    monkeypatch.setattr(training.Trainer, "finish", spy)
    net.fit(X, y, epochs=2, batch_size=16, verbose=0, cuda_graph=True)
    assert seen == [(1, 3), (None, None)]


def test_a_finished_graph_fit_leaves_no_reference_cycle(graphs, rng, monkeypatch):
    """fit closes its GraphStep (handle, pool, stream) itself: nothing is left for a later garbage-collector
    pass, which could fall inside another capture (cublasDestroy and cudaFree invalidate a capture)."""
    import gc
    import weakref

    X = rng.standard_normal((64, 4))
    y = rng.integers(0, 2, 64)
    net = gn.MLP([4, 8, 2], "relu", "softmax", device=graphs, dtype="float64", seed=0)
    refs, closed = [], []
    real_init, real_close = cuda_graph.GraphStep.__init__, cuda_graph.GraphStep.close

    def init(self, trainer, warmup=3):
        real_init(self, trainer, warmup)
        refs.append((weakref.ref(self), weakref.ref(trainer)))

    def close(self):
        closed.append(self.gemm is not None)
        real_close(self)
    monkeypatch.setattr(cuda_graph.GraphStep, "__init__", init)
    monkeypatch.setattr(cuda_graph.GraphStep, "close", close)
    gc.collect()
    gc.disable()
    try:
        hist = net.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
        assert hist.cuda_graph["replays"] > 0 and hist.cuda_graph["captures"] == 1
        # every graph fit (the once-per-process check's and this one) closed its step once, handle still there
        assert closed == [True] * len(refs) and len(refs) >= 1
        assert all(step() is None and trainer() is None for step, trainer in refs)  # freed by reference counts
    finally:
        gc.enable()


def test_capture_issues_its_gemms_through_the_cublas_c_api(graphs, rng, caplog):
    """Under CuPy 14.2's refusal the step still captures: its GEMMs go through gpunet.cublas on the graph's
    stream (with the workspace set after the stream), and the graph replays."""
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    net = gn.MLP([6, 8, 7, 3], "relu", "softmax", device=graphs, dtype="float32", seed=3)
    assert cuda_graph.check_graphs(get_ops(graphs), gn.MLP) is None  # the once-per-process check (its own small captures)
    graphs.cublas.gemms.clear()
    report = net.fit(X, y, epochs=2, batch_size=16, verbose=0, cuda_graph=True).cuda_graph
    assert report == {"requested": True, "replays": 2 * 6 - 3, "captures": 1, "fallback": None}
    # one capture of a 3-layer step: 3 forward, 3 weight-gradient and 2 delta GEMMs, all while capturing
    # (first, one eager GEMM on the graph's fresh handle: its lazy set-up happens before the capture)
    assert len(graphs.cublas.gemms) == 1 + 8 and not graphs.cublas.gemms[0][1]
    assert all(capturing for _, capturing in graphs.cublas.gemms[1:])
    assert len({stream for stream, _ in graphs.cublas.gemms}) == 1
    status = kernels.fast_path_status()["cuda:0"]
    assert status["cublas_gemm"] == status["graph_capture"] == {"live": True, "reason": None}
    assert "CUDA graph" not in caplog.text


def test_the_graph_stream_waits_for_the_uploads_and_is_synchronised_before_fit_returns(graphs, rng, monkeypatch):
    X = rng.standard_normal((64, 6))
    y = rng.integers(0, 3, 64)
    assert cuda_graph.check_graphs(get_ops(graphs), gn.MLP) is None
    streams = []
    real_new_stream = cuda_graphs.new_stream
    monkeypatch.setattr(cuda_graphs, "new_stream", lambda xp: streams.append(real_new_stream(xp)) or streams[-1])
    net = gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, dtype="float64", seed=3)
    net.fit(X, y, epochs=1, batch_size=16, verbose=0, cuda_graph=True)
    (stream,) = streams
    assert stream.non_blocking and len(stream.waited) == 1 and stream.waited[0].recorded
    assert stream.synchronized == 1

    class Boom(gn.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 3:
                raise RuntimeError("boom")
    streams.clear()
    before = net.get_weights()
    with pytest.raises(RuntimeError, match="boom"):
        net.fit(X, y, epochs=1, batch_size=16, verbose=0, cuda_graph=True, callbacks=[Boom()])
    # the queued replays before the rollback drops the graph's pool, and the rollback's copies before fit raises
    assert streams[0].synchronized == 2
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_capture_that_calls_cupys_cublas_is_refused_and_reported_once(graphs, rng, caplog, monkeypatch):
    """A regression to CuPy's GEMMs inside the capture is caught by the graph self-check: graphs are off
    for the process with one warning, fit says why, training stays exact."""
    monkeypatch.setattr(kernels.CupyOps, "capture_gemm", property(lambda self: None, lambda self, gemm: None))
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    eager = gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, dtype="float64", seed=3)
    he = eager.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0)
    for _ in range(2):
        net = gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, dtype="float64", seed=3)
        hist = net.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
        report = hist.cuda_graph
        assert report["requested"] and report["replays"] == 0
        assert "graph_capture" in report["fallback"] and "cuBLAS API during stream capture" in report["fallback"]
        np.testing.assert_allclose(hist.history["loss"], he.history["loss"], rtol=1e-12)
    assert caplog.text.count("self-check") == 1 and "graph_capture" in caplog.text
    assert kernels.fast_path_status()["cuda:0"]["graph_capture"]["live"] is False
    with pytest.raises(RuntimeError, match="cuda_graph='require'.*cuBLAS API during stream capture"):
        gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, seed=3).fit(X, y, verbose=0, cuda_graph="require")


def test_without_libcublas_graphs_fall_back_with_the_reason(graphs, rng, caplog, monkeypatch):
    def missing(be):
        raise OSError("cannot load libcublas (libcublas.so.13: cannot open shared object file)")
    monkeypatch.setattr(cuda_graphs, "make_gemm", missing)
    X = rng.standard_normal((64, 6))
    y = rng.integers(0, 3, 64)
    hist = gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, seed=3).fit(X, y, verbose=0, cuda_graph=True)
    assert hist.cuda_graph["replays"] == 0 and "cannot load libcublas" in hist.cuda_graph["fallback"]
    status = kernels.fast_path_status()["cuda:0"]
    assert status["cublas_gemm"]["live"] is False and status["graph_capture"]["live"] is False
    assert caplog.text.count("self-check") == 1


def test_require_on_the_cpu_raises():
    net = gn.MLP([2, 3, 1], seed=0, device="cpu")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        net.fit(np.zeros((4, 2)), np.zeros(4), verbose=0, cuda_graph="require")


def test_graph_replays_are_counted(graphs, rng):
    X = rng.standard_normal((100, 6))
    y = rng.integers(0, 3, 100)
    net = gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, dtype="float64", seed=3)
    report = net.fit(X, y, epochs=3, batch_size=16, verbose=0, cuda_graph=True).cuda_graph
    # 6 full batches per epoch: 3 eager warm-up steps, then every full batch replays (one capture)
    assert report == {"requested": True, "replays": 3 * 6 - 3, "captures": 1, "fallback": None}


# ---------------------------------------------------------------------------------------------------------
# The self-check: each fast path that fails to compile, launch or match is off, with one warning naming it.
def _train_pair(device, rng, **fit):
    """The same network trained on the CPU and on ``device``; returns both histories and nets."""
    X = rng.standard_normal((60, 5))
    y = rng.integers(0, 3, 60)
    out = []
    for dev in ("cpu", device):
        net = gn.MLP([5, 9, 7, 3], "tanh", "softmax", device=dev, dtype="float64", seed=2)
        out.append((net, net.fit(X, y, epochs=2, batch_size=16, verbose=0, **fit)))
    return out


def _assert_same_training(pair):
    (cpu, hc), (gpu, hg) = pair
    np.testing.assert_allclose(hg.history["loss"], hc.history["loss"], rtol=1e-10)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


def _fresh_backend(monkeypatch, module):
    """A new cuda:0 backend (its self-check runs on first use) whose kernels come from ``module``."""
    monkeypatch.setattr(kernels, "_module", lambda device_id: module)
    return backend.Backend("cuda:0", RefusingCupy(), "cupy", device=FakeDevice())


def test_a_kernel_module_that_fails_to_compile_switches_every_kernel_off(fake_cuda, monkeypatch, caplog, rng):
    class Broken:
        def get_function(self, name):
            raise RuntimeError("CompileException: nvrtc: error: identifier \"gn_exp\" is undefined\nmore")
    be = _fresh_backend(monkeypatch, Broken())
    with caplog.at_level(logging.WARNING, logger="gpunet"):
        status = get_ops(be).status()
    kernel_paths = [p for p in selfcheck.FAST_PATHS if p not in selfcheck.LAZY_PATHS]  # (not kernels: checked later)
    for path in kernel_paths:
        assert status[path]["live"] is False and "nvrtc" in status[path]["reason"], path
    assert caplog.text.count("failed the self-check") == 1
    assert all(path in caplog.text for path in kernel_paths)
    assert get_ops(be).adam is None and get_ops(be).sgd is None  # optimizers use their reference maths
    _assert_same_training(_train_pair(be, rng, optimizer=gn.Adam(lr=1e-2)))
    _assert_same_training(_train_pair(be, rng, optimizer=gn.SGD(lr=0.05, momentum=0.9)))
    assert kernels.fast_path_status()["cuda:0"]["bias_activation"]["live"] is False
    hist = gn.MLP([5, 4, 3], "relu", "softmax", device=be, seed=0).fit(rng.standard_normal((8, 5)),
                                                                       rng.integers(0, 3, 8), verbose=0)
    assert hist.fast_paths["softmax_xent"]["live"] is False


@pytest.mark.parametrize("kernel,path,output", [
    ("gn_act_backward", "activation_backward", 0), ("gn_bias_act", "bias_activation", 0),
    ("gn_softmax_xent", "softmax_xent", 2), ("gn_adam", "adam", 0), ("gn_sigmoid_xent_k", "sigmoid_xent", 2),
    ("gn_sgd", "sgd", 0), ("gn_dropout", "dropout", 0), ("gn_activation", "activation", 1), ("gn_scale", "scale", 0),
    ("gn_adam_dev", "adam_device", 0)])
def test_a_kernel_with_wrong_numbers_is_switched_off_alone(fake_cuda, monkeypatch, caplog, rng, kernel, path, output):
    """One kernel computes a slightly wrong result: only its path goes off, the warning names it, training
    never launches it and still equals the CPU."""
    right = SEMANTICS[kernel]

    def wrong(*args):
        right(*args)
        args[output][1] += 1e-3  # one element of an output off
    monkeypatch.setitem(SEMANTICS, kernel, wrong)
    log = []
    be = _fresh_backend(monkeypatch, FakeModule(log))
    with caplog.at_level(logging.WARNING, logger="gpunet"):
        status = get_ops(be).status()
    assert [p for p, st in status.items() if st["live"] is False] == [path]
    assert caplog.text.count("failed the self-check") == 1 and f"{path} (" in caplog.text
    log.clear()
    if path in ("sigmoid_xent", "activation"):
        X = rng.standard_normal((40, 4))
        y = rng.uniform(0, 1, (40, 3))
        nets = [gn.MLP([4, 6, 3], "relu", "sigmoid", device=d, dtype="float64", seed=1) for d in ("cpu", be)]
        hists = [n.fit(X, y, epochs=2, batch_size=8, verbose=0,
                       loss="binary_cross_entropy" if path == "sigmoid_xent" else "mse") for n in nets]
        np.testing.assert_allclose(hists[1].history["loss"], hists[0].history["loss"], rtol=1e-10)
    elif path == "sgd":
        _assert_same_training(_train_pair(be, rng, optimizer=gn.SGD(lr=0.05, momentum=0.9)))
    elif path in ("dropout", "scale"):
        X = rng.standard_normal((40, 4))
        y = rng.integers(0, 3, 40)
        nets = [gn.MLP([4, 6, 3], "relu", "softmax", device=be, dtype="float64", seed=1, dropout=0.3) for _ in "ab"]
        hists = [n.fit(X, y, epochs=2, batch_size=8, verbose=0) for n in nets]
        assert hists[0].history["loss"] == hists[1].history["loss"]  # the reference masks are reproducible too
    elif path != "adam_device":
        _assert_same_training(_train_pair(be, rng, optimizer=gn.Adam(lr=1e-2)))
    assert kernel not in log


def test_a_kernel_that_fails_to_launch_is_switched_off(fake_cuda, monkeypatch, caplog, rng):
    def launch_failure(*args):
        raise RuntimeError("CUDADriverError: CUDA_ERROR_INVALID_VALUE: invalid argument")
    monkeypatch.setitem(SEMANTICS, "gn_adam", launch_failure)
    be = _fresh_backend(monkeypatch, FakeModule([]))
    with caplog.at_level(logging.WARNING, logger="gpunet"):
        assert get_ops(be).status()["adam"] == {"live": False,
                                           "reason": "float32: RuntimeError: CUDADriverError: CUDA_ERROR_INVALID_VALUE: "
                                                     "invalid argument"}
    assert get_ops(be).adam is None
    _assert_same_training(_train_pair(be, rng, optimizer=gn.Adam(lr=1e-2)))


def test_graphs_need_the_device_side_adam(fake_graphs, fake_cuda, monkeypatch, caplog, rng):
    monkeypatch.setitem(SEMANTICS, "gn_tick", lambda hp: None)  # the step count never advances
    be = _fresh_backend(monkeypatch, FakeModule([]))
    hist = gn.MLP([5, 4, 3], "relu", "softmax", device=be, seed=0).fit(
        rng.standard_normal((40, 5)), rng.integers(0, 3, 40), batch_size=8, verbose=0, cuda_graph=True)
    assert hist.cuda_graph["replays"] == 0 and "adam_device" in hist.cuda_graph["fallback"]
    assert hist.fast_paths["adam_device"]["live"] is False
    assert hist.fast_paths["graph_capture"] == {"live": False, "reason": "not tried: the captured step needs adam_device"}
    assert caplog.text.count("failed the self-check") == 1


# ---------------------------------------------------------------------------------------------------------
# Launches per training step, counted
def _launches_per_step(device, layers, loss, make_opt, monkeypatch, cuda_graph=False, **model):
    """Launches of one training step: the count for 8 batches minus the count for 4, over 4 (the per-epoch
    work, the permutation upload, the loss read and the snapshot, cancels out)."""
    rng = np.random.default_rng(0)
    counts = []
    names = {}
    for n_batches in (4, 8):
        X = rng.standard_normal((16 * n_batches, layers[0]))
        y = rng.integers(0, layers[-1], 16 * n_batches) if loss == "cross_entropy" else \
            rng.standard_normal((16 * n_batches, layers[-1]))
        net = gn.MLP(layers, "relu", "softmax" if loss == "cross_entropy" else "linear", device=device, seed=0,
                     **model)
        net.fit(X[:16], y[:16], epochs=1, batch_size=16, verbose=0, optimizer=make_opt(), cuda_graph=cuda_graph)
        LAUNCHES.n, LAUNCHES.names = 0, []
        net.fit(X, y, epochs=1, batch_size=16, verbose=0, cuda_graph=cuda_graph)
        counts.append(LAUNCHES.n)
        names[n_batches] = LAUNCHES.names
    per_step, rest = divmod(counts[1] - counts[0], 4)
    assert rest == 0, counts
    return per_step, names


def test_launches_per_training_step_are_pinned(fake_cuda, monkeypatch):
    """kernels.LAUNCHES_PER_STEP (stated in the README): a 3-layer relu / softmax cross-entropy / Adam step.
    The softmax is computed once (by the loss kernel), kernel handles are fetched once per kernel and dtype."""
    per_step, names = _launches_per_step(fake_cuda, [6, 9, 7, 3], "cross_entropy", lambda: gn.Adam(lr=1e-2),
                                         monkeypatch)
    assert per_step == kernels.LAUNCHES_PER_STEP == 23, names[8]
    step = names[8]
    assert step.count("exp") == 0  # no second softmax (the reference's exp) in the training step
    assert step.count("argmax") == 0  # the accuracy count comes from the loss kernel's column sum
    assert step.count("gn_softmax_xent") == 8 and step.count("gn_adam") == 8 and step.count("gn_bias_act") == 16
    assert step.count("matmul") == 8 * 8  # 3 forward, 3 weight-gradient, 2 delta GEMMs
    fetched = fake_cuda.module.fetched
    gn.MLP([6, 9, 7, 3], "relu", "softmax", device=fake_cuda, seed=0).fit(np.zeros((64, 6)), np.zeros(64, int),
                                                                           batch_size=16, verbose=0)
    assert fake_cuda.module.fetched == fetched  # cached handles: no get_function per launch


def test_a_replayed_step_is_one_graph_launch(graphs, monkeypatch):
    per_step, names = _launches_per_step(graphs, [6, 9, 7, 3], "cross_entropy", lambda: gn.Adam(lr=1e-2), monkeypatch,
                                         cuda_graph=True)
    # the graph, the batch indices copied into its static buffer, the loss and the correct count stored
    assert per_step == 4 and names[8].count("graph") == 8 - 3, names[8]  # after 3 eager warm-up steps


def test_regression_steps_launch_counts(fake_cuda, monkeypatch):
    per_step, names = _launches_per_step(fake_cuda, [6, 9, 7, 3], "mse", lambda: gn.SGD(lr=0.01), monkeypatch)
    # linear output, MSE from the reference expressions (no fused kernel): 2 gathers, 8 GEMMs, 2 bias+activation,
    # the bias add, the output activation (a copy for linear), 8 CuPy kernels for the MSE delta and value,
    # 3 bias-gradient sums, 2 activation-backward, SGD, and the loss stored
    assert per_step == 29, names[8]


# ---------------------------------------------------------------------------------------------------------
# Dropout: per model, reproducible, saved and rolled back
def test_gpu_dropout_masks_are_per_model_and_reproducible(fake_cuda, rng):
    X = rng.standard_normal((64, 5))
    y = rng.integers(0, 3, 64)
    runs = []
    for seed in (0, 0, 1):
        net = gn.MLP([5, 16, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=seed, dropout=0.4)
        runs.append(net.fit(X, y, epochs=2, batch_size=16, verbose=0).history["loss"])
    assert runs[0] == runs[1] and runs[0] != runs[2]
    assert "gn_dropout" in fake_cuda.launched
    # interleaving two models does not change either one's masks (no shared device generator)
    a = gn.MLP([5, 16, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=0, dropout=0.4)
    b = gn.MLP([5, 16, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=5, dropout=0.4)
    la = []
    for _ in range(2):
        la += a.fit(X, y, epochs=1, batch_size=16, verbose=0).history["loss"]
        b.fit(X, y, epochs=1, batch_size=16, verbose=0)
    assert la == runs[0]


def test_gpu_dropout_resumes_exactly_from_a_saved_model(fake_cuda, rng, tmp_path):
    X = rng.standard_normal((64, 5))
    y = rng.integers(0, 3, 64)
    straight = gn.MLP([5, 16, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=0, dropout=0.3)
    straight.fit(X, y, epochs=3, batch_size=16, verbose=0)
    first = gn.MLP([5, 16, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=0, dropout=0.3)
    first.fit(X, y, epochs=1, batch_size=16, verbose=0)
    first.save(tmp_path / "m.npz")
    resumed = gn.load(tmp_path / "m.npz", device=fake_cuda)
    resumed.fit(X, y, epochs=2, batch_size=16, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_dropout_reference_generator_matches_the_kernel_maths():
    out = np.zeros((3, 7))
    selfcheck.dropout_reference(np, out, 0xDEADBEEF12345, 0.25)
    expected = np.where(splitmix_uniform(0xDEADBEEF12345, 21) >= 0.25, 1 / 0.75, 0.0).reshape(3, 7)
    np.testing.assert_array_equal(out, expected)
    big = np.zeros(20000)
    selfcheck.dropout_reference(np, big, 42, 0.25)
    assert abs(np.mean(big == 0) - 0.25) < 0.015


# ---------------------------------------------------------------------------------------------------------
# Library allocation failures are out-of-memory errors
def test_library_allocation_failures_are_recognised_as_out_of_memory(fake_cuda):
    def error(name, status):
        cls = type(name, (RuntimeError,), {})
        exc = cls(f"status {status}")
        exc.status = status
        return exc
    assert fake_cuda.is_out_of_memory(error("CUBLASError", 3))  # CUBLAS_STATUS_ALLOC_FAILED
    assert fake_cuda.is_out_of_memory(cublas.CublasError("cublasSgemm_v2", 3))
    assert fake_cuda.is_out_of_memory(error("CUDARuntimeError", 2))  # cudaErrorMemoryAllocation
    assert fake_cuda.is_out_of_memory(error("OutOfMemoryError", None))
    assert not fake_cuda.is_out_of_memory(error("CUBLASError", 13))  # EXECUTION_FAILED is not memory
    assert not fake_cuda.is_out_of_memory(error("CUDARuntimeError", 700))


def test_a_cublas_allocation_failure_during_training_is_reported_as_out_of_memory(fake_cuda, monkeypatch, rng):
    net = gn.MLP([5, 8, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=0)
    X, y = rng.standard_normal((64, 5)), rng.integers(0, 3, 64)
    net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    before = net.get_weights()
    calls = []

    def failing_matmul(self, a, b, out):
        calls.append(1)
        if len(calls) == 3:
            raise cublas.CublasError("cublasSgemm_v2", 3)
        return np.matmul(a, b, out=out)
    monkeypatch.setattr(kernels.CupyOps, "matmul", failing_matmul)
    with pytest.raises(gn.backend.OutOfMemoryError, match="out of memory on cuda:0 while training epoch 2"):
        net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_cublas_gemm_argument_mapping_on_raw_memory(rng):
    """gpunet.cublas.Gemm against the column-major fake libcublas on host memory, every transpose, with row
    slices of larger arrays (as the workspaces pass them)."""
    lib = FakeCublasLib()
    gemm = cublas.Gemm(np, lib=lib, pointer=host_pointer)
    gemm.bind(0)
    for dtype in (np.float32, np.float64):
        big_a = rng.standard_normal((12, 5)).astype(dtype)
        a = big_a[:9]
        b = rng.standard_normal((5, 4)).astype(dtype)
        c = rng.standard_normal((9, 4)).astype(dtype)
        out = np.full((9, 4), np.nan, dtype=dtype)
        np.testing.assert_allclose(gemm(a, b, out), a @ b, rtol=1e-5)
        out = np.full((5, 4), np.nan, dtype=dtype)
        np.testing.assert_allclose(gemm(a, c, out, ta=True), a.T @ c, rtol=1e-5)
        out = np.full((9, 5), np.nan, dtype=dtype)
        np.testing.assert_allclose(gemm(c, b, out, tb=True), c @ b.T, rtol=1e-5)
    with pytest.raises(ValueError, match="shapes do not match"):
        gemm(a, c, np.zeros((9, 4), dtype=dtype))
    assert gemm.calls == 6


# ---------------------------------------------------------------------------------------------------------
# 16-byte aligned weight views on CUDA devices
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_weight_views_are_16_byte_aligned_and_the_padding_stays_zero(fake_cuda, dtype, rng, tmp_path):
    layers = [7, 5, 3, 3]  # odd sizes: a dense layout would misalign every block after the first
    net = gn.MLP(layers, "relu", "softmax", device=fake_cuda, dtype=dtype, seed=1, l2=1e-3)
    base = net.params.ctypes.data
    for view in net.W + net.b + net.dW + net.db:
        assert (view.ctypes.data - base) % 16 == 0 and view.flags.c_contiguous
    assert net.params.shape[0] > net.n_params == sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))
    X, y = rng.standard_normal((50, 7)), rng.integers(0, 3, 50)
    cpu = gn.MLP(layers, "relu", "softmax", device="cpu", dtype=dtype, seed=1, l2=1e-3)
    assert cpu.params.shape[0] == cpu.n_params  # the CPU layout is dense
    for m in (net, cpu):
        m.fit(X, y, epochs=2, batch_size=8, optimizer=gn.AdamW(lr=1e-2), verbose=0)
    mask = np.ones(net.params.shape[0], bool)
    for o, shape in zip(net.offsets, net.shapes):
        mask[o:o + int(np.prod(shape))] = False
    assert mask.any() and not net.params[mask].any() and not net.optimizer.state["exp_avg"][mask].any()
    tol = dict(rtol=1e-9) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for a, b in zip(cpu.get_weights(), net.get_weights()):
        np.testing.assert_allclose(b, a, **tol)
    net.save(tmp_path / "m.npz")  # the file holds the dense layout: it loads on any device
    for device in ("cpu", fake_cuda):
        back = gn.load(tmp_path / "m.npz", device=device)
        for a, b in zip(net.get_weights(), back.get_weights()):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(back.dense(np.asarray(back.optimizer.state["exp_avg_sq"])),
                                      net.dense(np.asarray(net.optimizer.state["exp_avg_sq"])))
    value, grads = net.loss_and_gradients(X, y)
    assert [g.shape for g in grads] == net.shapes


def test_stacks_use_the_aligned_layout(fake_cuda, rng):
    X, y = rng.standard_normal((40, 7)), rng.integers(0, 3, 40)
    stack = gn.MLPStack([7, 5, 3], seeds=[0, 1], output_activation="softmax", device=fake_cuda, dtype="float64")
    stack.fit(X, y, epochs=2, batch_size=8, verbose=0)
    for seed, model in zip([0, 1], stack.models()):
        single = gn.MLP([7, 5, 3], "relu", "softmax", device=fake_cuda, dtype="float64", seed=seed)
        single.fit(X, y, epochs=2, batch_size=8, verbose=0)
        for a, b in zip(single.get_weights(), model.get_weights()):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)


def test_gpunet_info_lists_each_fast_path_with_its_state(fake_cuda, monkeypatch):
    from gpunet.cli import info as cli_info

    monkeypatch.setattr(backend, "tf32_effective", lambda: False)
    get_ops(fake_cuda).switch_off("scale", "float64: a * s: 1.0 where the reference gives 2.0")
    text = cli_info.fast_path_lines(fake_cuda)
    assert "float32 GEMMs: full fp32" in text
    assert "bias_activation      on" in text
    assert "scale                OFF (float64: a * s: 1.0 where the reference gives 2.0)" in text
    assert "graph_capture        checked at the first fit(cuda_graph=True)" in text
    assert "fused_step" in cli_info.fast_path_lines(backend.CPU)


def test_another_threads_gemms_are_not_captured_into_this_threads_graph(fake_cuda):
    import threading

    ops = get_ops(fake_cuda)
    seen = []
    ops.capture_gemm = "this thread's graph GEMM"
    try:
        worker = threading.Thread(target=lambda: seen.append(ops.capture_gemm))
        worker.start()
        worker.join()
    finally:
        ops.capture_gemm = None
    assert seen == [None]


def test_each_graph_has_its_own_cublas_handle(graphs, rng):
    X, y = rng.standard_normal((64, 6)), rng.integers(0, 3, 64)
    assert cuda_graph.check_graphs(get_ops(graphs), gn.MLP) is None
    handles = graphs.cublas.handles
    for seed in (0, 1):
        gn.MLP([6, 8, 3], "relu", "softmax", device=graphs, seed=seed).fit(X, y, batch_size=16, verbose=0,
                                                                            cuda_graph=True)
    assert graphs.cublas.handles == handles + 2


def test_a_second_thread_waits_for_the_graph_check_verdict(graphs, rng, monkeypatch):
    """Another thread's first fit(cuda_graph=...) during the check waits for it instead of seeing the
    half-done check (paths not yet passed, or passed provisionally)."""
    import threading
    import time

    X, y = rng.standard_normal((40, 5)), rng.integers(0, 3, 40)
    seen, threads = [], []
    real = kernels.CupyOps._check_cublas_gemm

    def other():
        try:
            hist = gn.MLP([5, 4, 3], "relu", "softmax", device=graphs, seed=2).fit(
                X, y, batch_size=8, verbose=0, cuda_graph="require")
            seen.append(hist.cuda_graph)
        except Exception as exc:  # the failure this test is about
            seen.append(exc)

    def slow_check(self):
        threads.append(threading.Thread(target=other))
        threads[0].start()
        time.sleep(0.2)  # the other thread reaches the check meanwhile
        return real(self)
    monkeypatch.setattr(kernels.CupyOps, "_check_cublas_gemm", slow_check)
    hist = gn.MLP([5, 4, 3], "relu", "softmax", device=graphs, seed=1).fit(X, y, batch_size=8, verbose=0,
                                                                           cuda_graph="require")
    threads[0].join(10)
    assert hist.cuda_graph["replays"] > 0
    assert len(seen) == 1 and isinstance(seen[0], dict) and seen[0]["replays"] > 0, seen


# ----------------------------------------------------------------------------- how libcublas is found
class _Recorder:
    """ctypes.CDLL stand-in: records the names tried, loads only ``ok`` (a function table for any name)."""

    def __init__(self, ok):
        self.ok, self.tried = ok, []

    def __call__(self, name):
        self.tried.append(name)
        if name != self.ok:
            raise OSError(f"{name}: cannot open shared object file")
        return types.SimpleNamespace(**{fn: types.SimpleNamespace() for fn in (
            "cublasCreate_v2", "cublasDestroy_v2", "cublasSetStream_v2", "cublasSetWorkspace_v2",
            "cublasSetMathMode", "cublasSgemm_v2", "cublasDgemm_v2", "cublasSgemmStridedBatched",
            "cublasDgemmStridedBatched")})


def _fake_pathfinder(monkeypatch, abs_path=None, error=None):
    """A ``cuda.pathfinder`` module whose load_nvidia_dynamic_lib returns ``abs_path`` (or raises ``error``)."""
    calls = []

    def load_nvidia_dynamic_lib(name):
        calls.append(name)
        if error is not None:
            raise error
        return types.SimpleNamespace(abs_path=abs_path)

    cuda_pkg = types.ModuleType("cuda")
    pf = types.ModuleType("cuda.pathfinder")
    pf.load_nvidia_dynamic_lib = load_nvidia_dynamic_lib
    cuda_pkg.pathfinder = pf
    monkeypatch.setitem(sys.modules, "cuda", cuda_pkg)
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pf)
    return calls


def _cupy_build(monkeypatch, major):
    from importlib import metadata

    def version(name):
        if major is not None and name == f"cupy-cuda{major}x":
            return "14.2.0"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", version)


def test_cublas_prefers_the_library_already_mapped(monkeypatch):
    calls = _fake_pathfinder(monkeypatch, abs_path="/site/nvidia/cu13/lib/libcublas.so.13")
    monkeypatch.setattr(cublas, "_loaded_path", lambda: "/mapped/libcublas.so.13")
    rec = _Recorder(ok="/mapped/libcublas.so.13")
    monkeypatch.setattr(cublas.ctypes, "CDLL", rec)
    lib = cublas.load_library()
    assert rec.tried == ["/mapped/libcublas.so.13"] and lib.cublasSgemm_v2.restype is ctypes.c_int
    assert calls == ["cublas"]  # looked up (it is CuPy's own loader and cheap), but the mapped copy wins


def test_cublas_then_loads_what_cupys_pathfinder_finds(monkeypatch):
    calls = _fake_pathfinder(monkeypatch, abs_path="/site/nvidia/cu13/lib/libcublas.so.13")
    monkeypatch.setattr(cublas, "_loaded_path", lambda: None)
    _cupy_build(monkeypatch, 13)
    rec = _Recorder(ok="/site/nvidia/cu13/lib/libcublas.so.13")
    monkeypatch.setattr(cublas.ctypes, "CDLL", rec)
    cublas.load_library()
    assert calls == ["cublas"] and rec.tried == ["/site/nvidia/cu13/lib/libcublas.so.13"]


@pytest.mark.parametrize("major", [13, 12])
def test_cublas_falls_back_to_the_soname_of_the_cupy_build_only(monkeypatch, major):
    _fake_pathfinder(monkeypatch, error=RuntimeError("DynamicLibNotFoundError: cublas"))
    monkeypatch.setattr(cublas, "_loaded_path", lambda: None)
    _cupy_build(monkeypatch, major)
    rec = _Recorder(ok=None)
    monkeypatch.setattr(cublas.ctypes, "CDLL", rec)
    with pytest.raises(OSError, match="cannot load libcublas"):
        cublas.load_library()
    assert rec.tried == [f"libcublas.so.{major}"]  # no other major, no unversioned libcublas.so
    rec.ok = f"libcublas.so.{major}"
    rec.tried.clear()
    cublas.load_library()
    assert rec.tried == [f"libcublas.so.{major}"]


def test_cublas_without_pathfinder_is_not_an_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", None)  # import raises ImportError
    monkeypatch.setattr(cublas, "_loaded_path", lambda: None)
    _cupy_build(monkeypatch, 13)
    rec = _Recorder(ok="libcublas.so.13")
    monkeypatch.setattr(cublas.ctypes, "CDLL", rec)
    cublas.load_library()
    assert rec.tried == ["libcublas.so.13"]
    assert "cuda.pathfinder" not in cublas.__dict__  # imported lazily, inside the loader only


def test_sample_weight_and_the_poisson_loss_on_the_cuda_backend(fake_cuda, rng):
    """The weighted loss and the exp output take the reference expressions on CUDA too (no kernel knows them):
    the same training as the CPU."""
    X = rng.standard_normal((48, 4))
    y = rng.poisson(2.0, size=(48, 2)).astype(float)
    w = rng.uniform(0.2, 2.0, 48)
    out = {}
    for name, dev in (("cpu", "cpu"), ("cuda", fake_cuda)):
        net = gn.MLP([4, 8, 2], "tanh", "exp", device=dev, dtype="float64", seed=1)
        hist = net.fit(X, y, loss="poisson", epochs=3, batch_size=16, sample_weight=w, verbose=0,
                       optimizer=gn.Adam(lr=1e-2))
        out[name] = (hist.history["loss"], net.get_weights())
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-10)
    for a, b in zip(out["cpu"][1], out["cuda"][1]):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


class _ScipyBackedCsr:
    """cupyx.scipy.sparse.csr_matrix stand-in over SciPy (``shift`` makes its row indexing wrong)."""

    def __init__(self, csr, shift=0):
        self.csr, self.shift = csr, shift

    def __getitem__(self, idx):
        rows = (np.asarray(idx) + self.shift) % self.csr.shape[0]
        return self.csr[rows]


@pytest.mark.parametrize("cupyx", ["exact", "wrong", "missing"])
def test_sparse_rows_on_the_cuda_backend_are_checked_at_first_use(fake_cuda, rng, monkeypatch, cupyx):
    """Sparse X on CUDA: gathered by cupyx's row indexing when that checks out against SciPy on the first batch;
    a wrong or missing cupyx sparse module switches the device gather off with a warning, and training is the
    CPU's either way."""
    import sys
    import types
    import warnings

    sparse = pytest.importorskip("scipy.sparse")
    if cupyx == "missing":
        monkeypatch.setitem(sys.modules, "cupyx.scipy.sparse", None)
    else:
        fake = types.ModuleType("cupyx.scipy.sparse")
        fake.csr_matrix = lambda csr: _ScipyBackedCsr(csr, shift=0 if cupyx == "exact" else 1)
        monkeypatch.setitem(sys.modules, "cupyx.scipy.sparse", fake)
    X = rng.standard_normal((40, 5))
    X[X < 0.4] = 0.0
    y = rng.integers(0, 3, 40)
    out = {}
    for name, dev in (("cpu", "cpu"), ("cuda", fake_cuda)):
        net = gn.MLP([5, 8, 3], "relu", "softmax", device=dev, dtype="float64", seed=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hist = net.fit(sparse.csr_matrix(X), y, epochs=2, batch_size=8, verbose=0)
            pred = net.predict(sparse.csr_matrix(X))
        out[name] = (hist.history["loss"], pred, [str(c.message) for c in caught])
    np.testing.assert_allclose(out["cuda"][0], out["cpu"][0], rtol=1e-10)
    np.testing.assert_allclose(out["cuda"][1], out["cpu"][1], rtol=1e-9, atol=1e-12)
    messages = " ".join(out["cuda"][2])
    if cupyx == "exact":
        assert "sparse" not in messages
    elif cupyx == "wrong":
        assert "gathering sparse rows on cuda:0 is off" in messages and "differs from SciPy" in messages
    else:
        assert "sparse X stays on the host" in messages


# ---------------------------------------------------------------- MLPStack's GEMMs: strided-batched, in place
def _stack_pair(device, rng, **kw):
    X, y = rng.standard_normal((40, 7)), rng.integers(0, 3, 40)
    stack = gn.MLPStack([7, 6, 5, 3], "tanh", "softmax", seeds=[0, 1, 2], device=device, dtype="float64", **kw)
    hists = stack.fit(X, y, epochs=2, batch_size=8, optimizer=gn.Adam(lr=1e-2))
    return stack, hists, stack.predict(X)


def test_the_stacks_gemms_are_strided_batched_cublas_calls_on_its_views(fake_cuda, rng):
    """On CUDA every GEMM of MLPStack (forward, weight gradient, delta, predict) is one cublas{S,D}gemmStridedBatched
    call on the (K, n_in, n_out) column-block views of the flat buffer, transposes as flags and the gradients written
    in place: CuPy's matmul (which copies every strided operand) never runs. The numbers equal the CPU stack's."""
    ops = get_ops(fake_cuda)
    assert ops.status()["batched_gemm"]["live"] is None  # checked at the first stack step, not at start-up
    from gpunet.cli import info as cli_info
    assert "batched_gemm         checked at the first MLPStack step" in cli_info.fast_path_lines(fake_cuda)
    lib = fake_cuda.cublas
    _stack_pair(fake_cuda, np.random.default_rng(3))  # the first stack step runs the check
    assert ops.status()["batched_gemm"] == {"live": True, "reason": None}
    LAUNCHES.n, LAUNCHES.names, lib.batched = 0, [], []
    stack, hists, pred = _stack_pair(fake_cuda, np.random.default_rng(3))
    assert "matmul" not in LAUNCHES.names and "swapaxes" not in LAUNCHES.names
    steps = 2 * 5
    calls = lib.batched
    assert {c[1] for c in calls} == {3}  # every call: the 3 models at once
    per_step = 3 + 3 + 2  # forward, weight gradients (op(a) transposed), deltas (op(b) transposed)
    assert len(calls) == steps * per_step + 3  # + predict's forward
    assert sum(c[3] == cublas.OP_T for c in calls) == steps * 3  # cuBLAS's transa is the op of b: the weight grads
    assert sum(c[2] == cublas.OP_T for c in calls) == steps * 2  # the deltas (op(W) transposed)
    assert {c[0] for c in calls} == {fake_cuda.xp.current_stream.ptr}  # on CuPy's current stream
    ref, ref_hists, ref_pred = _stack_pair("cpu", np.random.default_rng(3))
    for a, b in zip(stack.models(), ref.models()):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)
    for a, b in zip(hists, ref_hists):
        np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-12, atol=1e-14)


def test_the_batched_gemm_follows_the_current_stream_with_a_workspace_each_and_a_handle_per_thread(
        fake_cuda, monkeypatch):
    """Another current stream: the next calls are issued on it, with a workspace of its own (two streams never share
    one). Another thread: a cuBLAS handle of its own (cuBLAS advises against sharing one between threads). TF32 on in
    CuPy: the stacks' GEMMs stay full float32, as CuPy's batched matmul always is."""
    from fakes.cuda import FakeStream

    monkeypatch.setattr(backend, "tf32_effective", lambda: True)
    ops, lib = get_ops(fake_cuda), fake_cuda.cublas
    _stack_pair(fake_cuda, np.random.default_rng(3))
    gemm = ops.batched_gemm()
    assert gemm.tf32 is False
    first = fake_cuda.xp.current_stream
    other = FakeStream(non_blocking=True)
    monkeypatch.setattr(fake_cuda.xp, "current_stream", other)
    lib.batched = []
    stack, _, pred = _stack_pair(fake_cuda, np.random.default_rng(3))
    assert {c[0] for c in lib.batched} == {other.ptr} and lib.workspace is not None
    assert set(gemm._workspaces) == {first.ptr, other.ptr}
    assert gemm._workspaces[first.ptr] is not gemm._workspaces[other.ptr]
    handles = lib.handles
    seen = []
    worker = threading.Thread(target=lambda: seen.append((stack.predict(np.random.default_rng(3).standard_normal(
        (40, 7))), ops.batched_gemm())))
    worker.start()
    worker.join()
    assert lib.handles == handles + 1 and seen[0][1] is not gemm and seen[0][1].calls == 3
    np.testing.assert_allclose(seen[0][0], pred, rtol=1e-12)


@pytest.mark.parametrize("case, why", [
    ("mixed dtypes", "dtypes float64, float32"),
    ("output aliases an input", "shares memory with an input"),
    ("overlapping output", "output's matrices overlap"),
    ("column-major matrices", "not each C-contiguous"),
])
def test_operands_the_batched_gemm_does_not_take_go_to_the_reference_and_say_so(fake_cuda, caplog, case, why):
    ops = get_ops(fake_cuda)
    rng = np.random.default_rng(1)
    xp = fake_cuda.xp
    a, b = xp.asarray(rng.standard_normal((3, 4, 4))), xp.asarray(rng.standard_normal((3, 4, 4)))
    out = None
    if case == "mixed dtypes":
        b = b.astype(np.float32)
    elif case == "output aliases an input":
        out = a
    elif case == "overlapping output":
        out = np.lib.stride_tricks.as_strided(xp.zeros(16), (3, 4, 4), (0, 32, 8)).view(type(a))
    else:
        a = xp.asarray(np.asfortranarray(rng.standard_normal((3, 4, 4))))
        a = np.swapaxes(np.swapaxes(a, 1, 2).copy(), 1, 2)
    want = np.matmul(np.asarray(a).copy(), np.asarray(b))
    ops.batched_gemm()  # checked
    calls = len(fake_cuda.cublas.batched)
    with caplog.at_level(logging.INFO, logger="gpunet"):
        got = ops.batched_matmul(a, b, out)
    if case != "overlapping output":
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    assert len(fake_cuda.cublas.batched) == calls and why in caplog.text


def test_a_batched_gemm_that_fails_its_check_is_switched_off_loudly_and_the_stack_still_trains(
        fake_cuda, monkeypatch, caplog, rng):
    """A strided-batched GEMM giving wrong numbers (here: it ignores the inputs' batch strides) fails its check at the first
    stack step: switched off with one warning naming it, the stack then trains through CuPy's matmul, as on the CPU."""
    real = FakeCublasLib._strided_batched

    def ignores_strides(self, ctype, handle, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, count):
        return real(self, ctype, handle, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, sC, count)

    monkeypatch.setattr(FakeCublasLib, "_strided_batched", ignores_strides)
    with caplog.at_level(logging.WARNING, logger="gpunet"):
        stack, hists, pred = _stack_pair(fake_cuda, np.random.default_rng(3))
    st = get_ops(fake_cuda).status()["batched_gemm"]
    assert st["live"] is False and "wrong result" in st["reason"]
    assert caplog.text.count("failed the self-check") == 1 and "batched_gemm" in caplog.text
    ref, ref_hists, _ = _stack_pair("cpu", np.random.default_rng(3))
    for a, b in zip(stack.models(), ref.models()):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)
    from gpunet.cli import info as cli_info
    assert "batched_gemm         OFF (RuntimeError: wrong result" in cli_info.fast_path_lines(fake_cuda)


def test_the_batched_gemm_checks_its_operands_and_broadcasts_a_batch_of_one():
    lib = FakeCublasLib()
    gemm = cublas.Gemm(np, lib=lib, pointer=host_pointer)
    gemm.bind(0)
    rng = np.random.default_rng(0)
    flat = rng.standard_normal((3, 40))
    W = flat[:, 4:24].reshape(3, 4, 5)  # column blocks: batch stride 40, each matrix contiguous
    x = rng.standard_normal((1, 6, 4))
    out = np.empty((3, 6, 5))
    gemm.batched(x, W, out)
    np.testing.assert_allclose(out, np.matmul(x, W), rtol=1e-13)
    assert lib.batched[-1][1] == 3
    with pytest.raises(ValueError, match="C-contiguous matrices"):
        gemm.batched(np.swapaxes(rng.standard_normal((3, 4, 6)), 1, 2), W, out)
    with pytest.raises(ValueError, match="shapes do not match"):
        gemm.batched(x, W, np.empty((3, 6, 4)))
    with pytest.raises(TypeError, match="dtypes differ"):
        gemm.batched(x.astype(np.float32), W, out)
