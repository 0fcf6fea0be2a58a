"""Forward pass, losses and optimizer steps against hand computations."""
import math

import numpy as np
import pytest

import gpunet as gn
from gpunet.nn import activations, losses
from gpunet.ops import get_ops


def test_forward_matches_hand_computation():
    net = gn.MLP([2, 2, 1], "relu", "linear", device="cpu", dtype="float64")
    W1 = np.array([[1.0, -1.0], [2.0, 0.5]])
    b1 = np.array([0.5, -0.25])
    W2 = np.array([[2.0], [-3.0]])
    b2 = np.array([0.1])
    net.set_weights([W1, b1, W2, b2])
    x = np.array([[1.0, 2.0], [-1.0, 1.0]])
    # row 1: z1 = [1+4+0.5, -1+1-0.25] = [5.5, -0.25] -> a1 = [5.5, 0] -> 11 + 0.1 = 11.1
    # row 2: z1 = [-1+2+0.5, 1+0.5-0.25] = [1.5, 1.25] -> 3 - 3.75 + 0.1 = -0.65
    np.testing.assert_allclose(net.predict(x), [[11.1], [-0.65]], rtol=1e-14)


def test_softmax_output_rows_sum_to_one_and_match_formula():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    p = activations.softmax(z)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(p[0], e / e.sum(), rtol=1e-14)
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-300)


def test_sigmoid_is_stable_for_large_inputs():
    z = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    expected = [0.0, 1 / (1 + math.exp(30.0)), 0.5, 1 / (1 + math.exp(-30.0)), 1.0]  # exp(-1000) underflows to 0
    np.testing.assert_allclose(activations.sigmoid(z), expected, rtol=1e-14, atol=1e-300)


def test_loss_values_on_tiny_inputs():
    a = np.array([[1.0, 2.0], [3.0, 5.0]])
    y = np.array([[1.0, 0.0], [2.0, 7.0]])
    assert losses.mse(a, y) == pytest.approx((0 + 4 + 1 + 4) / 4)
    assert losses.mae(a, y) == pytest.approx((0 + 2 + 1 + 2) / 4)
    z = np.array([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    assert losses.cross_entropy(z, np.array([[0.0, 1.0]])) == pytest.approx(-math.log(0.75))
    assert losses.cross_entropy(np.array([[1e4, -1e4]]), np.array([[0.0, 1.0]])) == pytest.approx(2e4)
    zb = np.array([[0.0, 2.0]])
    yb = np.array([[1.0, 0.0]])
    expected = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2
    assert losses.binary_cross_entropy(zb, yb) == pytest.approx(expected)


def test_evaluate_accuracy_counts_argmax():
    net = gn.MLP([2, 3], output_activation="softmax", device="cpu", dtype="float64")
    net.set_weights([np.array([[1.0, 0, 0], [0, 1.0, 0]]), np.zeros(3)])
    X = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    y = np.array([0, 1, 1, 2])  # the last row ties at 0 and predicts class 0
    assert net.evaluate(X, y)["accuracy"] == 0.5


def adam_reference(p, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("cls,wd", [(gn.Adam, 0.0), (gn.Adam, 0.1), (gn.AdamW, 0.1)])
@pytest.mark.parametrize("use_kernels", [False, True])
def test_adam_steps_match_the_update_formula(cls, wd, use_kernels, rng):
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(5)]
    opt = cls(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    p = p0.copy()
    opt.bind(p)
    ops = get_ops(gn.backend.CPU) if use_kernels else None
    for g in grads:
        opt.step(p, g, ops)
    np.testing.assert_allclose(p, adam_reference(p0, grads, 0.01, 0.8, 0.99, 1e-6, wd, cls is gn.AdamW), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_adam_flushes_subnormal_moments(dtype, amsgrad):
    """A moment that decays below the smallest normal number becomes 0 (subnormal arithmetic is ~100x
    slower on x86); normal moments and the parameters are as the formula gives."""
    from gpunet.ops import numba_kernels as cpu_kernels

    if cpu_kernels.adam_step is None:
        pytest.skip("Numba is not installed")
    tiny = np.finfo(dtype).tiny
    p = np.array([1.0, 2.0, 3.0], dtype=dtype)
    g = np.array([0.0, 0.0, 0.5], dtype=dtype)
    m = np.array([tiny * 1.05, 4 * tiny, 0.1], dtype=dtype)  # 0.9 * m: subnormal, normal, normal
    v = np.array([tiny * 1.0005, 0.25, 0.25], dtype=dtype)
    vmax = v.copy()
    expected_m = m + (dtype(1) - dtype(0.9)) * (g - m)
    cpu_kernels.adam_step(p, g, m, v, vmax, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                          step_size=1e-3, bc2_sqrt=1.0, amsgrad=amsgrad, decoupled=False)
    assert m[0] == 0 and m[1] > 0
    np.testing.assert_allclose(m[1:], expected_m[1:], rtol=1e-6)
    assert v[0] > 0  # the second moment is kept: zeroing it would turn m / sqrt(v) into m / eps
    assert p[0] == 1.0 and p[1] == 2.0 and p[2] < 3.0  # a moment of ~1e-38 moves nothing


def test_fused_adam_keeps_nan_and_tiny_eps_behaviour():
    """The flush neither hides a NaN gradient nor changes the update of tiny-but-normal gradients with eps=0."""
    from gpunet.ops import numba_kernels as cpu_kernels

    if cpu_kernels.adam_step is None:
        pytest.skip("Numba is not installed")
    for g, eps in (([np.nan, 0.5], 1e-8), ([1e-19, 0.5], 0.0)):
        results = []
        for ops in (get_ops(gn.backend.CPU), None):
            p = np.array([1.0, 1.0], dtype=np.float32)
            opt = gn.Adam(lr=1e-3, eps=eps)
            opt.bind(p)
            opt.step(p, np.array(g, dtype=np.float32), ops)
            results.append(p)
        np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("use_kernels", [False, True])
def test_sgd_momentum_matches_formula(nesterov, use_kernels, rng):
    p0 = rng.standard_normal(20)
    grads = [rng.standard_normal(20) for _ in range(4)]
    opt = gn.SGD(lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    p = p0.copy()
    opt.bind(p)
    for g in grads:
        opt.step(p, g, get_ops(gn.backend.CPU) if use_kernels else None)
    q, buf = p0.copy(), None
    for g in grads:
        g = g + 0.01 * q
        buf = g.copy() if buf is None else 0.9 * buf + g
        q = q - 0.1 * (g + 0.9 * buf if nesterov else buf)
    np.testing.assert_allclose(p, q, rtol=1e-12)


def test_plain_sgd_step():
    p = np.array([1.0, -2.0])
    opt = gn.SGD(lr=0.5)
    opt.bind(p)
    opt.step(p, np.array([0.2, 0.4]))
    np.testing.assert_array_equal(p, [0.9, -2.2])


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_adam_matches_torch(cls, amsgrad, rng):
    torch = pytest.importorskip("torch")
    p0 = rng.standard_normal(64).astype(np.float32)
    grads = [rng.standard_normal(64).astype(np.float32) for _ in range(20)]
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = getattr(torch.optim, cls)([tp], lr=3e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.05, amsgrad=amsgrad)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
    for ops in (None, get_ops(gn.backend.CPU)):
        p = p0.copy()
        opt = getattr(gn, cls)(lr=3e-3, betas=(0.9, 0.99), eps=1e-7, weight_decay=0.05, amsgrad=amsgrad)
        opt.bind(p)
        for g in grads:
            opt.step(p, g, ops)
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=0, atol=6e-6)
