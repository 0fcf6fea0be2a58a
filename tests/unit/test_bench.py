"""``gpunet bench`` made honest: data uploaded once, per-runner errors, results after every workload,
the GEMM-only bound beside each row, the effective TF32 mode. CPU only: tiny workloads, few steps."""
import builtins
import contextlib
import json
import os
import sys
import types

import numpy as np
import pytest

import gpunet as gn
from gpunet import backend, bench
from gpunet.model import MLP

LAYERS = [6, 16, 3]


def tiny_workload(batch_size, n_rows, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_rows, LAYERS[0])).astype(np.float32)
    y = rng.integers(0, LAYERS[-1], n_rows)
    return bench.Workload(f"mnist-b{batch_size}", LAYERS, batch_size, X, y, True)


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    """Tiny stand-ins for MNIST and the 2048 x 2048 ceiling; the process-wide settings bench.run makes
    (CUPY_TF32, XLA_PYTHON_CLIENT_PREALLOCATE) are restored after each test."""
    monkeypatch.setattr(bench, "mnist_workload", tiny_workload)
    real_ceiling = bench.gemm_ceiling
    monkeypatch.setattr(bench, "gemm_ceiling", lambda dtype, device: real_ceiling(dtype, n=128, device=device))
    monkeypatch.setenv("CUPY_TF32", "0")
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def bench_args(tmp_path, *extra):
    return bench.parse_args(["--batch-sizes", "8,16", "--small-batch", "0", "--peers", "numpy", "--steps", "4",
                             "--repeats", "2", "--out", str(tmp_path), *extra])


def read_report(tmp_path):
    return json.loads((tmp_path / "bench-cpu.json").read_text())


def cells(report):
    return {(r["workload"], r["impl"]): r for r in report["results"]}


# ----------------------------------------------------------------------------- data uploaded once
def count_transfers(monkeypatch):
    """Record every ``MLP.upload`` call and the shape of every ``Backend.to_device`` transfer."""
    uploads, shapes = [], []
    real_upload, real_to_device = MLP.upload, backend.Backend.to_device
    monkeypatch.setattr(MLP, "upload", lambda self, *a, **k: uploads.append(a) or real_upload(self, *a, **k))
    monkeypatch.setattr(backend.Backend, "to_device",
                        lambda self, a, dtype=None: shapes.append(np.shape(a)) or real_to_device(self, a, dtype))
    return uploads, shapes


def test_gpunet_timed_run_neither_validates_nor_uploads_the_data(monkeypatch):
    w = tiny_workload(8, 40)
    runner = bench.GpunetRunner(w, "cpu", "float32")
    uploads, transfers = count_transfers(monkeypatch)
    before = runner.net.get_weights()
    steps_before = runner.opt.step_count
    seconds = runner.run(5)
    assert seconds > 0
    assert uploads == []
    # the only transfer is the run's batch order (5 steps x 8 rows), uploaded before the clock starts
    assert transfers == [(40,)]
    assert runner.opt.step_count == steps_before + 5  # it trained exactly 5 optimizer steps
    after = runner.net.get_weights()
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_gpunet_runner_trains_like_fit_on_the_same_batches():
    """The timed steps are fit's steps: the same batches in the same order give the same weights."""
    w = tiny_workload(8, 32)
    runner = bench.GpunetRunner(w, "cpu", "float32")
    runner.run(4)
    order = np.random.default_rng(0).permutation(32)  # the first run's batch order
    net = gn.MLP(LAYERS, "relu", "softmax", device="cpu", dtype="float32", seed=0)
    net.fit(w.X[order], w.y[order], epochs=1, batch_size=8, optimizer=gn.Adam(lr=1e-3), shuffle=False, verbose=0)
    for a, b in zip(runner.net.get_weights(), net.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_gpunet_runner_dispatches_like_fit_and_reports_the_graph(monkeypatch):
    """With a live graph every (full) batch goes to ``Trainer.graph_step``, as in ``Trainer.epoch``;
    without one to ``_Trainer.step``. The gpunet-graph row carries the trainer's own graph report."""
    runner = bench.GpunetRunner(tiny_workload(8, 48), "cpu", "float64", cuda_graph=True)
    trainer = runner.trainer
    calls = []
    monkeypatch.setattr(trainer, "step", lambda rows, r: calls.append(("step", len(rows), r)))
    runner.run(2)
    # a live graph (the CPU has none), whose stream is the current one
    monkeypatch.setattr(trainer, "graph", types.SimpleNamespace(stream=contextlib.nullcontext(),
                                                                    replays=3, captures=1))
    monkeypatch.setattr(trainer, "graph_step", lambda rows, r: calls.append(("graph", len(rows), r)))
    runner.run(3)
    assert calls == [("step", 8, 8)] * 2 + [("graph", 8, 8)] * 3
    assert runner.extra == {"cuda_graph": {"requested": True, "replays": 3, "captures": 1, "fallback": None}}
    rows = bench.workload_rows(runner.w, 3, [runner], {"gpunet-graph": [100.0]}, {}, ceiling=1.0)
    assert rows[0]["impl"] == "gpunet-graph" and rows[0]["cuda_graph"] == trainer.graph_summary()
    assert bench.GpunetRunner(tiny_workload(8, 48), "cpu", "float64").extra == {}


# ----------------------------------------------------------------------------- per-runner errors
def test_a_runner_that_raises_is_an_error_cell_and_the_others_are_kept(tmp_path, monkeypatch):
    def out_of_memory(self, steps):
        raise MemoryError("out of memory allocating 4 GiB")

    monkeypatch.setattr(bench.NumpyRunner, "run", out_of_memory)

    def broken_setup(self, w, dtype):
        raise RuntimeError("cannot set up")

    monkeypatch.setattr(bench.SklearnRunner, "__init__", broken_setup)
    report = bench.run(bench_args(tmp_path, "--peers", "numpy,sklearn"))
    saved = read_report(tmp_path)
    assert saved["complete"] is True and saved["results"] == json.loads(json.dumps(report["results"]))
    got = cells(saved)
    for wl in ("mnist-b8", "mnist-b16"):
        assert got[(wl, "numpy")]["error"] == "MemoryError: out of memory allocating 4 GiB"
        assert got[(wl, "numpy")]["samples_per_s"] is None
        assert got[(wl, "sklearn")]["error"] == "RuntimeError: cannot set up"
        for impl in ("gpunet", "gemm-only"):
            assert "error" not in got[(wl, impl)]
            assert got[(wl, impl)]["samples_per_s"] > 0 and len(got[(wl, impl)]["runs"]) == 2
    md = (tmp_path / "bench-cpu.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| mnist-b8 |"))
    header = next(line for line in md.splitlines() if line.startswith("| workload |"))
    columns = dict(zip(header.split("|"), row.split("|")))
    assert columns[" numpy (samples/s) "].strip() == "error"
    assert columns[" gpunet / numpy "].strip() == "error"
    assert columns[" sklearn (samples/s) "].strip() == "error"
    assert float(columns[" gpunet (samples/s) "].replace(",", "")) > 0
    assert "mnist-b8 numpy: MemoryError: out of memory allocating 4 GiB" in md


def test_a_failed_runner_is_dropped_from_later_rounds():
    class Flaky(bench.Runner):
        def __init__(self, name, fail_at):
            self.name, self.calls, self.fail_at = name, 0, fail_at
            self.w = tiny_workload(4, 16)

        def run(self, steps):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError(f"{self.name} broke")
            return 0.01

    good, bad = Flaky("gpunet", 0), Flaky("numpy", 2)
    runners, errors = [good, bad], {}
    rates = bench.measure(runners, steps=2, repeats=3, warmup=1, errors=errors)
    assert errors == {"numpy": "RuntimeError: numpy broke"}
    assert runners == [good] and bad.calls == 2  # warm-up, then the failing first round; no more
    assert rates == {"gpunet": pytest.approx([800.0, 800.0, 800.0])}  # 2 steps x 4 rows / 0.01 s


# ----------------------------------------------------------------------------- written after every workload
@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_results_of_finished_workloads_survive_a_crash_in_the_next(tmp_path, monkeypatch, stop):
    real_run = bench.NumpyRunner.run

    def crash_in_second_workload(self, steps):
        if self.w.batch_size == 16:
            raise stop()
        return real_run(self, steps)

    monkeypatch.setattr(bench.NumpyRunner, "run", crash_in_second_workload)
    with pytest.raises(stop):
        bench.run(bench_args(tmp_path))
    saved = read_report(tmp_path)
    assert saved["complete"] is False
    assert {r["workload"] for r in saved["results"]} == {"mnist-b8"}
    got = cells(saved)
    assert set(got) == {("mnist-b8", i) for i in ("gpunet", "numpy", "gemm-only")}
    assert all(r["samples_per_s"] > 0 for r in got.values())
    md = (tmp_path / "bench-cpu.md").read_text()
    assert "| mnist-b8 |" in md and "mnist-b16" not in md and "Partial" in md
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


# ----------------------------------------------------------------------------- GEMM-only bound
def test_every_row_has_the_gemm_only_bound_of_its_workload(tmp_path):
    report = bench.run(bench_args(tmp_path))
    got = cells(read_report(tmp_path))
    md = (tmp_path / "bench-cpu.md").read_text()
    assert "gpunet % of GEMM-only bound" in md
    for wl in ("mnist-b8", "mnist-b16"):
        bound = got[(wl, "gemm-only")]["samples_per_s"]
        ours = got[(wl, "gpunet")]
        assert bound > 0 and ours["fraction_of_gemm_bound"] > 0
        assert ours["fraction_of_gemm_bound"] == pytest.approx(ours["samples_per_s"] / bound, rel=1e-12)
        assert got[(wl, "numpy")]["fraction_of_gemm_bound"] == pytest.approx(
            got[(wl, "numpy")]["samples_per_s"] / bound, rel=1e-12)
        assert got[(wl, "gemm-only")]["fraction_of_gemm_bound"] == 1.0
        row = next(line for line in md.splitlines() if line.startswith(f"| {wl} |"))
        assert f"| {ours['fraction_of_gemm_bound']:.0%} |" in row
    assert report["complete"] is True


def test_gemm_only_runner_times_the_step_gemms_on_data_uploaded_once(monkeypatch):
    w = tiny_workload(8, 40)
    runner = bench.GemmOnlyRunner(w, "cpu", "float32")
    _, transfers = count_transfers(monkeypatch)
    assert runner.run(5) > 0
    assert transfers == [(40,)]  # the batch order only
    # the last step's forward pass: A[l+1] = A[l] @ W[l] on the gathered batch
    np.testing.assert_allclose(runner.A[1], runner.A[0] @ runner.W[0], rtol=1e-5)


# ----------------------------------------------------------------------------- TF32 mode
def test_tf32_record_says_full_float32_by_default(tmp_path):
    report = bench.run(bench_args(tmp_path, "--batch-sizes", "8"))
    tf32 = read_report(tmp_path)["machine"]["tf32"]
    assert tf32 == report["machine"]["tf32"]
    assert tf32["requested"] is False and tf32["full_fp32"] is True
    assert tf32["cupy_compute_type"] is None  # CPU: no CuPy GEMM
    assert "full float32 matmuls" in (tmp_path / "bench-cpu.md").read_text()
    assert os.environ["CUPY_TF32"] == "0"


class FakeLinalg(types.ModuleType):
    """CuPy 14.2's cupy._core._routines_linalg compute-type API: the mode is fixed at the first read."""

    COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32 = 0, 1, 7

    def __init__(self, env_tf32):
        super().__init__("cupy._core._routines_linalg")
        self.mode, self.env_tf32 = self.COMPUTE_TYPE_TBD, env_tf32

    def get_compute_type(self, dtype):
        assert np.dtype(dtype) == np.float32
        if self.mode == self.COMPUTE_TYPE_TBD:
            self.mode = self.COMPUTE_TYPE_TF32 if self.env_tf32 else self.COMPUTE_TYPE_DEFAULT
        return self.mode

    def set_compute_type(self, dtype, mode):
        self.mode = mode

    def compute_type_to_str(self, mode):
        return {1: "COMPUTE_TYPE_DEFAULT", 7: "COMPUTE_TYPE_TF32"}[mode]


def fake_libraries(monkeypatch, env_tf32=False):
    linalg = FakeLinalg(env_tf32)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    cupy = types.ModuleType("cupy")
    cupy._core = core
    torch = types.SimpleNamespace(backends=types.SimpleNamespace(cuda=types.SimpleNamespace(
        matmul=types.SimpleNamespace(allow_tf32=True))))  # PyTorch's own default differs by version: set it anyway
    jax_config = types.SimpleNamespace(jax_default_matmul_precision=None)
    jax_config.update = lambda name, value: setattr(jax_config, name, value)
    jax = types.SimpleNamespace(config=jax_config)
    for name, mod in (("cupy", cupy), ("cupy._core", core), ("cupy._core._routines_linalg", linalg),
                      ("torch", torch), ("jax", jax)):
        monkeypatch.setitem(sys.modules, name, mod)
    return linalg, torch, jax


@pytest.mark.parametrize("tf32", [False, True])
def test_every_library_gets_the_requested_matmul_mode_and_the_record_reads_it_back(monkeypatch, tf32):
    linalg, torch, jax = fake_libraries(monkeypatch, env_tf32=not tf32)  # an earlier GEMM fixed the other mode
    linalg.get_compute_type(np.float32)
    notes = []
    bench.configure_precision(tf32, notes)
    bench.enforce_cupy_gemm_mode(tf32, notes)
    assert os.environ["CUPY_TF32"] == ("1" if tf32 else "0")
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert jax.config.jax_default_matmul_precision == ("tensorfloat32" if tf32 else "float32")
    want = "COMPUTE_TYPE_TF32" if tf32 else "COMPUTE_TYPE_DEFAULT"
    assert linalg.compute_type_to_str(linalg.mode) == want
    assert any("XLA_PYTHON_CLIENT_PREALLOCATE" in n for n in notes)  # jax was already imported here
    assert bench.tf32_record(tf32, "cuda:0") == {
        "requested": tf32, "cupy_compute_type": want, "torch_allow_tf32": tf32,
        "jax_matmul_precision": "tensorfloat32" if tf32 else "float32", "full_fp32": not tf32}


@pytest.mark.parametrize("tf32", [False, True])
def test_a_gemm_mode_fixed_earlier_in_the_process_is_corrected_with_a_note(monkeypatch, tf32):
    linalg, _, _ = fake_libraries(monkeypatch, env_tf32=not tf32)
    linalg.get_compute_type(np.float32)  # e.g. scripts/gpu-check's float32 GEMMs before the benchmark
    notes = []
    bench.enforce_cupy_gemm_mode(tf32, notes)
    want, had = ("COMPUTE_TYPE_TF32", "COMPUTE_TYPE_DEFAULT") if tf32 else ("COMPUTE_TYPE_DEFAULT", "COMPUTE_TYPE_TF32")
    assert bench.cupy_gemm_mode() == want
    assert len(notes) == 1 and f"fixed to {had}" in notes[0] and f"set to {want}" in notes[0]
    bench.enforce_cupy_gemm_mode(tf32, notes)
    assert len(notes) == 1  # nothing to correct: no second note


def test_record_is_not_full_float32_when_one_library_uses_tf32(monkeypatch):
    linalg, torch, jax = fake_libraries(monkeypatch)
    bench.configure_precision(False, [])
    bench.enforce_cupy_gemm_mode(False, [])
    assert bench.tf32_record(False, "cuda:0")["full_fp32"] is True
    torch.backends.cuda.matmul.allow_tf32 = True
    assert bench.tf32_record(False, "cuda:0")["full_fp32"] is False


def test_jax_is_told_not_to_preallocate_before_it_is_imported(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE")  # the fixture restores the original afterwards
    if "jax" in sys.modules:
        monkeypatch.delitem(sys.modules, "jax")
    seen = {}
    real_import = builtins.__import__

    def spy(name, *args, **kwargs):
        if name == "jax":
            seen["env at import"] = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
            raise ImportError("no jax in this test")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", spy)
    notes = []
    bench.configure_precision(False, notes)
    monkeypatch.undo()
    assert seen == {"env at import": "false"}
    assert notes == []
