"""MLPStack: K models trained together equal each model trained alone (float64 rounding)."""
import numpy as np
import pytest
from helpers import strict_backend

import gpunet as gn
from gpunet.errors import DivergenceError


def _data(rng, n=203):
    X = rng.uniform(-3, 3, (n, 2))
    return X, np.sin(X[:, :1]) * np.cos(X[:, 1:])


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


@pytest.mark.parametrize("kw, make_opt", [
    ({}, lambda lr: gn.SGD(lr=lr, momentum=0.9)),
    ({"l2": 1e-3, "l1": 1e-4}, lambda lr: gn.Adam(lr=lr)),
    ({"dropout": 0.2}, lambda lr: gn.AdamW(lr=lr, weight_decay=1e-2)),
])
def test_each_model_equals_training_alone(kw, make_opt):
    X, y = _data(np.random.default_rng(0))
    seeds, lrs = [0, 5, 9], [0.01, 0.02, 0.005]
    stack = gn.MLPStack([2, 16, 16, 1], "tanh", seeds=seeds, lr=lrs, dtype="float64", **kw)
    hists = stack.fit(X, y, epochs=3, batch_size=20, optimizer=make_opt(0.01))
    for k, (seed, lr) in enumerate(zip(seeds, lrs)):
        alone = gn.MLP([2, 16, 16, 1], "tanh", seed=seed, dtype="float64", **kw)
        h = alone.fit(X, y, epochs=3, batch_size=20, optimizer=make_opt(lr), verbose=0)
        model = stack.models()[k]
        assert _max_diff(alone, model) < 1e-12
        np.testing.assert_allclose(hists[k].history["loss"], h.history["loss"], rtol=1e-12)
        assert model.epochs_trained == 3 and model.optimizer.lr == lr
        assert model.optimizer.step_count == alone.optimizer.step_count


def test_classification_and_resume_match():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    stack = gn.MLPStack([4, 8, 3], "relu", "softmax", seeds=[3, 4], dtype="float64")
    stack.fit(X, y, epochs=1, batch_size=16, optimizer=gn.Adam(lr=0.02))
    stack.fit(X, y, epochs=1, batch_size=16)  # continues the stacked optimizer
    for k, seed in enumerate([3, 4]):
        alone = gn.MLP([4, 8, 3], "relu", "softmax", seed=seed, dtype="float64")
        alone.fit(X, y, epochs=1, batch_size=16, optimizer=gn.Adam(lr=0.02), verbose=0)
        h = alone.fit(X, y, epochs=1, batch_size=16, verbose=0)
        assert _max_diff(alone, stack.models()[k]) < 1e-12
        assert stack.histories[k].history["accuracy"][-1] == pytest.approx(h.history["accuracy"][-1], abs=1e-12)
    # a model taken out of the stack continues alone exactly like one that never was in it
    out = stack.models()[0]
    out.fit(X, y, epochs=1, batch_size=16, verbose=0)
    alone = gn.MLP([4, 8, 3], "relu", "softmax", seed=3, dtype="float64")
    alone.fit(X, y, epochs=1, batch_size=16, optimizer=gn.Adam(lr=0.02), verbose=0)
    alone.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert _max_diff(alone, out) < 1e-12


def test_divergence_rolls_back_every_model_and_names_the_seed():
    X, y = _data(np.random.default_rng(2))
    stack = gn.MLPStack([2, 8, 1], "relu", seeds=[0, 1], lr=[1e-3, 1e300], dtype="float64")
    before = stack.params.copy()
    with pytest.raises(DivergenceError, match=r"seeds \[1\]"):
        stack.fit(X, y, epochs=1, batch_size=50, optimizer=gn.SGD())
    np.testing.assert_array_equal(stack.params, before)
    assert stack.epochs_trained == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"seeds": []}, "at least one"),
    ({"seeds": [0, -1]}, "seed"),
    ({"seeds": [0, 1], "lr": [0.1]}, "one per model"),
    ({"seeds": [0, 1], "lr": [0.1, -1]}, "lr"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        gn.MLPStack([2, 4, 1], **kwargs)


def test_strict_namespace_matches_numpy():
    """The stack is written against the Array API: on array_api_strict (copies, not views, on reshape)
    it gives NumPy's numbers."""
    pytest.importorskip("array_api_strict")

    X, y = _data(np.random.default_rng(3), n=60)
    ref = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64")
    ref.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=0.01))
    strict = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64", device=strict_backend())
    strict.fit(X, y, epochs=2, batch_size=16, optimizer=gn.Adam(lr=0.01))
    for a, b in zip(ref.models(), strict.models()):
        assert _max_diff(a, b) < 1e-12


def test_compare_trains_seeds_together_with_the_same_results(tmp_path):
    """`gpunet compare` stacks the seeds of a configuration when nothing needs per-model callbacks; the
    per-seed results equal the sequential runs (which --record batch forces)."""
    import json
    import os
    import subprocess
    import sys

    def compare(out, *extra):
        cmd = [sys.executable, "-m", "gpunet", "compare", "--dataset", "sincos", "--epochs", "3", "--seeds", "3",
               "--dtype", "float64", "--vary", "hidden_activation=tanh,relu", "--out", str(tmp_path / out), *extra]
        env = dict(os.environ, GPUNET_STACK="1")  # the equality below needs the stacked path whatever it measures
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / out / "compare.json").read_text())["results"], proc.stdout

    stacked, text = compare("a")
    sequential, _ = compare("b", "--record", "batch")
    assert all(r["stacked"] for r in stacked) and not any(r["stacked"] for r in sequential)
    assert "3 seed(s) trained together as one MLPStack (forced by $GPUNET_STACK=1)" in text
    for a, b in zip(stacked, sequential):
        np.testing.assert_allclose([r["loss"] for r in a["runs"]], [r["loss"] for r in b["runs"]], rtol=1e-9)


def test_compare_chooses_stacked_or_sequential_by_a_measurement_and_says_so(tmp_path, capsys, monkeypatch):
    """Without $GPUNET_STACK, compare times one epoch both ways and trains the faster way, printing both
    timings; compare.json's ``stacked`` is the printed choice."""
    import json
    import re

    from gpunet import cli

    monkeypatch.delenv("GPUNET_STACK", raising=False)
    code = cli.main(["compare", "--dataset", "sincos", "--epochs", "1", "--seeds", "2", "--vary", "lr=0.01,0.02",
                     "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0
    lines = re.findall(r"2 seed\(s\) trained (together as one MLPStack|one after the other) \(measured over \d+ "
                       r"rows: ([\d.]+) ms per epoch stacked, ([\d.]+) ms for 2 sequential models\)", out)
    assert len(lines) == 2, out
    results = json.loads((tmp_path / "c" / "compare.json").read_text())["results"]
    for (how, stacked_ms, sequential_ms), row in zip(lines, results):
        assert row["stacked"] == (how == "together as one MLPStack") == (float(stacked_ms) < float(sequential_ms))



# ---------------------------------------------------------------- each model on its own data (k-fold)
def _folds_data():
    rng = np.random.default_rng(11)
    Xs = [rng.normal(loc=k, size=(70, 3)) for k in range(3)]  # three "folds": their own rows and scales
    ys = [(x[:, 0] > k).astype(int) + (x[:, 1] > k + 0.5) for k, x in enumerate(Xs)]
    vs = [(x[:20] + 0.1, y[:20]) for x, y in zip(Xs, ys)]
    return Xs, ys, vs


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "batched"])
@pytest.mark.parametrize("make_opt", [lambda: gn.Adam(lr=0.01), lambda: gn.SGD(lr=0.05, momentum=0.9)])
def test_each_model_on_its_own_data_and_standardisation_equals_training_alone(fused, make_opt, monkeypatch):
    """k-fold cross-validation as one stack: model k trains on its own fold's rows with its own fold's
    standardisation and is validated on its own fold after every epoch; the weights, optimizer state and every
    history entry (val_loss, val_accuracy included) are those of ``MLP(seed=s).fit(X_f, y_f, validation_data=...)``,
    and ``predict`` standardises for each model as that model alone does."""
    if fused:
        _fused_stack_or_skip()
    else:
        monkeypatch.setenv("GPUNET_FUSED", "0")
    Xs, ys, vs = _folds_data()
    fold, seeds = [0, 0, 1, 1, 2, 2], [5, 6, 5, 6, 5, 6]
    stack = gn.MLPStack([3, 8, 3], "tanh", "softmax", seeds=seeds, dtype="float64")
    for f in range(3):
        stack.set_preprocessing(Xs[f].mean(0), Xs[f].std(0), None, models=[k for k in range(6) if fold[k] == f])
    hists = stack.fit([Xs[f] for f in fold], [ys[f] for f in fold], epochs=3, batch_size=16, optimizer=make_opt(),
                      validation_data=[vs[f] for f in fold])
    st = stack.fast_paths["fused_stack_step"]
    assert st["live"] == fused and st["epochs"] == (3 if fused else 0)
    P = stack.predict(vs[2][0])
    for k, (f, seed) in enumerate(zip(fold, seeds)):
        alone = gn.MLP([3, 8, 3], "tanh", "softmax", seed=seed, dtype="float64")
        alone.input_mean, alone.input_scale = Xs[f].mean(0), Xs[f].std(0)
        h = alone.fit(Xs[f], ys[f], epochs=3, batch_size=16, optimizer=make_opt(), validation_data=vs[f], verbose=0)
        model = stack.models()[k]
        assert _max_diff(alone, model) < 1e-12
        np.testing.assert_array_equal(model.input_mean, alone.input_mean)
        assert list(hists[k].history) == list(h.history) == ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]
        for key in h.history:
            np.testing.assert_allclose(hists[k].history[key], h.history[key], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(P[k], alone.predict(vs[2][0]), rtol=1e-12, atol=1e-15)


def test_shared_validation_data_is_logged_for_every_model():
    X, y = _data(np.random.default_rng(3))
    stack = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64")
    hists = stack.fit(X, y, epochs=2, batch_size=32, validation_data=(X[:50], y[:50]))
    for k, seed in enumerate([0, 1]):
        alone = gn.MLP([2, 6, 1], "tanh", seed=seed, dtype="float64")
        h = alone.fit(X, y, epochs=2, batch_size=32, validation_data=(X[:50], y[:50]), verbose=0)
        np.testing.assert_allclose(hists[k].history["val_loss"], h.history["val_loss"], rtol=1e-12)



def test_per_model_data_on_the_strict_namespace_matches_numpy():
    """The per-model blocks (concatenated on the device, offset batch indices, per-standardisation predict) are
    written against the Array API: array_api_strict gives NumPy's numbers."""
    rng = np.random.default_rng(0)
    Xs = [rng.normal(size=(40, 2)) for _ in range(2)]
    ys = [x[:, :1] * 2 for x in Xs]
    out = []
    for device in (strict_backend(), "cpu"):
        stack = gn.MLPStack([2, 5, 1], "tanh", seeds=[0, 1], dtype="float64", device=device)
        stack.set_preprocessing(Xs[1].mean(0), Xs[1].std(0), None, models=[1])
        h = stack.fit(Xs, ys, epochs=2, batch_size=8, validation_data=[(Xs[0], ys[0]), (Xs[1], ys[1])])
        out.append((stack.models(), h, stack.predict(Xs[0])))
    (strict, hs, ps), (ref, hr, pr) = out
    for a, b in zip(strict, ref):
        assert _max_diff(a, b) < 1e-12
    for a, b in zip(hs, hr):
        np.testing.assert_allclose(a.history["val_loss"], b.history["val_loss"], rtol=1e-12)
    np.testing.assert_allclose(ps, pr, rtol=1e-12, atol=1e-15)

@pytest.mark.parametrize("args, match", [
    (lambda Xs, ys, vs: ([Xs[0], Xs[1][:60], Xs[2]], [ys[0], ys[1][:60], ys[2]], None), r"\[60, 70\] rows.*same number of training rows"),
    (lambda Xs, ys, vs: (Xs[:2], ys[:2], None), "list of 2 arrays for a stack of 3 models"),
    (lambda Xs, ys, vs: (Xs, ys[0], None), "y must be a list of 3 target arrays"),
    (lambda Xs, ys, vs: (Xs, [ys[0], None, ys[2]], None), "no targets for model 1"),
    (lambda Xs, ys, vs: (Xs, ys, vs[:2]), "validation_data has 2 items for a stack of 3 models"),
    (lambda Xs, ys, vs: (Xs, ys, [vs[0], vs[1], (vs[2][0][:, :2], vs[2][1])]), "validation_data X\\[2\\]"),
    (lambda Xs, ys, vs: ([Xs[0], Xs[1], Xs[2][:, :2]], ys, None), "X\\[2\\]"),
    (lambda Xs, ys, vs: (Xs, ys, [vs[0], None, vs[2]]), "validation_data\\[1\\] must be a pair"),
    (lambda Xs, ys, vs: ([Xs[0], Xs[1][:, 0], Xs[2]], ys, None), "X\\[1\\] is not 2-D"),
    (lambda Xs, ys, vs: (Xs[0], ys, None), "y is a list of 3 arrays .* but X is one array"),
])
def test_bad_per_model_data_is_refused_before_anything_changes(args, match):
    Xs, ys, vs = _folds_data()
    stack = gn.MLPStack([3, 8, 3], "tanh", "softmax", seeds=[0, 1, 2], dtype="float64")
    before = stack.params.copy()
    X, y, val = args(Xs, ys, vs)
    with pytest.raises(ValueError, match=match):
        stack.fit(X, y, epochs=1, validation_data=val)
    np.testing.assert_array_equal(stack.params, before)
    assert stack.epochs_trained == 0 and stack.optimizer is None
    with pytest.raises(ValueError, match="indices below 3"):
        stack.set_preprocessing(None, None, None, models=[3])
    with pytest.raises(TypeError, match="sequence of model indices"):
        stack.set_preprocessing(None, None, None, models=1)


def test_models_with_different_classes_are_refused_and_each_fit_starts_a_fresh_history():
    Xs, ys, _ = _folds_data()
    stack = gn.MLPStack([3, 8, 3], "tanh", "softmax", seeds=[0, 1, 2], dtype="float64")
    stack.set_preprocessing(None, None, np.array(["a", "b", "c"]), models=[0, 1])
    with pytest.raises(ValueError, match="model 2's classes differ"):
        stack.fit(Xs, [np.array(["a", "b", "c"])[y] for y in ys], epochs=1)
    assert stack.epochs_trained == 0
    stack.set_preprocessing(None, None, None)
    first = stack.fit(Xs, ys, epochs=2, batch_size=16)
    second = stack.fit(Xs, ys, epochs=1, batch_size=16)  # as MLP.fit: the History of this fit alone
    assert [len(h.history["loss"]) for h in first + second] == [2, 2, 2, 1, 1, 1]
    assert len(stack.models()[0].history.history["loss"]) == 1

# ---------------------------------------------------------------- the fused stacked CPU step
def numba_threads():
    import numba

    return numba.get_num_threads()


def _fused_stack_or_skip():
    from gpunet import backend
    from gpunet.ops import get_ops

    ops = get_ops(backend.resolve("cpu"))
    if ops._stack_epoch is None:
        pytest.skip("Numba not installed: no fused stacked step")
    return ops


_OPTIMIZERS = [
    lambda lr: gn.SGD(lr=lr),
    lambda lr: gn.SGD(lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda lr: gn.SGD(lr=lr, momentum=0.8, dampening=0.1),
    lambda lr: gn.Adam(lr=lr),
    lambda lr: gn.Adam(lr=lr, amsgrad=True, weight_decay=1e-3),
    lambda lr: gn.AdamW(lr=lr, weight_decay=1e-2),
]
_NETS = [  # (layers, hidden, output activation, loss, classification)
    ([2, 16, 16, 1], "tanh", "linear", "mse", False),
    ([2, 12, 1], "relu", "linear", "mae", False),
    ([2, 8, 8, 3], "sigmoid", "softmax", "cross_entropy", True),
    ([2, 10, 2], "relu", "sigmoid", "binary_cross_entropy", False),
]


def _targets(X, loss):
    if loss == "cross_entropy":
        return (X[:, 0] > 0).astype(int) + (X[:, 1] > 1)
    if loss == "binary_cross_entropy":
        return np.column_stack([X[:, 0] > 0, X[:, 1] > 0]).astype(float)
    return np.sin(X[:, :1]) * np.cos(X[:, 1:])


@pytest.mark.parametrize("make_opt", _OPTIMIZERS)
@pytest.mark.parametrize("net", _NETS, ids=[n[3] for n in _NETS])
def test_the_fused_stacked_step_trains_each_model_exactly_as_alone(net, make_opt):
    """The fused stacked step runs model k through the single-model fused step and optimizer in the order
    it takes them alone: the weights and optimizer state are bit for bit those of ``MLP(seed=s).fit``."""
    _fused_stack_or_skip()
    layers, hidden, out, loss, classification = net
    X = np.random.default_rng(4).uniform(-3, 3, (97, 2))
    y = _targets(X, loss)
    seeds, lrs = [0, 7, 3], [0.01, 0.03, 0.002]
    stack = gn.MLPStack(layers, hidden, out, seeds=seeds, lr=lrs, dtype="float64")
    hists = stack.fit(X, y, epochs=3, batch_size=20, optimizer=make_opt(0.01), loss=loss)
    st = stack.fast_paths["fused_stack_step"]
    assert (st["live"], st["reason"], st["epochs"]) == (True, None, 3) and stack.fused_epochs == 3
    assert st["threads"] in (1, numba_threads()) and set(st["us_per_model_step"]) <= {1, numba_threads()}
    assert all(h.fast_paths["fused_stack_step"]["epochs"] == 3 for h in hists)
    for k, (seed, lr) in enumerate(zip(seeds, lrs)):
        alone = gn.MLP(layers, hidden, out, seed=seed, dtype="float64")
        h = alone.fit(X, y, epochs=3, batch_size=20, optimizer=make_opt(lr), loss=loss, verbose=0)
        assert h.fast_paths["fused_step"]["live"]
        model = stack.models()[k]
        np.testing.assert_array_equal(model.params, alone.params)
        for name, v in alone.optimizer.state.items():
            np.testing.assert_array_equal(model.optimizer.state[name], v)
        assert model.optimizer.step_count == alone.optimizer.step_count == 15
        np.testing.assert_allclose(hists[k].history["loss"], h.history["loss"], rtol=1e-12)
        if classification:
            assert hists[k].history["accuracy"] == pytest.approx(h.history["accuracy"], abs=1e-12)


@pytest.mark.parametrize("make_opt", _OPTIMIZERS[1:5:3])
@pytest.mark.parametrize("net", _NETS, ids=[n[3] for n in _NETS])
def test_the_fused_stacked_step_equals_the_batched_reference_step(net, make_opt, monkeypatch):
    """Parity with the reference: the stack's batched Array-API step (the nn.activations / nn.losses
    expressions and the reference optimizer maths), which $GPUNET_FUSED=0 selects and reports."""
    _fused_stack_or_skip()
    layers, hidden, out, loss, classification = net
    X = np.random.default_rng(5).uniform(-3, 3, (83, 2))
    y = _targets(X, loss)
    kw = dict(seeds=[1, 2], lr=[0.02, 0.005], dtype="float64")
    fused = gn.MLPStack(layers, hidden, out, **kw)
    hf = fused.fit(X, y, epochs=2, batch_size=16, optimizer=make_opt(0.01), loss=loss)
    monkeypatch.setenv("GPUNET_FUSED", "0")
    ref = gn.MLPStack(layers, hidden, out, **kw)
    hr = ref.fit(X, y, epochs=2, batch_size=16, optimizer=make_opt(0.01), loss=loss)
    assert fused.fast_paths["fused_stack_step"]["live"] and fused.fast_paths["fused_stack_step"]["epochs"] == 2
    assert ref.fast_paths["fused_stack_step"] == {"live": False, "reason": "GPUNET_FUSED=0", "epochs": 0}
    np.testing.assert_allclose(fused.params, ref.params, rtol=1e-11, atol=1e-13)
    for name, v in ref.optimizer.state.items():
        np.testing.assert_allclose(fused.optimizer.state[name], v, rtol=1e-10, atol=1e-13)
    for a, b in zip(hf, hr):
        np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-11)


def test_a_stack_the_fused_step_cannot_train_says_why_once(caplog):
    _fused_stack_or_skip()
    import logging

    X = np.random.default_rng(6).uniform(-3, 3, (40, 2))
    stack = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64", dropout=0.1)
    with caplog.at_level(logging.INFO, logger="gpunet"):
        hists = stack.fit(X, _targets(X, "mse"), epochs=3, batch_size=8, optimizer=gn.Adam())
    assert stack.fast_paths["fused_stack_step"] == {
        "live": False, "reason": "dropout and L1/L2 penalties are not in the fused step", "epochs": 0}
    assert hists[0].fast_paths["fused_stack_step"]["live"] is False
    assert caplog.text.count("not the fused stacked step: dropout") == 1


def test_a_failed_fused_stack_compile_falls_back_loudly_and_changes_nothing(monkeypatch, caplog):
    ops = _fused_stack_or_skip()
    X = np.random.default_rng(7).uniform(-3, 3, (40, 2))
    y = _targets(X, "mse")
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("simulated compile failure")
    monkeypatch.setattr(ops, "_stack_epoch", broken)
    monkeypatch.setattr(ops, "_compiled", set())
    stack = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64")
    stack.fit(X, y, epochs=2, batch_size=8, optimizer=gn.Adam(lr=0.01))
    assert len(calls) == 1 and caplog.text.count("fused stacked CPU step unavailable") == 1
    st = stack.fast_paths["fused_stack_step"]
    assert st["live"] is False and "simulated compile failure" in st["reason"] and st["epochs"] == 0
    monkeypatch.undo()
    again = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64")
    again.fit(X, y, epochs=2, batch_size=8, optimizer=gn.Adam(lr=0.01))
    assert again.fast_paths["fused_stack_step"]["live"]
    np.testing.assert_allclose(stack.params, again.params, rtol=1e-11, atol=1e-13)


def test_gpunet_info_lists_the_fused_stacked_step():
    from gpunet import backend
    from gpunet.cli import info

    ops = _fused_stack_or_skip()
    assert ops.status()["fused_stack_step"]["live"] is True
    assert "fused_stack_step" in info.fast_path_lines(backend.CPU)
    pytest.importorskip("array_api_strict")
    strict = gn.MLPStack([2, 6, 1], "tanh", seeds=[0], dtype="float64", device=strict_backend())
    X = np.random.default_rng(8).uniform(-3, 3, (20, 2))
    strict.fit(X, _targets(X, "mse"), epochs=1, batch_size=8)
    assert "no fused stacked step" in strict.fast_paths["fused_stack_step"]["reason"]


def test_the_fused_stacked_step_picks_its_thread_count_by_timing(monkeypatch):
    """All threads and one are each timed once, then the faster is used and the other retimed every
    STACK_REPROBE_EPOCHS epochs; a fit reports the count it used."""
    ops = _fused_stack_or_skip()
    import numba

    from gpunet.ops.numpy_ops import NumpyOps

    monkeypatch.setattr(numba, "get_num_threads", lambda: 4)
    stack = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64")
    assert NumpyOps.stack_threads(stack) == 4
    stack.thread_timings[4] = 2e-6
    assert NumpyOps.stack_threads(stack) == 1
    stack.thread_timings[1] = 1e-6
    stack.fused_epochs = 3
    assert NumpyOps.stack_threads(stack) == 1
    stack.fused_epochs = NumpyOps.STACK_REPROBE_EPOCHS
    assert NumpyOps.stack_threads(stack) == 4
    stack.thread_timings[1] = 3e-6
    stack.fused_epochs = 9
    assert NumpyOps.stack_threads(stack) == 4
    monkeypatch.undo()
    X = np.random.default_rng(9).uniform(-3, 3, (40, 2))
    fresh = gn.MLPStack([2, 6, 1], "tanh", seeds=[0, 1], dtype="float64")
    fresh.fit(X, _targets(X, "mse"), epochs=3, batch_size=8, optimizer=gn.Adam())
    st = fresh.fast_paths["fused_stack_step"]
    assert st["threads"] in fresh.thread_timings and st["epochs"] == 3 == fresh.fused_epochs
    assert ops.status()["fused_stack_step"]["live"]
