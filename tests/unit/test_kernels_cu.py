"""The CUDA sources without a GPU: nvcc compiles every kernel the CuPy backend instantiates, and the
per-element maths of each fused kernel, compiled for the host, matches the Array-API reference."""
import shutil
import subprocess

import numpy as np
import pytest

import gpunet as gn
from gpunet.nn import activations, losses
from gpunet.ops.codes import ACT_CODES
from gpunet.ops.cuda import cupy_ops as kernels, selfcheck

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")


def test_every_kernel_compiles_to_ptx(tmp_path):
    refs = ",\n".join(f"(void*){name}" for name in kernels.NAME_EXPRESSIONS)
    src = tmp_path / "all.cu"
    src.write_text(f'#include "{kernels.SOURCE_PATH}"\nvoid* gn_all[] = {{\n{refs},\n(void*)gn_tick}};\n')
    out = tmp_path / "all.ptx"
    proc = subprocess.run([NVCC, "-arch=sm_90", "--std=c++14", "--ptx", str(src), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    assert ptx.count(".entry") == len(kernels.NAME_EXPRESSIONS) + 1
    for name in kernels.TEMPLATED:
        assert ptx.count(name) >= 2  # float and double instantiations


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = tmp_path_factory.mktemp("harness") / "harness"
    proc = subprocess.run([NVCC, "-x", "cu", "-O2", "-DGPUNET_HOST_HARNESS", str(kernels.SOURCE_PATH), "-o", str(exe)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    def run(mode, dtype, values):
        d = exe.parent
        np.asarray(values, dtype=np.float64).tofile(d / "in.bin")
        subprocess.run([str(exe), mode, "f32" if dtype == "float32" else "f64", str(d / "in.bin"), str(d / "out.bin")],
                       check=True)
        return np.fromfile(d / "out.bin", dtype=np.float64)
    return run


def tol(dtype):
    return dict(rtol=3e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-13, atol=1e-15)


DTYPES = ["float32", "float64"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh"])
def test_activation_maths(harness, act, dtype, rng):
    z = np.concatenate([(4 * rng.standard_normal(50)), [0.0, -100.0, 100.0]]).astype(dtype)
    code = ACT_CODES[act]
    a = harness("act", dtype, np.concatenate([[code, z.size], z]))
    np.testing.assert_allclose(a, activations.ACTIVATIONS[act](z.astype(np.float64)), **tol(dtype))
    g = harness("act_grad", dtype, np.concatenate([[code, z.size], a]))
    np.testing.assert_allclose(g, activations.DERIVATIVES[act](a.astype(dtype)), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls,amsgrad", [(gn.Adam, False), (gn.Adam, True), (gn.AdamW, False)])
def test_adam_element_update_matches_reference(harness, cls, amsgrad, dtype, rng):
    n = 200
    opt = cls(lr=3e-3, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.02, amsgrad=amsgrad)
    p = rng.standard_normal(n).astype(dtype)
    opt.bind(p)
    for _ in range(3):  # warm the state up with the reference, then compare one step
        opt.step(p, rng.standard_normal(n).astype(dtype))
    g = rng.standard_normal(n).astype(dtype)
    m, v = opt.state["exp_avg"], opt.state["exp_avg_sq"]
    vmax = opt.state.get("max_exp_avg_sq", np.zeros(n, dtype))
    step = opt.step_count + 1
    args = [n, opt.lr, *opt.betas, opt.eps, opt.weight_decay, step, int(amsgrad), int(opt.decoupled)]
    out = harness("adam", dtype, np.concatenate([args, p, g, m, v, vmax])).reshape(4, n)
    opt.step(p, g)
    np.testing.assert_allclose(out[0], p, **tol(dtype))
    np.testing.assert_allclose(out[1], m, **tol(dtype))
    np.testing.assert_allclose(out[2], v, **tol(dtype))
    if amsgrad:
        np.testing.assert_allclose(out[3], opt.state["max_exp_avg_sq"], **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov,first", [(False, True), (False, False), (True, False)])
def test_sgd_element_update_matches_reference(harness, nesterov, first, dtype, rng):
    n = 100
    opt = gn.SGD(lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    p = rng.standard_normal(n).astype(dtype)
    opt.bind(p)
    if not first:
        opt.step(p, rng.standard_normal(n).astype(dtype))
    g = rng.standard_normal(n).astype(dtype)
    buf = opt.state["momentum_buffer"].copy()
    out = harness("sgd", dtype, np.concatenate([[n, 0.05, 0.9, 0.0, 0.01, int(nesterov), int(first)], p, g, buf]))
    opt.step(p, g)
    np.testing.assert_allclose(out[:n], p, **tol(dtype))
    np.testing.assert_allclose(out[n:], opt.state["momentum_buffer"], **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_row_kernel(harness, dtype, rng):
    rows, k = 16, 10
    z = (5 * rng.standard_normal((rows, k))).astype(dtype)
    y = np.eye(k, dtype=dtype)[rng.integers(0, k, rows)]
    out = harness("softmax_xent", dtype, np.concatenate([[rows, k], z.ravel(), y.ravel()]))
    a = activations.softmax(z.astype(np.float64))
    np.testing.assert_allclose(out[0] / rows, losses.cross_entropy(z.astype(np.float64), y), rtol=1e-5 if dtype == "float32" else 1e-13)
    np.testing.assert_allclose(out[1:1 + rows * k], a.ravel(), **tol(dtype))
    np.testing.assert_allclose(out[1 + rows * k:], ((a - y) / rows).ravel(), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_binary_cross_entropy_kernel(harness, dtype, rng):
    n = 64
    z = (6 * rng.standard_normal(n)).astype(dtype)
    y = rng.uniform(0, 1, n).astype(dtype)
    out = harness("sigmoid_xent", dtype, np.concatenate([[n], z, y]))
    zz, yy = z.astype(np.float64).reshape(1, -1), y.astype(np.float64).reshape(1, -1)
    np.testing.assert_allclose(out[0] / n, losses.binary_cross_entropy(zz, yy), rtol=1e-5 if dtype == "float32" else 1e-13)
    a = activations.sigmoid(zz).ravel()
    np.testing.assert_allclose(out[1:1 + n], a, **tol(dtype))
    np.testing.assert_allclose(out[1 + n:], (a - y) / n, **tol(dtype))


def test_dropout_generator_matches_the_reference(harness):
    """gn_uniform (the GPU dropout generator) equals kernels.dropout_reference's uint64 arithmetic."""
    seed = 0x1234_5678_9ABC_DEF0
    u = harness("uniform", "float64", [seed >> 32, seed & 0xFFFFFFFF, 1000])
    out = np.zeros(1000)
    selfcheck.dropout_reference(np, out, seed, 0.3)
    np.testing.assert_array_equal(np.where(u >= 0.3, 1 / 0.7, 0.0), out)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.03


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_hit_counts_like_numpy_argmax(harness, dtype, rng):
    """gn_row_hit (the fused accuracy count): argmax of outputs == argmax of targets, first of equal maxima."""
    rows, k = 40, 4
    a = rng.integers(0, 3, (rows, k)).astype(float)  # many ties
    y = rng.integers(0, 2, (rows, k)).astype(float)
    out = harness("row_hit", dtype, np.concatenate([[rows, k], a.ravel(), y.ravel()]))
    np.testing.assert_array_equal(out, (a.argmax(axis=1) == y.argmax(axis=1)).astype(float))
    assert 0 < out.sum() < rows


def test_bias_act_takes_a_32_bit_column_index_below_2_to_the_31(tmp_path):
    """gn_bias_act's b[i % cols]: a 32-bit remainder (rem.u32) for n < 2^31, the 64-bit one only past it."""
    src = tmp_path / "bias.cu"
    src.write_text(f'#include "{kernels.SOURCE_PATH}"\nvoid* gn_b[] = {{(void*)gn_bias_act<float>}};\n')
    out = tmp_path / "bias.ptx"
    proc = subprocess.run([NVCC, "-arch=sm_90", "--ptx", str(src), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    body = ptx[ptx.index(".entry"):]
    rem32, rem64 = body.count("rem.u32"), body.count("rem.s64") + body.count("rem.u64")
    # nvcc guards each 64-bit remainder with a 32-bit fast path of its own (one rem.u32 per rem.*64); the
    # kernel's own 32-bit loop adds remainders that have no 64-bit twin (the 64-bit loop stays for n >= 2^31)
    assert rem64 > 0 and rem32 > rem64, (rem32, rem64)
