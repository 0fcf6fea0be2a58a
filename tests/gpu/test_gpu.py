"""CuPy backend: fused kernels against the reference ops, and CPU/GPU parity. Skipped without a GPU;
``scripts/gpu-check`` runs them on a machine that has one."""
import numpy as np
import pytest

import gpunet as gn
from gpunet import backend, ops as _ops
from gpunet.ops import get_ops
from gpunet.training import cuda_graph

from helpers import assert_graph_training_equals_eager

pytestmark = pytest.mark.gpu

TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(scope="module")
def cuda():
    return backend.resolve("cuda")


def test_devices_lists_cuda(cuda):
    assert "cuda:0" in gn.devices()
    assert cuda.name == "cuda:0" and cuda.is_gpu
    assert gn.MLP([2, 2], device="auto").device == "cuda:0"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "linear"])
def test_fused_kernels_equal_reference_ops(cuda, act, dtype, rng):
    fast, ref = get_ops(cuda), _ops.ArrayOps(cuda)
    assert fast.name == "cuda"
    dev = lambda a: cuda.to_device(np.asarray(a, dtype=dtype))  # noqa: E731
    host = cuda.to_host
    z = 3 * rng.standard_normal((33, 17))
    b = rng.standard_normal(17)
    d = rng.standard_normal((33, 17))
    np.testing.assert_allclose(host(fast.bias_activation(dev(z), dev(b), act)), host(ref.bias_activation(dev(z), dev(b), act)), **TOL[dtype])
    a = ref.bias_activation(dev(z), dev(b), act)
    np.testing.assert_allclose(host(fast.activation_backward(dev(d), a, act)), host(ref.activation_backward(dev(d), a, act)), **TOL[dtype])
    np.testing.assert_allclose(host(fast.activation(act, dev(z), dev(z * 0))), host(ref.activation(act, dev(z), dev(z * 0))), **TOL[dtype])
    y = np.eye(17)[rng.integers(0, 17, 33)]
    for loss, out in (("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid"), ("mse", act)):
        a1, a2 = ref.activation(out, dev(z), dev(z * 0)), ref.activation(out, dev(z), dev(z * 0))
        d1, d2 = dev(z * 0), dev(z * 0)
        v1 = fast.loss_delta(loss, out, dev(z), a1, dev(y), d1)
        v2 = ref.loss_delta(loss, out, dev(z), a2, dev(y), d2)
        assert cuda.item(v1) == pytest.approx(cuda.item(v2), rel=1e-5 if dtype == "float32" else 1e-12)
        np.testing.assert_allclose(host(d1), host(d2), **TOL[dtype])
        np.testing.assert_allclose(host(a1), host(a2), **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make", [lambda: gn.Adam(lr=1e-2, weight_decay=0.01, amsgrad=True), lambda: gn.AdamW(lr=1e-2),
                                  lambda: gn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)])
def test_fused_optimizer_equals_reference(cuda, make, dtype, rng):
    p0 = rng.standard_normal(5000).astype(dtype)
    fast_p, ref_p = cuda.to_device(p0), cuda.to_device(p0)
    fast, ref = make(), make()
    fast.bind(fast_p)
    ref.bind(ref_p)
    for _ in range(10):
        g = cuda.to_device(rng.standard_normal(5000).astype(dtype))
        fast.step(fast_p, g, get_ops(cuda))
        ref.step(ref_p, g, None)
    np.testing.assert_allclose(cuda.to_host(fast_p), cuda.to_host(ref_p), **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cpu_gpu_parity_init_forward_and_training(dtype, rng):
    X = rng.standard_normal((256, 20))
    y = rng.integers(0, 5, 256)
    cpu = gn.MLP([20, 64, 32, 5], "relu", "softmax", device="cpu", dtype=dtype, seed=3)
    gpu = gn.MLP([20, 64, 32, 5], "relu", "softmax", device="cuda", dtype=dtype, seed=3)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)
    fwd = {"float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(cpu.predict(X), gpu.predict(X), rtol=fwd, atol=fwd)
    # 100 steps: 4 epochs of 25 batches, same batch order on both devices
    for net in (cpu, gpu):
        net.fit(X, y, epochs=4, batch_size=10, optimizer=gn.Adam(lr=1e-3), verbose=0)
    assert cpu.optimizer.step_count == gpu.optimizer.step_count == 104
    close = {"float32": 2e-3, "float64": 1e-9}[dtype]
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(a, b, rtol=close, atol=close)


def test_mnist_accuracy_matches_cpu():
    (X, y), (Xt, yt) = gn.datasets.load_mnist()
    acc = {}
    for device in ("cpu", "cuda"):
        net = gn.MLP([784, 512, 256, 10], "relu", "softmax", device=device, seed=0)
        net.fit(X, y, epochs=2, batch_size=128, optimizer=gn.Adam(lr=1e-3), verbose=0)
        acc[device] = net.evaluate(Xt, yt)["accuracy"]
    # the lowest accuracy measured under rounding changes alone is 0.9706: the floor sits 3 spreads below it
    assert acc["cuda"] > 0.9706 - 3 * 0.0017, acc
    # Rounding alone moves this accuracy: with only the GEMM summation order changed, runs measured
    # 0.9706-0.9723 (the measured spread), a spread of 0.0017; the CPU gives 0.9720 for seed 0. The old bound, 0.002,
    # left 0.0003 over that spread (flaky); the bound is 3 x the spread, 0.005: a GPU difference that
    # moves test accuracy by more than half a point still fails.
    assert abs(acc["cuda"] - acc["cpu"]) <= 0.005, acc


def test_save_on_gpu_load_on_cpu(tmp_path, rng):
    X = rng.standard_normal((10, 4))
    net = gn.MLP([4, 8, 3], output_activation="softmax", device="cuda")
    net.fit(X, rng.integers(0, 3, 10), epochs=2, batch_size=4, verbose=0)
    net.save(tmp_path / "m.npz")
    back = gn.load(tmp_path / "m.npz", device="cpu")
    np.testing.assert_allclose(back.predict(X), net.predict(X), rtol=1e-5, atol=1e-6)


def test_gpu_dropout_trains(rng):
    X = rng.standard_normal((300, 4))
    y = (X.sum(axis=1) > 0).astype(int)
    net = gn.MLP([4, 32, 2], "relu", "softmax", device="cuda", seed=0, dropout=0.3)
    net.fit(X, y, epochs=40, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0)
    assert net.evaluate(X, y)["accuracy"] > 0.93


@pytest.mark.parametrize("make_opt", [lambda: gn.Adam(lr=1e-3, amsgrad=True), lambda: gn.AdamW(lr=1e-3),
                                      lambda: gn.SGD(lr=0.05, momentum=0.9, nesterov=True)])
@pytest.mark.parametrize("schedule", [True, False])
def test_cuda_graph_training_equals_eager(make_opt, schedule, rng):
    """Replayed graphs (with a recapture when the schedule changes lr, and an eager last batch of 6)
    must train exactly like eager launches."""
    X = rng.standard_normal((406, 20))
    y = rng.integers(0, 5, 406)
    assert_graph_training_equals_eager("cuda", [20, 64, 32, 5], make_opt, X, y, steps=3 * 26, rtol=1e-10, atol=1e-12,
                                       schedule=schedule, require_replay=True)


def test_cuda_graph_resume_after_save_load(tmp_path, rng):
    X = rng.standard_normal((128, 8))
    y = rng.integers(0, 3, 128)
    a = gn.MLP([8, 16, 3], output_activation="softmax", device="cuda", dtype="float64", seed=0)
    a.fit(X, y, epochs=4, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
    b = gn.MLP([8, 16, 3], output_activation="softmax", device="cuda", dtype="float64", seed=0)
    b.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=1e-2), verbose=0, cuda_graph=True)
    b.save(tmp_path / "m.npz")
    c = gn.load(tmp_path / "m.npz", device="cuda")
    c.fit(X, y, epochs=2, batch_size=16, verbose=0, cuda_graph=True)
    for u, v in zip(a.get_weights(), c.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


def test_every_fast_path_passes_its_self_check(cuda):
    """On a real GPU nothing should have been switched off: every fused kernel, the cuBLAS C-API GEMMs and
    graph capture (checked here) pass their run-time self-check."""
    from gpunet.ops.cuda import cupy_ops as kernels

    assert cuda_graph.check_graphs(get_ops(cuda), gn.MLP) is None
    assert get_ops(cuda).batched_gemm() is not None  # the stacks' strided-batched GEMM (checked at first use)
    status = kernels.fast_path_status()[cuda.name]
    assert {path for path, st in status.items() if st["live"] is not True} == set(), status


def test_gpu_dropout_is_reproducible_per_model(rng):
    X = rng.standard_normal((128, 6))
    y = rng.integers(0, 3, 128)
    losses = []
    for seed in (0, 0, 1):
        net = gn.MLP([6, 32, 3], "relu", "softmax", device="cuda", dtype="float64", seed=seed, dropout=0.3)
        losses.append(net.fit(X, y, epochs=2, batch_size=16, verbose=0).history["loss"])
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_cublas_c_api_gemms_equal_cupy(cuda, rng):
    from gpunet.ops.cuda import graphs as cuda_graphs

    gemm = cuda_graphs.make_gemm(cuda)
    cp = cuda.xp
    for dtype in ("float32", "float64"):
        a = cp.asarray(rng.standard_normal((300, 70)), dtype=dtype)[:257]
        b = cp.asarray(rng.standard_normal((70, 33)), dtype=dtype)
        c = cp.asarray(rng.standard_normal((257, 33)), dtype=dtype)
        gemm.bind(cp.cuda.get_current_stream().ptr)
        tol = TOL[dtype]
        for x, y, ta, tb, ref in ((a, b, False, False, a @ b), (a, c, True, False, a.T @ c), (c, b, False, True, c @ b.T)):
            out = cp.empty(ref.shape, dtype=dtype)
            np.testing.assert_allclose(cuda.to_host(gemm(x, y, out, ta, tb)), cuda.to_host(ref), rtol=tol["rtol"] * 10,
                                       atol=tol["atol"] * 100)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stack_on_cuda_uses_strided_batched_gemms_and_equals_the_cpu(cuda, dtype, rng):
    """MLPStack's GEMMs on the GPU are cuBLAS strided-batched calls on the views of its flat buffer (no operand
    copies); its models equal the CPU stack's, and the path reports itself live."""
    X, y = rng.standard_normal((200, 9)), rng.integers(0, 4, 200)
    Xv, yv = X[:50] + 0.1, y[:50]
    out = {}
    for device in ("cpu", "cuda"):
        stack = gn.MLPStack([9, 32, 16, 4], "tanh", "softmax", seeds=range(5), device=device, dtype=dtype)
        hists = stack.fit(X, y, epochs=3, batch_size=16, optimizer=gn.Adam(lr=1e-2), validation_data=(Xv, yv))
        out[device] = (stack.models(), hists, stack.predict(X), stack)
    assert out["cuda"][3].fast_paths["batched_gemm"]["live"] is True
    gemm = get_ops(cuda).batched_gemm()
    assert gemm is not None and gemm.calls > 0
    tol = dict(rtol=2e-3, atol=2e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(out["cpu"][0], out["cuda"][0]):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_allclose(wb, wa, **tol)
    for ha, hb in zip(out["cpu"][1], out["cuda"][1]):
        np.testing.assert_allclose(hb.history["val_loss"], ha.history["val_loss"], **tol)
    np.testing.assert_allclose(out["cuda"][2], out["cpu"][2], **tol)
