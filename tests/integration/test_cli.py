"""Every CLI path, as a subprocess on small data."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gpunet as gn

from helpers import ROOT, assert_png, gpunet_cli, write_small_mnist


def one_line_error(proc, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = [line for line in proc.stderr.splitlines() if line.startswith("gpunet: error:")]
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return err[0]


def test_info():
    proc = gpunet_cli("info")
    assert proc.returncode == 0, proc.stderr
    assert f"gpunet {gn.__version__}" in proc.stdout and "numpy" in proc.stdout and "BLAS" in proc.stdout
    assert "cpu" in proc.stdout


def test_version_and_help():
    assert gn.__version__ in gpunet_cli("--version").stdout
    proc = gpunet_cli("train", "--help")
    assert proc.returncode == 0 and "--layers" in proc.stdout and "--resume" in proc.stdout


@pytest.mark.parametrize("dataset", ["sinc", "sincos"])
def test_train_regression_writes_everything(tmp_path, dataset):
    out = tmp_path / dataset
    proc = gpunet_cli("train", "--dataset", dataset, "--epochs", "3", "--device", "cpu", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["device"] == "cpu" and metrics["dataset"] == dataset
    assert np.isfinite(metrics["test_loss"]) and metrics["seconds"] > 0
    history = json.loads((out / "history.json").read_text())
    assert len(history["history"]["loss"]) == 3 == len(history["history"]["val_loss"])
    net = gn.load(out / "model.npz", device="cpu")
    expected = [1] + [50] * 9 + [1] if dataset == "sinc" else [1, 16, 2]
    assert list(net.layer_sizes) == expected
    assert_png(out / "loss.png")
    assert_png(out / "fit.png")


def test_train_mnist_format_from_a_data_dir(tmp_path):
    data = write_small_mnist(tmp_path / "data")
    out = tmp_path / "run"
    proc = gpunet_cli("train", "--dataset", "mnist", "--data-dir", data, "--layers", "784,32,10", "--epochs", "4",
                      "--batch-size", "32", "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.9  # the synthetic digits are easy
    assert "test_accuracy" in proc.stdout
    for name in ("loss.png", "confusion.png", "misclassified.png"):
        assert_png(out / name)


def test_resume_is_bit_identical_to_a_straight_run(tmp_path):
    data = write_small_mnist(tmp_path / "data")
    common = ["--dataset", "mnist", "--data-dir", data, "--layers", "784,16,10", "--batch-size", "50", "--device", "cpu",
              "--dropout", "0.2", "--schedule", "none", "--quiet"]  # a schedule's shape depends on --epochs
    assert gpunet_cli("train", *common, "--epochs", "4", "--out", tmp_path / "straight").returncode == 0
    assert gpunet_cli("train", *common, "--epochs", "2", "--out", tmp_path / "part").returncode == 0
    proc = gpunet_cli("train", "--resume", tmp_path / "part", "--epochs", "4", "--data-dir", data, "--quiet")
    assert proc.returncode == 0, proc.stderr
    a = gn.load(tmp_path / "straight" / "model.npz", device="cpu")
    b = gn.load(tmp_path / "part" / "model.npz", device="cpu")
    assert a.epochs_trained == b.epochs_trained == 4
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    hist = json.loads((tmp_path / "part" / "history.json").read_text())["history"]
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["history"]
    assert hist["loss"] == straight["loss"]


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    data = write_small_mnist(tmp_path / "data", n_train=3000)
    out = tmp_path / "run"
    import os
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "gpunet", "train", "--dataset", "mnist", "--data-dir", str(data),
                             "--layers", "784,64,10", "--batch-size", "10", "--epochs", "1000", "--device", "cpu",
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint.npz").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "checkpoint.npz").exists()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"gpunet train --resume {out}" in stderr and "Traceback" not in stderr
    ckpt = gn.load(out / "checkpoint.npz", device="cpu")
    assert 1 <= ckpt.epochs_trained < 1000
    assert json.loads((out / "metrics.json").read_text())["interrupted"] is True


@pytest.mark.parametrize("args,needle", [
    (["train", "--layers", "1,abc"], "--layers"),
    (["train", "--dataset", "sinc", "--lr", "-1", "--epochs", "1"], "lr"),
    (["train", "--dataset", "sinc", "--epochs", "-2"], "epochs"),
    (["train", "--dataset", "imagenet"], "dataset"),
    (["train", "--dataset", "sinc", "--layers", "2,4,1", "--epochs", "1"], "features"),
    (["train", "--dataset", "sinc", "--device", "cuda:0", "--epochs", "1"], "cuda"),
    (["train", "--dataset", "sinc", "--device", "tpu", "--epochs", "1"], "device"),
    (["train", "--resume", "/nonexistent/run"], "resume"),
    (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/data"], "MNIST files missing"),
    (["train", "--dataset", "sinc", "--loss", "cross_entropy", "--epochs", "1"], "softmax"),
    (["frobnicate"], "invalid choice"),
])
def test_errors_are_one_line_with_exit_code_2(args, needle, tmp_path):
    proc = gpunet_cli(*args)
    if "cuda" in args[-3:] and proc.returncode == 0:
        pytest.skip("a CUDA device is available")
    line = one_line_error(proc, 2)
    assert needle.lower() in line.lower(), line


def test_divergence_is_one_line_with_exit_code_1(tmp_path):
    proc = gpunet_cli("train", "--dataset", "sinc", "--init", "he", "--epochs", "3", "--device", "cpu", "--quiet",
                      cwd=tmp_path)  # the default run folder is runs/ under the working directory
    line = one_line_error(proc, 1)
    assert "diverged" in line and "learning rate" in line


def test_compare_reports_mean_and_std(tmp_path):
    out = tmp_path / "cmp"
    proc = gpunet_cli("compare", "--dataset", "sincos", "--epochs", "5", "--device", "cpu", "--seeds", "2",
                      "--vary", "hidden_activation=tanh,sigmoid", "--vary", "loss=mse,mae", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "compare.json").read_text())
    assert len(report["results"]) == 4
    for r in report["results"]:
        assert len(r["runs"]) == 2 and r["loss_std"] >= 0 and np.isfinite(r["loss_mean"]) and r["seconds_mean"] > 0
        assert np.isfinite(r["mse_mean"]) and r["mse_std"] >= 0
        if r["settings"]["loss"] == "mse":
            assert r["mse_mean"] == pytest.approx(r["loss_mean"])
    assert "± " in (out / "compare.md").read_text()
    assert_png(out / "compare.png")
    assert one_line_error(gpunet_cli("compare", "--dataset", "sinc", "--vary", "colour=red", "--out", out))


def test_bench_quick_smoke(tmp_path):
    proc = gpunet_cli("bench", "--quick", "--peers", "numpy", "--steps", "5", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "bench-cpu.json").read_text())
    impls = {(r["workload"], r["impl"]) for r in report["results"]}
    assert {("mnist-b128", "gpunet"), ("mnist-b128", "numpy"), ("sinc-b20", "gpunet")} <= impls
    for r in report["results"]:
        assert r["samples_per_s"] > 0
    assert report["gemm_gflops"] > 0
    assert "gpunet / numpy" in (tmp_path / "bench-cpu.md").read_text()
    assert_png(tmp_path / "bench-cpu.png")
