"""scripts/gpu-check on the CPU: its help, the no-CUDA exit, the per-test time limit, the report rewritten
after every step, and the verdict. The script is loaded as a module (it has no .py suffix)."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


@pytest.fixture(scope="module")
def gc():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_help_says_how_to_run_from_the_checkout_and_installs_nothing():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "python3 scripts/gpu-check [--out FILE] [--quick]" in text and "usage: python3 scripts/gpu-check" in text
    assert SCRIPT.read_text().splitlines()[0] == "#!/usr/bin/env python3"
    assert "from a checkout" in text and "no network is needed" in text
    assert "numpy, pytest and a CuPy" in text and "PYTHONPATH" in text
    assert "Exit status: 0" in text and "2 when no usable CUDA device" in text
    assert "after every step" in text and "os.replace" in text
    assert "pip" not in text.lower()
    assert "pip install" not in SCRIPT.read_text()


def test_no_cuda_device_exits_2_with_a_report_that_says_why(tmp_path):
    fake = tmp_path / "site" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no CUDA driver in this test')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", "r.json"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no usable CUDA device" in proc.stderr
    report = json.loads((work / "r.json").read_text())
    assert report["exit_code"] == 2 and report["cuda_available"] is False
    assert report["status"] == "no usable CUDA device"
    assert "no CUDA driver in this test" in report["reason"]
    # gpunet came from this checkout although the command ran in another folder
    assert Path(report["gpunet_path"]).resolve() == ROOT / "gpunet" / "__init__.py"
    assert [s["step"] for s in report["steps"]] == ["probe cuda:0"]
    assert [p.name for p in work.iterdir()] == ["r.json"]  # no temporary file left behind


def test_runner_kills_a_hanging_command_and_its_children_at_the_timeout(gc, tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
            "print('started', flush=True)\n"
            "time.sleep(300)\n")
    res = gc.run_command([sys.executable, "-c", code], timeout=3.0)
    assert res["status"] == "timeout" and res["timeout_s"] == 3.0
    assert res["seconds"] < 60  # the child would sleep 300 s; the grandchild holds the pipes too
    assert "started" in res["stdout"]
    pid = int(pidfile.read_text())
    for _ in range(50):  # the killed grandchild is reaped by init (a zombie at most, never running)
        try:
            state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"grandchild {pid} still running (state {state})")
    ok = gc.run_command([sys.executable, "-c", "print('hi')"], timeout=30)
    assert ok["status"] == "ok" and ok["returncode"] == 0 and ok["stdout"].strip() == "hi"
    bad = gc.run_command([sys.executable, "-c", "raise SystemExit(3)"], timeout=30)
    assert bad["status"] == "failed" and bad["returncode"] == 3


FAKE_TEST = """
import json, os, shutil, sys, time
report, snap, junit, kind = sys.argv[1:5]
shutil.copy(report, snap)  # what the report file held when this test started
with open(snap + ".env", "w") as f:
    f.write(os.environ["PYTHONPATH"])
if kind == "hang":
    time.sleep(300)
if kind == "fail":
    with open(junit, "w") as f:
        f.write('<testsuites><testsuite><testcase classname="t" name="fail"><failure message="boom">x</failure>'
                '</testcase></testsuite></testsuites>')
    sys.exit(1)
"""


def test_run_tests_times_out_a_hanging_test_goes_on_and_rewrites_the_report_after_each(gc, tmp_path):
    report = gc.Report(tmp_path / "report.json", {"status": "running"})
    report.save()
    ids = ["ok", "hang", "fail", "ok2"]
    snaps = {i: tmp_path / f"snap-{i}.json" for i in ids}

    def command(test_id, junit):
        return [sys.executable, "-c", FAKE_TEST, str(report.path), str(snaps[test_id]), junit, test_id]

    lines = []
    tests = gc.run_tests(ids, report, gc.Clock(600), timeout=4.0, command=command, workdir=str(tmp_path),
                         log=lambda *a, **k: lines.append(a[0]))
    statuses = [c["status"] for c in tests["cases"]]
    assert statuses == ["passed", "timeout", "failed", "passed"]
    assert tests["cases"][1]["message"] == "killed after 4.0 s" and tests["cases"][1]["seconds"] < 60
    assert tests["cases"][2]["message"] == "boom"
    assert tests["counts"] == {"passed": 2, "timeout": 1, "failed": 1}
    # each test saw the report as rewritten after the tests before it
    for n, test_id in enumerate(ids):
        seen = json.loads(snaps[test_id].read_text())
        assert [c["status"] for c in seen["tests"]["cases"]] == statuses[:n]
        assert Path(snaps[test_id].with_suffix(".json.env").read_text().split(os.pathsep)[0]) == ROOT
    final = json.loads(report.path.read_text())
    assert [c["status"] for c in final["tests"]["cases"]] == statuses
    assert len(lines) == 4 and "timeout" in lines[1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert gc.failures(final) == ["test hang: timeout", "test fail: failed"]


def test_run_tests_past_the_deadline_records_not_run(gc, tmp_path):
    report = gc.Report(tmp_path / "r.json")
    tests = gc.run_tests(["a", "b"], report, gc.Clock(100), timeout=10, reserve=100,
                         command=lambda *_: pytest.fail("must not run"), log=lambda *a, **k: None)
    assert [c["status"] for c in tests["cases"]] == ["not run (time budget)"] * 2
    assert gc.failures(json.loads(report.path.read_text())) == ["test a: not run (time budget)",
                                                                "test b: not run (time budget)"]


def test_statuses_come_from_pytests_junit(gc, tmp_path):
    f = tmp_path / "test_fake.py"
    f.write_text("import pytest\n"
                 "def test_ok(): pass\n"
                 "def test_bad(): assert 1 == 2\n"
                 "def test_skip(): pytest.skip('no device')\n"
                 "@pytest.mark.xfail(reason='no replay')\n"
                 "def test_xf(): assert False\n")
    report = gc.Report(tmp_path / "r.json")
    ids = [f"{f}::test_{n}" for n in ("ok", "bad", "skip", "xf")]
    tests = gc.run_tests(ids, report, gc.Clock(600), timeout=120, workdir=str(tmp_path), log=lambda *a, **k: None)
    assert [c["status"] for c in tests["cases"]] == ["passed", "failed", "skipped", "xfailed"]
    assert "1 == 2" in tests["cases"][1]["message"]
    assert tests["cases"][2]["message"].endswith("no device") and tests["cases"][3]["message"] == "no replay"


def test_bench_plan_is_one_valid_gpunet_bench_call_per_workload(gc, tmp_path):
    from gpunet import bench

    full = gc.bench_plan(False, tmp_path)
    quick = gc.bench_plan(True, tmp_path)
    assert [label for label, _ in full] == ["mnist-b32+sinc-b20", "mnist-b128", "mnist-b1024", "mnist-b8192"]
    assert [label for label, _ in quick] == ["mnist-b128+sinc-b20"]
    for label, argv in full + quick:
        args = bench.parse_args(argv)
        assert args.device == "cuda" and not args.quick
        assert Path(args.out) == tmp_path / label
        assert f"mnist-b{args.batch_sizes}" in label and (args.small_batch == 20) == label.endswith("+sinc-b20")
    assert [bench.parse_args(a).steps for _, a in full] == [100] * 4
    assert bench.parse_args(quick[0][1]).steps == 20 and bench.parse_args(quick[0][1]).repeats == 2


def test_fast_path_summary_graph_check_and_verdict(gc):
    absent = gc.summarize_fast_paths({"available": False, "note": "not available in this version (x)"})
    assert absent == {"live": [], "off": {}, "note": "not available in this version (x)"}
    status = {"cuda:0": {"bias_activation": {"live": True, "reason": None},
                         "softmax_xent": {"live": False, "reason": "max abs error 0.3 > 1e-5"},
                         "adam": {"live": True, "reason": None}}}
    fp = gc.summarize_fast_paths({"available": True, "status": status})
    assert fp == {"live": ["bias_activation", "adam"], "off": {"softmax_xent": "max abs error 0.3 > 1e-5"},
                  "note": None}
    weird = gc.summarize_fast_paths({"available": True, "status": {"cuda:0": ["bias_activation"]}})
    assert weird["note"].startswith("unexpected fast_path_status() format")

    ok_steps = [{"step": "probe cuda:0", "status": "ok"}, {"step": "bench mnist-b128", "status": "ok"}]
    data = {"device": "NVIDIA H100", "status": "passed", "steps": ok_steps,
            "tests": {"counts": {"passed": 27, "xfailed": 1}, "cases": [{"test": "t", "status": "xfailed"}]},
            "fast_paths": dict(fp, off={}), "cuda_graph": {"requested": True, "replays": 14, "captures": 1,
                                                          "fallback": None},
            "bench": {"workloads": [{"workload": "mnist-b128", "status": "ok"}], "rows": [{}] * 4, "table": "|x|"}}
    assert gc.failures(data) == []
    lines = "\n".join(gc.summary_lines(data))
    assert "tests: 27 passed, 1 xfailed" in lines and "graph: 14 replays, 1 captures" in lines
    assert "fast paths: 2 live (bias_activation, adam), 0 off" in lines
    assert "benchmark: 4 rows from 1/1 workloads" in lines

    bad = dict(data, fast_paths=fp, cuda_graph={"requested": True, "replays": 0, "captures": 0,
                                                "fallback": "cuBLAS refused during capture"},
               bench={"workloads": [{"workload": "mnist-b8192", "status": "timeout"}], "rows": [], "table": None})
    assert gc.failures(bad) == ["benchmark mnist-b8192: timeout",
                                "fast path softmax_xent switched off: max abs error 0.3 > 1e-5",
                                "CUDA graph check: no replay (cuBLAS refused during capture)"]
    assert "off: softmax_xent: max abs error 0.3 > 1e-5" in "\n".join(gc.summary_lines(bad))


def test_report_save_is_atomic_and_complete(gc, tmp_path):
    r = gc.Report(tmp_path / "sub" / "r.json", {"a": 1})
    r.step({"step": "one", "status": "ok"})
    r.step({"step": "two", "status": "failed"})
    assert json.loads(r.path.read_text()) == {"a": 1, "steps": [{"step": "one", "status": "ok"},
                                                                {"step": "two", "status": "failed"}]}
    assert [p.name for p in r.path.parent.iterdir()] == ["r.json"]


def test_bad_flags_are_clear_errors(gc, capsys):
    for argv, msg in ((["--budget", "0"], "--budget must be > 0"), (["--test-timeout", "-1"], "--test-timeout must be > 0"),
                      (["--bench-reserve", "-5"], "--bench-reserve must be >= 0")):
        with pytest.raises(SystemExit) as exc:
            gc.parse_args(argv)
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    assert gc.parse_args(["--quick"]).bench_reserve == 60.0 and gc.parse_args([]).bench_reserve == 180.0


def test_ctrl_c_takes_the_running_step_down_too(gc, tmp_path):
    """The child runs in its own session (Ctrl-C does not reach it), so the runner must kill it."""
    import signal

    pidfile = tmp_path / "child.pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(300)"

    def interrupt(*_):
        if not (pidfile.exists() and pidfile.read_text()):  # not started yet: ask again shortly
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            return
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            gc.run_command([sys.executable, "-c", code], timeout=120)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    pid = int(pidfile.read_text())
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or status.read_text().split("State:")[1].split()[0] in ("Z", "X")


class _PerformanceWarning(RuntimeWarning):
    """Stands in for cupy._util.PerformanceWarning (a RuntimeWarning subclass) where CuPy is absent."""


@pytest.mark.parametrize("message", [
    "Using synchronous transfer as pinned memory (8388608 bytes) could not be allocated. This generally occurs "
    "because of insufficient host memory. The original error was: out of memory",
    "The device where the array resides (1) is different from the current device (0). Peer access has been "
    "activated automatically.",
    "memory efficient einsum is not supported yet",
    "Jitify is performing a one-time only warm-up to populate the persistent cache, this may take a few seconds "
    "and will be improved in a future release...",
    "Using the slower implementation as cupyx.scipy.ndimage.sum supports int32, float16, float32, float64, "
    "uint32, uint64 as data typesfor the fast implmentation",
])
def test_cupys_performance_warnings_are_not_test_errors(message):
    """pyproject.toml turns RuntimeWarnings into errors; CuPy's PerformanceWarning messages stay warnings."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # inherits the configured filters, records what passes
        warnings.warn(message, _PerformanceWarning)
    assert [str(w.message) for w in caught] == [message]
    with pytest.raises(RuntimeWarning, match="overflow"):  # any other RuntimeWarning is still an error
        warnings.warn("overflow encountered in exp", RuntimeWarning)


def test_gpu_tests_run_in_one_process_and_only_the_dead_ones_again(gc, tmp_path):
    """One pytest process for every test; its watchdog kills a hanging test; the tests without a result
    (the hung one, the ones it never reached) run again one per process; results before the kill are kept."""
    f = tmp_path / "test_fake_gpu.py"
    marker = tmp_path / "pids.txt"
    f.write_text("import os, time, pytest\n"
                 f"def _pid(): open({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
                 "def test_ok(): _pid()\n"
                 "def test_bad(): _pid(); assert 1 == 2\n"
                 "def test_skip(): _pid(); pytest.skip('no device')\n"
                 "@pytest.mark.xfail(reason='no replay')\n"
                 "def test_xf(): _pid(); assert False\n"
                 "def test_hang(): _pid(); time.sleep(300)\n"
                 "class TestAfter:\n"
                 "    @pytest.mark.parametrize('n', [1, 2])\n"
                 "    def test_after(self, n): _pid()\n")
    ids = [f"{f}::test_{n}" for n in ("ok", "bad", "skip", "xf", "hang")] + [
        f"{f}::TestAfter::test_after[{n}]" for n in (1, 2)]
    report = gc.Report(tmp_path / "out" / "r.json")
    lines = []
    tests = gc.run_gpu_tests(ids, report, gc.Clock(600), timeout=4.0, workdir=str(tmp_path),
                             log=lambda *a, **k: lines.append(a[0]))
    by_id = {c["test"]: c for c in tests["cases"]}
    assert [c["test"] for c in tests["cases"]] == ids  # in collection order
    assert [by_id[i]["status"] for i in ids] == ["passed", "failed", "skipped", "xfailed", "timeout", "passed",
                                                 "passed"]
    assert [by_id[i]["run"] for i in ids] == ["shared"] * 4 + ["own process"] * 3
    assert "1 == 2" in by_id[ids[1]]["message"] and by_id[ids[2]]["message"].endswith("no device")
    assert by_id[ids[3]]["message"] == "no replay"
    assert by_id[ids[4]]["shared_run"].startswith("timeout (over 4.0 s")
    shared = tests["shared_run"]
    assert shared["status"] == "crashed" and shared["results_from"] == "progress" and shared["results"] == 4
    pids = marker.read_text().split()
    assert len(set(pids[:5])) == 1 and len(set(pids)) == 4  # one shared process, then three of their own
    assert json.loads(report.path.read_text())["tests"]["counts"] == {"passed": 3, "failed": 1, "skipped": 1,
                                                                      "xfailed": 1, "timeout": 1}
    assert "3 to re-run one per process" in lines[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("gpu-check")] == []  # temp folder removed
    assert [p.name for p in report.path.parent.iterdir()] == ["r.json"]


def test_gpu_tests_take_their_results_from_the_junit_file_when_the_process_lives(gc, tmp_path):
    f = tmp_path / "test_fake_gpu.py"
    f.write_text("import pytest\n"
                 "def test_ok(): pass\n"
                 "def test_bad(): assert 1 == 2\n"
                 "@pytest.fixture\n"
                 "def broken(): raise RuntimeError('setup broke')\n"
                 "def test_err(broken): pass\n")
    ids = [f"{f}::test_{n}" for n in ("ok", "bad", "err")]
    report = gc.Report(tmp_path / "r.json")
    tests = gc.run_gpu_tests(ids, report, gc.Clock(600), timeout=60, workdir=str(tmp_path), log=lambda *a, **k: None,
                             rerun_command=lambda *_: pytest.fail("nothing to re-run"))
    assert [c["status"] for c in tests["cases"]] == ["passed", "failed", "error"]
    assert tests["shared_run"]["results_from"] == "junit" and tests["shared_run"]["status"] == "failed"
    assert "setup broke" in tests["cases"][2]["message"]


def test_children_get_a_writable_cupy_cache_unless_the_user_set_one(gc, monkeypatch):
    monkeypatch.delenv("CUPY_CACHE_DIR", raising=False)
    path = gc.checkout_env()["CUPY_CACHE_DIR"]
    assert os.path.isdir(path) and os.access(path, os.W_OK)
    assert gc.checkout_env()["CUPY_CACHE_DIR"] == path  # one folder for every child
    monkeypatch.setenv("CUPY_CACHE_DIR", "/somewhere/mine")
    assert gc.checkout_env()["CUPY_CACHE_DIR"] == "/somewhere/mine"


def test_default_budget_fits_8_minutes(gc):
    args = gc.parse_args([])
    assert args.budget + 20 <= 8 * 60  # 20 s for the last step's kill, the report and the bundle


def test_a_killed_run_leaves_only_the_report_beside_out_and_no_temporary_folder(tmp_path):
    import signal

    fake = tmp_path / "site" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import time; time.sleep(300)\n")  # the probe hangs in `import cupy`
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "results"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), TMPDIR=str(tmp))
    env.pop("CUPY_CACHE_DIR", None)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--out", str(out / "r.json")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(200):  # until the run's temporary folder exists and the probe runs
        if any(p.name.startswith("gpu-check-") and not p.name.startswith("gpu-check-cupy") for p in tmp.iterdir()):
            break
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [p.name for p in out.iterdir()] == ["r.json"]
    assert json.loads((out / "r.json").read_text())["status"] == "interrupted"
    assert [p.name for p in tmp.iterdir()] == [f"gpu-check-cupy-cache-{os.getuid()}"]  # the kept kernel cache only


def test_benchmark_files_are_one_archive_beside_out(gc, tmp_path):
    import tarfile

    bench = tmp_path / "work" / "gpu-bench"
    for label in ("mnist-b32+sinc-b20", "mnist-b128", "mnist-b1024", "mnist-b8192"):
        (bench / label).mkdir(parents=True)
        for name in ("bench.json", "bench.md", "bench-gpu.png"):
            (bench / label / name).write_text(label)
        (bench / f"{label}.result.json").write_text("{}")
    out = tmp_path / "results"
    out.mkdir()
    (out / "r.json").write_text("{}")
    assert gc.bundle(bench, out / "r-bench.tar.gz")
    assert sorted(p.name for p in out.iterdir()) == ["r-bench.tar.gz", "r.json"]
    with tarfile.open(out / "r-bench.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu-bench/mnist-b128/bench.json" in names and len([n for n in names if n.endswith(".json")]) == 8
    assert not gc.bundle(tmp_path / "nothing", out / "x.tar.gz") and not (out / "x.tar.gz").exists()
