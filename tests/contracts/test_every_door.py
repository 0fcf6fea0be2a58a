"""The same bad input through every door that takes it: MLP, MLPStack, the CLI. Each class of mistake is
refused at one choke point (``MLP.upload``, ``gpunet.checks``, the callbacks' constructors, the CLI's grid and
``--out`` checks), before anything changes."""
import sys

import numpy as np
import pytest

import gpunet as gn
from gpunet import cli

X = np.linspace(-1, 1, 40).reshape(-1, 1)
Y = np.sin(3 * X)


def _trained_mlp():
    net = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=0)
    net.fit(X, Y, epochs=2, batch_size=8, optimizer=gn.Adam(lr=1e-2), verbose=0)
    return net


def _same(net, weights, opt, epochs):
    assert net.optimizer is opt and net.epochs_trained == epochs
    for a, b in zip(net.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("door", ["fit", "evaluate", "loss_and_gradients", "score"])
def test_missing_targets_are_refused_by_every_mlp_door_and_change_nothing(door):
    net = _trained_mlp()
    before, opt = net.get_weights(), net.optimizer
    with pytest.raises((ValueError, TypeError), match="required|None"):
        getattr(net, door)(X, None)
    _same(net, before, opt, 2)


def test_missing_targets_are_refused_by_the_stack_and_change_nothing():
    stack = gn.MLPStack([1, 8, 1], "tanh", seeds=[0, 1], dtype="float64")
    before = np.array(stack.params)
    with pytest.raises(ValueError, match="y is required"):
        stack.fit(X, None, epochs=1)
    np.testing.assert_array_equal(stack.params, before)
    assert stack.optimizer is None and stack.epochs_trained == 0


@pytest.mark.parametrize("door", ["stack.fit", "stack.predict"])
def test_sparse_input_is_refused_by_the_stack_with_a_message_that_says_sparse(door):
    sparse = pytest.importorskip("scipy.sparse")
    Xs = sparse.csr_matrix(X)
    obj = gn.MLPStack([1, 8, 1], "tanh", seeds=[0, 1])
    args = (Xs,) if door.endswith("predict") else (Xs, Y)
    with pytest.raises(TypeError, match="sparse matrix.*toarray"):
        getattr(obj, door.split(".")[1])(*args)


@pytest.mark.parametrize("door", ["fit", "predict", "evaluate", "loss_and_gradients", "score"])
def test_sparse_input_gives_every_mlp_door_the_dense_answer(door, monkeypatch):
    """MLP keeps sparse X compressed and densifies it a batch at a time: every door answers as with X dense
    (the per-layer primitives on both sides, so bit for bit)."""
    sparse = pytest.importorskip("scipy.sparse")
    from gpunet.ops import numpy_ops
    monkeypatch.setattr(numpy_ops.NumpyOps, "fused_step", lambda self, *args: None)
    Xz = np.where(np.abs(X) < 0.5, 0.0, X)
    answers = []
    for data in (Xz, sparse.csr_matrix(Xz)):
        net = _trained_mlp()
        args = (data,) if door == "predict" else (data, Y)
        kwargs = dict(epochs=2, batch_size=8, verbose=0) if door == "fit" else {}
        out = getattr(net, door)(*args, **kwargs)
        answers.append((out.history["loss"], net.get_weights()) if door == "fit" else out)
    a, b = answers
    if door == "fit":
        assert a[0] == b[0]
        for u, v in zip(a[1], b[1]):
            np.testing.assert_array_equal(u, v)
    elif door == "loss_and_gradients":
        assert a[0] == b[0] and all(np.array_equal(u, v) for u, v in zip(a[1], b[1]))
    else:
        np.testing.assert_array_equal(np.asarray(a if not isinstance(a, dict) else list(a.values())),
                                      np.asarray(b if not isinstance(b, dict) else list(b.values())))


def test_models_handed_out_by_a_stack_are_never_rewritten_by_it():
    stack = gn.MLPStack([1, 8, 1], "tanh", seeds=[0, 1], dtype="float64")
    stack.fit(X, Y, epochs=1, batch_size=8, optimizer=gn.Adam(lr=1e-2))
    mine = stack.models()[0]
    mine.fit(X, Y, epochs=3, batch_size=8, verbose=0)  # trained alone: 4 epochs, its own optimizer
    weights, opt = mine.get_weights(), mine.optimizer
    stack.models()
    stack.predict(X)
    stack.fit(X, Y, epochs=1, batch_size=8)
    stack.models()
    _same(mine, weights, opt, 4)
    assert opt.step_count == 4 * 5


def test_a_scalar_stack_learning_rate_is_a_clear_error():
    with pytest.raises(TypeError, match="one learning rate per model"):
        gn.MLPStack([1, 8, 1], seeds=[0, 1], lr=0.1)


@pytest.mark.parametrize("make, match", [
    (lambda: gn.ModelCheckpoint(None), "file path"),
    (lambda: gn.CosineDecay("10"), "epochs must be an integer"),
    (lambda: gn.StepDecay(2, gamma="x"), "gamma must be a number"),
])
def test_callbacks_refuse_bad_arguments_when_built(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_a_bad_dtype_argument_to_load_is_the_callers_error_not_the_files(tmp_path):
    net = _trained_mlp()
    net.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="dtype must be one of") as err:
        gn.load(tmp_path / "m.npz", dtype="float16")
    assert "m.npz" not in str(err.value)


@pytest.mark.parametrize("names", [[["exp_avg"]], ["exp_avg", "exp_avg"], ["../../etc"]])
def test_crafted_optimizer_state_names_are_refused(tmp_path, names):
    import json
    import zipfile

    net = _trained_mlp()
    path = tmp_path / "m.npz"
    net.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["optimizer"]["state"] = names
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert zipfile.is_zipfile(bad)
    with pytest.raises(ValueError, match="optimizer.state"):
        gn.load(bad)


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_out_that_is_a_file_is_exit_2_with_one_line(tmp_path, capsys, command):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    argv = ["compare", "--dataset", "sincos", "--epochs", "1", "--vary", "lr=0.01,0.02", "--seeds", "1",
            "--out", str(target)] if command == "compare" else ["bench", "--quick", "--out", str(target)]
    code, err = _cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and "not a folder" in err[0], err
    assert target.read_text() == "keep me"


def test_compare_checks_the_whole_grid_before_it_trains_or_writes(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, err = _cli(capsys, "compare", "--dataset", "sincos", "--epochs", "1", "--seeds", "1",
                     "--vary", "batch_size=20,0", "--out", str(out))
    assert code == 2 and len(err) == 1 and "batch_size" in err[0], err
    assert not out.exists()


def test_a_missing_optional_extra_is_an_install_hint_with_exit_2(tmp_path, capsys, monkeypatch):
    from gpunet import _optional

    net = _trained_mlp()
    net.save(tmp_path / "m.npz")
    real = _optional.importlib.import_module

    def no_onnx(name, *a):
        if name.partition(".")[0] == "onnx":
            raise ImportError(f"No module named {name!r}")
        return real(name, *a)
    monkeypatch.setattr(_optional.importlib, "import_module", no_onnx)
    code, err = _cli(capsys, "export", "--model", str(tmp_path / "m.npz"), "--onnx", str(tmp_path / "m.onnx"))
    assert code == 2 and len(err) == 1 and "pip install 'gpunet[onnx]'" in err[0], err
    assert not (tmp_path / "m.onnx").exists()


def _adam_state(opt):
    return opt.step_count, {k: np.array(v) for k, v in opt.state.items()}


def _assert_same_state(got, want):
    assert got[0] == want[0] and sorted(got[1]) == sorted(want[1])
    for k, v in want[1].items():
        np.testing.assert_array_equal(got[1][k], v)


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
@pytest.mark.parametrize("door", ["mlp.fit", "stack.fit", "classifier.fit", "regressor.fit"])
def test_an_optimizer_that_trained_one_model_never_changes_it_through_another_door(door):
    """One instance passed to a second model (or stack, or estimator) after it trained model a: the second
    trains with its own copy (same hyper-parameters, fresh state) and model a keeps the instance and its
    state, so continuing a (optimizer=None or the instance again) equals a model that never shared it."""
    from gpunet.sklearn import MLPClassifier, MLPRegressor

    opt = gn.Adam(lr=1e-2)
    a = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=0)
    a.fit(X, Y, epochs=2, batch_size=8, optimizer=opt, verbose=0)
    kept = _adam_state(opt)
    if door == "mlp.fit":
        b = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=1)
        b.fit(X, Y, epochs=1, batch_size=8, optimizer=opt, verbose=0)
        assert b.optimizer is not opt and type(b.optimizer) is gn.Adam and b.optimizer.get_config() == opt.get_config()
        opt.lr = 5e-3
        b.fit(X, Y, epochs=1, batch_size=8, optimizer=opt, verbose=0)  # the instance again: b's own copy goes on,
        assert b.optimizer.lr == 5e-3                                   # at the instance's learning rate now
        opt.lr = 1e-2
        ref_b = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=1)
        ref_opt = gn.Adam(lr=1e-2)
        ref_b.fit(X, Y, epochs=1, batch_size=8, optimizer=ref_opt, verbose=0)
        ref_opt.lr = 5e-3
        ref_b.fit(X, Y, epochs=1, batch_size=8, optimizer=ref_opt, verbose=0)
        _assert_same_state(_adam_state(b.optimizer), _adam_state(ref_b.optimizer))
        for u, v in zip(b.get_weights(), ref_b.get_weights()):
            np.testing.assert_array_equal(u, v)
    elif door == "stack.fit":
        gn.MLPStack([1, 8, 1], "tanh", seeds=[0, 1], dtype="float64").fit(X, Y, epochs=1, batch_size=8, optimizer=opt)
    else:
        est = (MLPClassifier if door == "classifier.fit" else MLPRegressor)(
            hidden_layer_sizes=(4,), max_iter=2, optimizer=opt, random_state=0)
        est.fit(X, (Y[:, 0] > 0).astype(int) if door == "classifier.fit" else Y[:, 0])
    assert a.optimizer is opt
    _assert_same_state(_adam_state(opt), kept)
    a.fit(X, Y, epochs=1, batch_size=8, verbose=0)  # continue with its optimizer
    a.fit(X, Y, epochs=1, batch_size=8, optimizer=opt, verbose=0)  # and with the instance again
    ref = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=0)
    ref.fit(X, Y, epochs=4, batch_size=8, optimizer=gn.Adam(lr=1e-2), verbose=0)
    _assert_same_state(_adam_state(opt), _adam_state(ref.optimizer))
    for u, v in zip(a.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_an_optimizer_whose_model_is_gone_starts_fresh_on_the_next():
    """The model that trained an instance was garbage-collected: the next model gets fresh state, not
    the moments and step count of a model that no longer exists (equal buffer sizes included)."""
    import gc

    opt = gn.Adam(lr=1e-2)
    gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=0).fit(X, Y, epochs=2, batch_size=8, optimizer=opt, verbose=0)
    gc.collect()
    b = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=1)
    b.fit(X, Y, epochs=1, batch_size=8, optimizer=opt, verbose=0)
    ref = gn.MLP([1, 8, 1], "tanh", dtype="float64", seed=1)
    ref.fit(X, Y, epochs=1, batch_size=8, optimizer=gn.Adam(lr=1e-2), verbose=0)
    assert opt.step_count == 5
    for u, v in zip(b.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("how", [
    "measured",
    "schedule",
    "one seed",
    "GPUNET_STACK=0",
    "GPUNET_STACK=1",
    "folds GPUNET_STACK=0",
    "folds GPUNET_STACK=1",
])
def test_no_timed_compare_run_includes_the_first_compilation(capsys, monkeypatch, tmp_path, how):
    """Every fit whose time compare reports (one per seed, on the whole training split) starts after the fused
    CPU step was compiled: a warm-up (the stacked-or-sequential measurement, or a short fit) ran first, so the
    first row is timed like the others."""
    from gpunet import backend
    from gpunet.ops import get_ops

    ops = get_ops(backend.resolve("cpu"))
    if ops._mlp_step is None:
        pytest.skip("Numba not installed: no fused step to compile")
    monkeypatch.setattr(ops, "_compiled", set())  # as in a new process: the first fused call compiles
    calls = []

    def recording(cls):
        real = cls.fit

        def fit(self, X, y, *args, **kwargs):  # the stack's fused step compiles at its first call too
            rows = len(X[0]) if isinstance(X, list) else len(X)  # (a list: one training part per model, --folds)
            calls.append((rows, bool(ops._compiled)))
            return real(self, X, y, *args, **kwargs)
        monkeypatch.setattr(cls, "fit", fit)
    recording(gn.MLP)
    recording(gn.MLPStack)
    monkeypatch.delenv("GPUNET_STACK", raising=False)
    argv = ["compare", "--dataset", "sincos", "--epochs", "1", "--batch-size", "8", "--device", "cpu",
            "--seeds", "1" if how == "one seed" else "2", "--vary", "lr=0.01,0.02", "--out", str(tmp_path / "c")]
    if how == "schedule":
        argv += ["--schedule", "cosine"]
    if "GPUNET_STACK=" in how:
        monkeypatch.setenv("GPUNET_STACK", how[-1])
    if how.startswith("folds"):
        argv += ["--folds", "3"]
    code, err = _cli(capsys, *argv)
    assert code == 0, err
    n = max(rows for rows, _ in calls)  # the training split: the per-seed fits; warm-ups take fewer rows
    timed = [compiled for rows, compiled in calls if rows == n]
    assert len(timed) >= 2 and all(timed), calls


def _parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": X[:, 0], "y": Y[:, 0]}), path)
    return path


@pytest.mark.parametrize("door, missing, extra", [
    ("MLP.to_onnx", "onnx", "onnx"),
    ("dist.init", "mpi4py", "distributed"),
    ("gpunet train --distributed", "mpi4py", "distributed"),
    ("gpunet train --data FILE.parquet", "pyarrow", "tables"),
    ("gn.MLP(device='cuda')", "cupy", "cuda12"),
    ("gpunet train --device cuda", "cupy", "cuda12"),
])
def test_every_door_names_the_extra_a_missing_package_needs(tmp_path, capsys, monkeypatch, door, missing, extra):
    """An optional package that is not installed: the Python doors raise an ImportError (or, for a device,
    DeviceUnavailableError) whose message is the install command; the CLI doors print it as one line and exit 2
    (a usage problem, not an internal error), before anything is written."""
    from gpunet import backend
    import gpunet.distributed as dist

    data = _parquet(tmp_path) if missing == "pyarrow" else None
    for name in list(sys.modules):
        if name == missing or name.startswith(missing + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import of it raises ImportError, as when not installed
    backend.cuda_status.cache_clear()
    monkeypatch.setattr(backend, "_announced", set())
    hint = f"pip install 'gpunet[{extra}]'"
    out = tmp_path / "run"
    try:
        if door.startswith("gpunet "):
            argv = ["train", "--dataset", "sincos", "--epochs", "1", "-q", "--out", str(out)]
            argv += {"--distributed": ["--distributed"], "--data FILE.parquet": ["--data", str(data), "--target", "y"],
                     "--device cuda": ["--device", "cuda"]}[door.split(" ", 2)[2]]
            if data is not None:
                argv = [a for a in argv if a not in ("--dataset", "sincos")]
            code, err = _cli(capsys, *argv)
            assert code == 2 and len(err) == 1 and hint in err[0] and "internal error" not in err[0], err
            assert not out.exists()
        else:
            with pytest.raises((ImportError, gn.DeviceUnavailableError)) as info:
                if door == "MLP.to_onnx":
                    _trained_mlp().to_onnx(tmp_path / "m.onnx")
                elif door == "dist.init":
                    dist.init()
                else:
                    gn.MLP([1, 8, 1], device="cuda")
            assert hint in str(info.value)
            assert not (tmp_path / "m.onnx").exists()
    finally:
        backend.cuda_status.cache_clear()


@pytest.mark.parametrize("door", ["predict", "evaluate", "export", "train --resume"])
def test_a_crafted_model_file_is_refused_by_every_cli_door_that_reads_one(tmp_path, capsys, door):
    """A model file whose optimizer-state names are a list (crafted): every command that reads a model
    prints one line naming the member and exits 2, writing nothing."""
    import json

    run = tmp_path / "run"
    assert _cli(capsys, "train", "--dataset", "sincos", "--epochs", "1", "-q", "--out", str(run))[0] == 0
    bad = run / "checkpoint.npz"
    with np.load(bad) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["optimizer"]["state"] = [["exp_avg"]]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(bad, "wb") as f:
        np.savez(f, **arrays)
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(X[:, 0], Y[:, 0])))
    argv = {"predict": ["predict", "--model", str(bad), "--data", str(data), "--out", str(tmp_path / "p.csv")],
            "evaluate": ["evaluate", "--model", str(bad), "--data", str(data), "--target", "y",
                         "--out", str(tmp_path / "e.json")],
            "export": ["export", "--model", str(bad), "--onnx", str(tmp_path / "m.onnx")],
            "train --resume": ["train", "--resume", str(run), "--epochs", "5", "-q"]}[door]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    code, err = _cli(capsys, *argv)
    assert code == 2 and len(err) == 1 and "optimizer.state" in err[0], err
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
@pytest.mark.parametrize("call", ["fit", "partial_fit", "score"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_the_estimators_refuse_missing_targets_and_answer_sparse_input_as_dense(kind, call):
    """The estimators' doors for the two round-one mistakes: y=None is refused naming y, and changes nothing;
    a sparse matrix is taken (scikit-learn's estimators take CSR/CSC) and answered as its dense copy."""
    sparse = pytest.importorskip("scipy.sparse")
    from gpunet.sklearn import MLPClassifier, MLPRegressor

    y = (Y[:, 0] > 0).astype(int) if kind == "classifier" else Y[:, 0]
    est = (MLPClassifier if kind == "classifier" else MLPRegressor)(hidden_layer_sizes=(4,), max_iter=2,
                                                                    random_state=0)
    est.fit(X, y)
    before, steps = est.model_.get_weights(), est.model_.optimizer.step_count
    extra = {"classes": [0, 1]} if call == "partial_fit" and kind == "classifier" else {}
    with pytest.raises((ValueError, TypeError), match="y|y_true"):
        getattr(est, call)(X, None, **extra)
    for a, b in zip(est.model_.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert est.model_.optimizer.step_count == steps
    np.testing.assert_array_equal(est.predict(sparse.csr_matrix(X)), est.predict(X))
    if call == "score":
        assert est.score(sparse.csr_matrix(X), y) == est.score(X, y)
    else:
        twin = (MLPClassifier if kind == "classifier" else MLPRegressor)(hidden_layer_sizes=(4,), max_iter=2,
                                                                         random_state=0)
        getattr(twin.fit(X, y), call)(sparse.csr_matrix(X), y, **extra)
        getattr(est, call)(X, y, **extra)
        np.testing.assert_allclose(twin.predict(X), est.predict(X), rtol=1e-9, atol=1e-12)
