"""The user's own data through the CLI (train, predict, evaluate), the model-level contract
(standardisation, classes, predict_proba, score, validation_split, record="batch") and a CLI without
silent surprises. Tiny data: every CLI call is a subprocess of well under two seconds."""
import csv
import json
import os

import numpy as np
import pytest

import gpunet as gn
from gpunet.tabular import split_indices

from helpers import assert_png, gpunet_cli, write_small_mnist
from test_cli import one_line_error

FAST = ["--epochs", "40", "--device", "cpu", "--quiet", "--batch-size", "16"]


def _blobs(n=120, seed=0):
    """Three well separated classes in 3 features of very different scales (standardisation matters)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, n)
    centres = np.array([[0, 0, 0], [4, 0, 4], [0, 4, -4]], dtype=float)
    X = centres[k] + 0.5 * rng.standard_normal((n, 3))
    X *= np.array([1.0, 1000.0, 0.001])
    return X, k


def _write_csv(path, X, labels, header=True, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(["width", "mass", "tilt", "species"])
        for row, lab in zip(X, labels):
            w.writerow([*(f"{v:.6g}" for v in row), lab])
    return path


def _predicted_labels(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    return rows[0], [r[0] for r in rows[1:]], rows


NAMES = np.array(["setosa", "versicolor", "virginica"])


def test_csv_with_string_labels_trains_predicts_and_evaluates(tmp_path):
    X, k = _blobs()
    data = _write_csv(tmp_path / "flowers.csv", X, NAMES[k])
    run = tmp_path / "run"
    proc = gpunet_cli("train", "--data", data, "--target", "species", *FAST, "--out", run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(f"wrote {run}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.95 and metrics["n_test"] == 24 and metrics["task"] == "classify"
    net = gn.load(run / "model.npz", device="cpu")
    assert net.classes.tolist() == NAMES.tolist() and list(net.layer_sizes) == [3, 64, 64, 3]
    # the training split: stratified by class, --split-seed 0, test 0.2
    train_idx, _, test_idx = split_indices(120, 0.2, 0.0, 0, strata=NAMES[k])
    assert len(test_idx) == 24 and sorted(np.bincount(k[test_idx])) == sorted(np.round(np.bincount(k) * 0.2))
    Xf = np.loadtxt(data, delimiter=",", skiprows=1, usecols=(0, 1, 2))  # the values as the file holds them
    np.testing.assert_allclose(net.input_mean, Xf[train_idx].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(net.input_scale, Xf[train_idx].std(axis=0), rtol=1e-12)
    assert_png(run / "loss.png")
    assert_png(run / "confusion.png")
    # predict back the original labels, with probabilities
    proc = gpunet_cli("predict", "--model", run, "--data", data, "--out", tmp_path / "preds.csv", "--proba")
    assert proc.returncode == 0, proc.stderr
    header, pred, rows = _predicted_labels(tmp_path / "preds.csv")
    assert header == ["prediction", "p(setosa)", "p(versicolor)", "p(virginica)"]
    assert len(pred) == 120 and np.mean(np.array(pred) == NAMES[k]) >= 0.95
    np.testing.assert_allclose([sum(map(float, r[1:])) for r in rows[1:]], 1.0, atol=1e-5)
    assert pred == net.predict_classes(X).tolist()
    # evaluate prints and writes the metrics
    proc = gpunet_cli("evaluate", "--model", run / "model.npz", "--data", data, "--out", tmp_path / "eval.json")
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["accuracy"] == pytest.approx(net.score(X, NAMES[k])) and ev["n"] == 120
    assert "accuracy" in proc.stdout


def test_npz_regression_and_headerless_tsv(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, (200, 2))
    y = X[:, 0] * 3 - X[:, 1]
    np.savez(tmp_path / "lin.npz", X=X, y=y)
    run = tmp_path / "reg"
    proc = gpunet_cli("train", "--data", tmp_path / "lin.npz", *FAST, "--out", run, "--validation-split", "0.1")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "regress" and metrics["test_r2"] > 0.95
    assert_png(run / "scatter.png")
    proc = gpunet_cli("predict", "--model", run, "--data", tmp_path / "lin.npz")
    assert proc.returncode == 0, proc.stderr
    values = np.array([float(v) for v in proc.stdout.split()[1:]])
    np.testing.assert_allclose(values, gn.load(run / "model.npz", device="cpu").predict(X)[:, 0], rtol=1e-6)
    # integer labels, no header, tab separated: mapped and given back as the original integers
    labels = np.where(X[:, 0] > 0, 7, -3)
    tsv = tmp_path / "t.tsv"
    with open(tsv, "w") as f:
        for row, lab in zip(X, labels):
            f.write(f"{row[0]:.6g}\t{row[1]:.6g}\t{lab}\n")
    proc = gpunet_cli("train", "--data", tsv, *FAST, "--out", tmp_path / "tsv")
    assert proc.returncode == 0, proc.stderr
    net = gn.load(tmp_path / "tsv" / "model.npz", device="cpu")
    assert net.classes.tolist() == [-3, 7]
    assert set(net.predict_classes(X).tolist()) <= {-3, 7} and net.score(X, labels) > 0.9


def test_parquet_string_labels(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    X, k = _blobs(seed=2)
    table = pa.table({"width": X[:, 0], "mass": X[:, 1], "tilt": X[:, 2], "species": NAMES[k].tolist()})
    pq.write_table(table, tmp_path / "f.parquet")
    run = tmp_path / "pq"
    proc = gpunet_cli("train", "--data", tmp_path / "f.parquet", "--target", "species", *FAST, "--out", run)
    assert proc.returncode == 0, proc.stderr
    proc = gpunet_cli("predict", "--model", run, "--data", tmp_path / "f.parquet", "--out", tmp_path / "p.csv")
    assert proc.returncode == 0, proc.stderr
    _, pred, _ = _predicted_labels(tmp_path / "p.csv")
    assert np.mean(np.array(pred) == NAMES[k]) >= 0.95


@pytest.mark.parametrize("content,args,needle", [
    ("a,b,label\n1,2,x\n3,4,y\n", ["--target", "colour"], "no target column 'colour'"),
    ("a,b,label\n1,red,x\n3,blue,y\n", ["--no-encode"], "non-numeric feature column(s) 'b'"),
    ("a,b,c,label\n1,red,,x\n3,blue,1,y\n", ["--no-encode", "--no-impute"],
     "missing values in 'c' (1 missing, first in row 1) (--no-impute; without it they are imputed with the training "
     "median); non-numeric feature column(s) 'b' (--no-encode"),
    ("a,b,label\n1,2,x\n3,4\n", [], "line 3 has 2 fields, expected 3"),
    ("a,b,label\n1,2,x\n3,nan,y\n5,6,x\n", ["--no-impute"], "missing values in 'b' (1 missing, first in row 2)"),
    ("a,b,label\n1,2,x\n3,inf,y\n5,6,x\n", [], "infinite values in 'b'"),
    ("a,a,label\n1,2,x\n3,4,y\n", [], "duplicate column name(s) 'a'"),
    ("a,b,label\n1,2,\n3,4,y\n5,6,x\n", [], "target column 'label' is missing in 1 row(s), first in row 1"),
    ("", [], "is empty"),
    ("a,b,label\n", [], "no data rows"),
])
def test_bad_data_files_are_one_line_errors(tmp_path, content, args, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    proc = gpunet_cli("train", "--data", path, *args, *FAST, "--out", tmp_path / "run")
    assert needle in one_line_error(proc, 2)
    assert not (tmp_path / "run").exists()


def test_no_silent_surprises(tmp_path):
    X, k = _blobs(60)
    data = _write_csv(tmp_path / "d.csv", X, NAMES[k])
    # no --out: a fresh runs/<dataset>-<timestamp>, said in the last line
    proc = gpunet_cli("train", "--data", data, "--epochs", "2", "--device", "cpu", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("d-") and proc.stdout.strip().splitlines()[-1].endswith(f"wrote {os.path.join('runs', run.name)}")
    before = (run / "model.npz").read_bytes()
    # reusing a folder with a run: refused (nothing touched) unless --overwrite
    proc = gpunet_cli("train", "--data", data, "--epochs", "3", "--device", "cpu", "--quiet", "--out", run)
    assert "already holds a run" in one_line_error(proc) and (run / "model.npz").read_bytes() == before
    # a classifier narrower than the number of classes is refused before anything is written
    proc = gpunet_cli("train", "--data", data, "--layers", "3,8,2", "--out", tmp_path / "narrow")
    assert "3 classes" in one_line_error(proc) and not (tmp_path / "narrow").exists()
    # --resume: complete runs say so, flags it cannot apply are refused, --epochs is applied
    proc = gpunet_cli("train", "--resume", run, "--quiet")
    assert proc.returncode == 0 and "already complete (2 epochs)" in proc.stdout
    assert "--lr" in one_line_error(gpunet_cli("train", "--resume", run, "--lr", "0.5", "--epochs", "4"))
    proc = gpunet_cli("train", "--resume", run, "--epochs", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert gn.load(run / "model.npz", device="cpu").epochs_trained == 3
    # a corrupt config.json is named; GPUNET_DEVICE=garbage names the variable and the value
    (run / "config.json").write_text("{not json")
    assert "config.json" in one_line_error(gpunet_cli("train", "--resume", run, "--epochs", "5"))
    env = {**os.environ, "GPUNET_DEVICE": "garbage"}
    import subprocess, sys  # noqa: E401
    from helpers import ROOT
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "gpunet", "train", "--data", str(data), "--out", str(tmp_path / "g")],
                          capture_output=True, text=True, env=env)
    line = one_line_error(proc)
    assert "GPUNET_DEVICE" in line and "garbage" in line and not (tmp_path / "g").exists()
    # --help shows defaults and examples
    help_text = gpunet_cli("train", "--help").stdout
    assert "examples:" in help_text and "gpunet train --data" in help_text and "(default: 3)" not in help_text
    assert "default: per dataset" in help_text and "1000 epochs" in help_text


def test_cli_argument_errors_never_reach_internal_errors(tmp_path):
    data = write_small_mnist(tmp_path / "mnist", n_train=100, n_test=50)
    out = tmp_path / "cmp"
    cases = [
        (["train", "--dataset", "mnist", "--data-dir", data, "--layers", "784,16,12"], "10 classes"),
        (["bench", "--batch-sizes", "0"], "--batch-sizes"),
        (["bench", "--peers", "bogus"], "bogus"),
        (["compare", "--dataset", "sinc", "--vary", "dataset=mnist,sinc", "--out", out], "cannot vary 'dataset'"),
        (["compare", "--dataset", "sinc", "--vary", "lr=0.1,-1", "--out", out], "lr=-1"),
        (["compare", "--dataset", "sinc", "--vary", "loss=mse,cross_entropy", "--out", out], "softmax"),
    ]
    for args, needle in cases:
        line = one_line_error(gpunet_cli(*args))
        assert needle in line and "internal error" not in line, (args, line)
    assert not out.exists()  # the grid is checked before anything is written


def test_mse_on_mnist_one_hot_encodes_and_weight_decay_zero_is_kept(tmp_path):
    data = write_small_mnist(tmp_path / "mnist", n_train=300, n_test=100)
    run = tmp_path / "mse"
    proc = gpunet_cli("train", "--dataset", "mnist", "--data-dir", data, "--layers", "784,16,10", "--loss", "mse",
                      "--optimizer", "adamw", "--weight-decay", "0", "--epochs", "8", "--device", "cpu", "--quiet",
                      "--out", run)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.3 and "test_loss" in metrics  # chance is 0.1
    assert gn.load(run / "model.npz", device="cpu").optimizer.weight_decay == 0.0


def test_seed003_preset_is_one_pass_over_300_batches(tmp_path):
    run = tmp_path / "s3"
    proc = gpunet_cli("train", "--preset", "seed003-sigmoid", "--device", "cpu", "--quiet", "--out", run)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["layers"] == [1, 16, 2] and cfg["optimizer"] == "sgd" and cfg["lr"] == 1.0 and cfg["epochs"] == 1
    assert cfg["output_activation"] == "sigmoid"
    hist = json.loads((run / "history.json").read_text())["history"]
    assert len(hist["loss"]) == 1
    assert_png(run / "fit.png")


# ----------------------------------------------------------------------------- the model-level contract
def test_standardisation_classes_and_sklearn_meanings():
    X, k = _blobs(90)
    labels = NAMES[k]
    net = gn.MLP([3, 16, 3], "relu", "softmax", device="cpu", dtype="float64", seed=0)
    net.input_mean, net.input_scale = X.mean(0), X.std(0)
    net.classes = NAMES.copy()
    Xc = X.copy()
    hist = net.fit(X, labels, epochs=30, batch_size=16, verbose=0, validation_split=0.2, record="batch")
    np.testing.assert_array_equal(X, Xc)  # the caller's array is not standardised in place
    assert len(hist.batch_loss) == 30 * 5 and len(hist.history["val_loss"]) == 30  # 72 train rows / 16
    # validation_split holds out the LAST fraction, as Keras
    ref = gn.MLP([3, 16, 3], "relu", "softmax", device="cpu", dtype="float64", seed=0)
    ref.input_mean, ref.input_scale, ref.classes = net.input_mean, net.input_scale, NAMES.copy()
    h2 = ref.fit(X[:72], labels[:72], epochs=30, batch_size=16, verbose=0, validation_data=(X[72:], labels[72:]))
    assert h2.history["val_loss"] == hist.history["val_loss"]
    # standardisation inside the model equals standardising by hand
    plain = gn.MLP([3, 16, 3], "relu", "softmax", device="cpu", dtype="float64", seed=0)
    plain.set_weights(net.get_weights())
    np.testing.assert_allclose(net.predict(X), plain.predict((X - X.mean(0)) / X.std(0)), rtol=1e-12)
    assert set(net.predict_classes(X).tolist()) <= set(NAMES.tolist())
    assert net.score(X, labels) == pytest.approx(np.mean(net.predict_classes(X) == labels))
    np.testing.assert_allclose(net.predict_proba(X).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="not one of this model's classes"):
        net.evaluate(X[:2], ["setosa", "tulip"])


def test_predict_proba_for_one_sigmoid_unit_and_r2(tmp_path):
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2))
    net = gn.MLP([2, 4, 1], "tanh", "sigmoid", device="cpu", dtype="float64")
    p = net.predict_proba(X)
    assert p.shape == (50, 2)
    np.testing.assert_allclose(p[:, 1], net.predict(X)[:, 0])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    reg = gn.MLP([2, 4, 2], "tanh", "linear", device="cpu", dtype="float64")
    Y = np.column_stack([X[:, 0], X.sum(1)])
    assert reg.score(X, Y) == pytest.approx(r2_score(Y, reg.predict(X)), rel=1e-12)
    with pytest.raises(ValueError, match="predict_proba"):
        reg.predict_proba(X)


def test_model_file_keeps_and_validates_preprocessing(tmp_path):
    import json as _json

    net = gn.MLP([2, 3, 2], "relu", "softmax", device="cpu", dtype="float64")
    net.input_mean, net.input_scale, net.classes = np.array([1.0, -2.0]), np.array([3.0, 0.5]), np.array(["no", "yes"])
    net.save(tmp_path / "m.npz")
    back = gn.load(tmp_path / "m.npz", device="cpu")
    np.testing.assert_array_equal(back.input_mean, net.input_mean)
    np.testing.assert_array_equal(back.input_scale, net.input_scale)
    assert back.classes.tolist() == ["no", "yes"]
    X = np.array([[1.0, 2.0], [0.0, -1.0]])
    np.testing.assert_array_equal(back.predict(X), net.predict(X))
    # a version-1 file (0.1.0) still loads, without preprocessing
    with np.load(tmp_path / "m.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = _json.loads(arrays["meta"].tobytes())
    for bad, needle in ((dict(meta, input_scale=[1.0, 0.0]), "> 0"), (dict(meta, input_mean=[1.0]), "shape"),
                        (dict(meta, classes=["a", 1]), "classes"), (dict(meta, classes=["a", "b", "c"]), "classes"),
                        (dict(meta, input_mean=["x", 1]), "numbers")):
        np.savez(tmp_path / "bad.npz", **{**arrays, "meta": np.frombuffer(_json.dumps(bad).encode(), np.uint8)})
        with pytest.raises(ValueError, match=needle):
            gn.load(tmp_path / "bad.npz", device="cpu")
    old = {k: v for k, v in meta.items() if k not in ("input_mean", "input_scale", "classes")}
    old["format_version"] = 1
    np.savez(tmp_path / "v1.npz", **{**arrays, "meta": np.frombuffer(_json.dumps(old).encode(), np.uint8)})
    v1 = gn.load(tmp_path / "v1.npz", device="cpu")
    assert v1.input_mean is None and v1.classes is None
