"""The bad-input table: every row raises the right error with a message that says what is wrong, and
leaves the model exactly as it was (weights, optimizer, epoch counter)."""
import json
import zipfile

import numpy as np
import pytest

import gpunet as gn
from gpunet import saving

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 4))
LABELS = RNG.integers(0, 3, 20)


def clf():
    return gn.MLP([4, 5, 3], "relu", "softmax", device="cpu", seed=0)


def reg():
    return gn.MLP([4, 5, 1], "tanh", "linear", device="cpu", seed=0)


def with_nan(a, where=(0, 0), value=np.nan):
    a = np.array(a, dtype=float)
    a[where] = value
    return a


# (id, model factory, call, error type, message regex)
FIT_ROWS = [
    ("X NaN", clf, lambda m: m.fit(with_nan(X), LABELS, verbose=0), ValueError, r"X contains NaN or Inf.*\(0, 0\)"),
    ("X Inf", clf, lambda m: m.fit(with_nan(X, (3, 2), np.inf), LABELS, verbose=0), ValueError, r"NaN or Inf.*\(3, 2\)"),
    ("y NaN", reg, lambda m: m.fit(X, with_nan(np.ones(20), 5), verbose=0), ValueError, r"y contains NaN"),
    ("X 3-D", clf, lambda m: m.fit(X.reshape(20, 2, 2), LABELS, verbose=0), ValueError, r"X must be 2-D"),
    ("X 1-D", clf, lambda m: m.fit(X[:, 0], LABELS, verbose=0), ValueError, r"X must be 2-D"),
    ("feature count", clf, lambda m: m.fit(X[:, :3], LABELS, verbose=0), ValueError, r"3 features.*input layer has 4"),
    ("length mismatch", clf, lambda m: m.fit(X, LABELS[:15], verbose=0), ValueError, r"y has 15 samples but X has 20"),
    ("empty", clf, lambda m: m.fit(X[:0], LABELS[:0], verbose=0), ValueError, r"X is empty"),
    ("label too big", clf, lambda m: m.fit(X, np.where(LABELS == 0, 3, LABELS), verbose=0), ValueError, r"labels must be in \[0, 2\]"),
    ("label negative", clf, lambda m: m.fit(X, LABELS - 1, verbose=0), ValueError, r"labels must be in \[0, 2\]"),
    ("label not integer", clf, lambda m: m.fit(X, LABELS + 0.5, verbose=0), ValueError, r"integer class labels"),
    ("one-hot width", clf, lambda m: m.fit(X, np.eye(4)[LABELS], verbose=0), ValueError, r"one-hot rows \(n, 3\)"),
    ("negative one-hot", clf, lambda m: m.fit(X, -np.eye(3)[LABELS], verbose=0), ValueError, r">= 0"),
    ("bce target range", lambda: gn.MLP([4, 2, 1], output_activation="sigmoid", device="cpu"),
     lambda m: m.fit(X, np.full(20, 1.5), verbose=0), ValueError, r"binary_cross_entropy targets must lie in \[0, 1\]"),
    ("regression target shape", reg, lambda m: m.fit(X, np.ones((20, 2)), verbose=0), ValueError, r"shape \(20, 1\)"),
    ("batch_size 0", clf, lambda m: m.fit(X, LABELS, batch_size=0, verbose=0), ValueError, r"batch_size must be >= 1"),
    ("batch_size float", clf, lambda m: m.fit(X, LABELS, batch_size=2.5, verbose=0), TypeError, r"batch_size must be an integer"),
    ("epochs negative", clf, lambda m: m.fit(X, LABELS, epochs=-1, verbose=0), ValueError, r"epochs must be >= 0"),
    ("unknown optimizer", clf, lambda m: m.fit(X, LABELS, optimizer="adamx", verbose=0), ValueError, r"unknown optimizer 'adamx'; choose one of sgd, adam, adamw"),
    ("unknown loss", clf, lambda m: m.fit(X, LABELS, loss="hinge", verbose=0), ValueError, r"unknown loss 'hinge'; choose one of mse, mae, cross_entropy, binary_cross_entropy"),
    ("CE without softmax", reg, lambda m: m.fit(X, np.zeros(20), loss="cross_entropy", verbose=0), ValueError, r"needs output_activation='softmax'"),
    ("validation_data shape", clf, lambda m: m.fit(X, LABELS, validation_data=(X,), verbose=0), ValueError, r"validation_data must be a pair"),
    ("validation_data NaN", clf, lambda m: m.fit(X, LABELS, validation_data=(with_nan(X), LABELS), verbose=0), ValueError, r"validation_data X contains NaN"),
    ("validation labels", clf, lambda m: m.fit(X, LABELS, validation_data=(X, LABELS + 5), verbose=0), ValueError, r"validation_data X targets: class labels"),
    ("X strings", clf, lambda m: m.fit(np.full((20, 4), "a"), LABELS, verbose=0), TypeError, r"X must hold real numbers"),
    ("X complex", clf, lambda m: m.fit(X + 1j, LABELS, verbose=0), TypeError, r"X must hold real numbers"),
    ("X ragged", clf, lambda m: m.fit([[1, 2], [3]], LABELS, verbose=0), TypeError, r"X could not be converted|X must hold real numbers"),
    ("callback not a Callback", clf, lambda m: m.fit(X, LABELS, callbacks=[print], verbose=0), TypeError, r"Callback"),
    ("verbose negative", clf, lambda m: m.fit(X, LABELS, verbose=-1), ValueError, r"verbose must be >= 0"),
    ("predict features", clf, lambda m: m.predict(X[:, :2]), ValueError, r"2 features"),
    ("predict NaN", clf, lambda m: m.predict(with_nan(X)), ValueError, r"NaN"),
    ("predict batch_size", clf, lambda m: m.predict(X, batch_size=0), ValueError, r"batch_size"),
    ("evaluate labels", clf, lambda m: m.evaluate(X, LABELS + 3), ValueError, r"labels must be in"),
    ("evaluate loss name", clf, lambda m: m.evaluate(X, LABELS, loss="xent"), ValueError, r"unknown loss"),
    ("gradients mismatch", clf, lambda m: m.loss_and_gradients(X, LABELS[:3]), ValueError, r"3 samples but X has 20"),
    ("set_weights count", clf, lambda m: m.set_weights(m.get_weights()[:3]), ValueError, r"expected 4 arrays"),
    ("set_weights shape", clf, lambda m: m.set_weights([w.T for w in m.get_weights()]), ValueError, r"W1 must have shape \(4, 5\), got \(5, 4\)"),
    ("set_weights NaN", clf, lambda m: m.set_weights([with_nan(w, (0,) * w.ndim) for w in m.get_weights()]), ValueError, r"W1 contains NaN"),
    ("set_weights dtype", clf, lambda m: m.set_weights([np.full(w.shape, "x") for w in m.get_weights()]), TypeError, r"W1 must hold real numbers"),
    ("set_weights not a list", clf, lambda m: m.set_weights(np.zeros(3)), TypeError, r"list of arrays"),
    ("save to missing dir", clf, lambda m: m.save("/nonexistent/dir/model.npz"), ValueError, r"directory .* does not exist"),
]


@pytest.mark.parametrize("name,factory,call,exc,msg", FIT_ROWS, ids=[r[0] for r in FIT_ROWS])
def test_bad_input_is_rejected_and_nothing_changes(name, factory, call, exc, msg):
    model = factory()
    model.fit(X, LABELS if model.output_activation == "softmax" else np.abs(np.sin(X[:, :1])), epochs=1, verbose=0)
    before = model.get_weights()
    opt, state = model.optimizer, {k: v.copy() for k, v in model.optimizer.state.items()}
    steps, epochs = opt.step_count, model.epochs_trained
    with pytest.raises(exc, match=msg):
        call(model)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer is opt and opt.step_count == steps and model.epochs_trained == epochs
    for k, v in opt.state.items():
        np.testing.assert_array_equal(v, state[k])


CONSTRUCTOR_ROWS = [
    (dict(layers=[784]), ValueError, r"at least an input and an output"),
    (dict(layers=[784, 0, 10]), ValueError, r"integer >= 1"),
    (dict(layers=[784, 2.5, 10]), ValueError, r"integer >= 1"),
    (dict(layers=None), TypeError, r"sequence of layer sizes"),
    (dict(layers=[4, 3], hidden_activation="relux"), ValueError, r"unknown hidden activation 'relux'; choose one of relu, sigmoid, tanh, linear"),
    (dict(layers=[4, 3], output_activation="softmaxx"), ValueError, r"unknown output activation 'softmaxx'"),
    (dict(layers=[4, 3], dtype="int32"), ValueError, r"dtype must be one of float32, float64"),
    (dict(layers=[4, 3], dtype="float16"), ValueError, r"dtype must be one of"),
    (dict(layers=[4, 3], device="tpu"), ValueError, r"unknown device 'tpu'"),
    (dict(layers=[4, 3], seed=-1), ValueError, r"seed must be >= 0"),
    (dict(layers=[4, 3], seed="a"), TypeError, r"seed must be an integer"),
    (dict(layers=[4, 3], init="xavier"), ValueError, r"unknown init 'xavier'; choose one of glorot, he"),
    (dict(layers=[4, 3], dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
    (dict(layers=[4, 3], l2=-0.1), ValueError, r"l2 must be a finite number >= 0"),
    (dict(layers=[4, 3], l1=float("nan")), ValueError, r"l1 must be a finite number >= 0"),
    (dict(layers=[4, 3], l1="big"), TypeError, r"l1 must be a number"),
]


@pytest.mark.parametrize("kwargs,exc,msg", CONSTRUCTOR_ROWS, ids=[str(r[0]) for r in CONSTRUCTOR_ROWS])
def test_bad_constructor_arguments(kwargs, exc, msg):
    layers = kwargs.pop("layers")
    with pytest.raises(exc, match=msg):
        gn.MLP(layers, **{"device": "cpu", **kwargs})


OPTIMIZER_ROWS = [
    (lambda: gn.SGD(lr=-1), r"lr must be a finite number in \(0.0"),
    (lambda: gn.SGD(lr=float("nan")), r"lr must be a finite number"),
    (lambda: gn.SGD(lr=0.1, momentum=1.5), r"momentum must be a finite number in \[0.0, 1.0\)"),
    (lambda: gn.SGD(lr=0.1, nesterov=True), r"nesterov=True needs momentum > 0"),
    (lambda: gn.Adam(betas=(1.0, 0.9)), r"beta1 must be"),
    (lambda: gn.Adam(betas=0.9), r"betas must be a pair"),
    (lambda: gn.Adam(eps=-1e-8), r"eps must be"),
    (lambda: gn.AdamW(weight_decay=-0.1), r"weight_decay must be"),
    (lambda: gn.Adam(lr="fast"), r"lr must be a number"),
    (lambda: gn.EarlyStopping(patience=-1), r"patience and min_delta must be >= 0"),
    (lambda: gn.StepDecay(0), r"step_size must be >= 1"),
    (lambda: gn.EarlyStopping(mode="up"), r"mode must be 'auto', 'min' or 'max'"),
]


@pytest.mark.parametrize("make,msg", OPTIMIZER_ROWS, ids=[r[1][:30] for r in OPTIMIZER_ROWS])
def test_bad_hyper_parameters(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


# ----------------------------------------------------------------------------- files
@pytest.fixture
def saved(tmp_path):
    model = clf()
    model.fit(X, LABELS, epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def rewrite(path, mutate):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["meta"].tobytes())
    mutate(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_saved_files_get_the_usual_permissions(saved):
    import os
    _, path = saved
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_truncated_file_names_the_file(saved):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path}.*not a readable gpunet model file"):
        gn.load(path, device="cpu")


def test_garbage_file(saved):
    _, path = saved
    path.write_bytes(b"definitely not a zip file" * 10)
    with pytest.raises(ValueError, match=str(path)):
        gn.load(path, device="cpu")


def test_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array([{"format": "gpunet.mlp"}], dtype=object), params=np.zeros(3))
    with pytest.raises(ValueError, match=rf"{path}.*(pickle|Object arrays)"):
        gn.load(path, device="cpu")


def test_not_a_gpunet_file(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a gpunet model file"):
        gn.load(path, device="cpu")


def test_format_version_is_checked(saved):
    _, path = saved
    rewrite(path, lambda meta, arrays: meta.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99"):
        gn.load(path, device="cpu")


def test_architecture_must_match_parameters(saved):
    _, path = saved
    rewrite(path, lambda meta, arrays: meta.update(layers=[4, 6, 3]))
    with pytest.raises(ValueError, match=r"architecture \[4, 6, 3\] needs \(51,\) floats"):
        gn.load(path, device="cpu")


def test_non_finite_parameters_in_a_file(saved):
    _, path = saved
    rewrite(path, lambda meta, arrays: arrays["params"].__setitem__(0, np.nan))
    with pytest.raises(ValueError, match="NaN or Inf"):
        gn.load(path, device="cpu")


def test_optimizer_state_shape_is_checked(saved):
    _, path = saved
    rewrite(path, lambda meta, arrays: arrays.__setitem__("opt.exp_avg", np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match="optimizer state"):
        gn.load(path, device="cpu")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such model file"):
        gn.load("/nonexistent/model.npz", device="cpu")


def test_a_crash_while_saving_keeps_the_old_file_and_leaves_no_debris(saved, monkeypatch):
    model, path = saved
    original = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(saving.np, "savez", crash)
    model.fit(X, LABELS, epochs=1, verbose=0)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"]
    monkeypatch.undo()
    assert zipfile.is_zipfile(path) and gn.load(path, device="cpu").epochs_trained == 1


def test_out_of_memory_becomes_a_clear_error_and_rolls_back(monkeypatch):
    model = clf()
    model.fit(X, LABELS, epochs=1, verbose=0)
    before = model.get_weights()
    calls = {"n": 0}
    real = model.optimizer.step  # every training path (fused or not) ends a batch with the optimizer

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("cannot allocate")
        return real(*args, **kwargs)
    monkeypatch.setattr(model.optimizer, "step", flaky)
    with pytest.raises(gn.OutOfMemoryError, match=r"out of memory on cpu .* batch_size=4 .* try a smaller batch_size"):
        model.fit(X, LABELS, epochs=2, batch_size=4, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.epochs_trained == 1


def test_data_that_does_not_fit_on_the_device_is_a_clear_error(monkeypatch):
    model = clf()
    before = model.get_weights()

    def no_room(a):
        raise MemoryError("Unable to allocate")
    monkeypatch.setattr(np, "ascontiguousarray", no_room)
    with pytest.raises(gn.OutOfMemoryError, match=r"not enough memory on cpu for an array of shape \(20, 4\)"):
        model.fit(X, LABELS, epochs=1, verbose=0)
    monkeypatch.undo()
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
