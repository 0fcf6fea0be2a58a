"""Reliability: nothing a user can do corrupts a model, hangs, or fails without a clear message.

Every case checks the error type, that the message names the argument or file, and that the model's
weights, optimizer state and epoch count are unchanged (or back at the last epoch boundary)."""
import os
import stat
import threading

import numpy as np
import pytest

import gpunet as gn
from gpunet.errors import DivergenceError
from gpunet.ops import get_ops


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)


def trained(data, **kw):
    m = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0, **kw)
    m.fit(*data, epochs=1, batch_size=16, verbose=0)
    return m


def snapshot(m):
    opt = m.optimizer
    return ([w.copy() for w in m.get_weights()], {k: np.array(v) for k, v in (opt.state.items() if opt else [])},
            opt.step_count if opt else 0, m.epochs_trained, opt)


def assert_unchanged(m, snap):
    weights, state, steps, epochs, opt = snap
    assert all((a == b).all() for a, b in zip(weights, m.get_weights()))
    assert m.optimizer is opt and m.epochs_trained == epochs
    if opt is not None:
        assert opt.step_count == steps and all((np.array(opt.state[k]) == v).all() for k, v in state.items())


# ---------------------------------------------------------------- non-finite state is never kept
def test_overflow_on_the_last_update_of_an_epoch_rolls_back(data):
    X, y = data
    m = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0)
    m.fit(X, y, epochs=1, batch_size=60, optimizer=gn.SGD(lr=0.1), verbose=0)
    snap = snapshot(m)
    # one batch per epoch: the loss of the only step is finite, the update overflows the weights
    with pytest.raises(DivergenceError, match="weights overflowed.*learning rate"):
        m.fit(X, y, epochs=1, batch_size=60, optimizer=gn.SGD(lr=1e300), verbose=0)
    assert all(np.isfinite(w).all() for w in m.get_weights())
    assert all((a == b).all() for a, b in zip(snap[0], m.get_weights())) and m.epochs_trained == 1


def test_non_finite_loss_from_the_data_is_not_blamed_on_the_learning_rate():
    X = np.full((8, 2), 1e30)  # finite in float32, but the forward pass overflows
    m = gn.MLP([2, 4, 1], "linear", "linear", seed=0)
    m.set_weights([np.full((2, 4), 1e10), np.zeros(4), np.full((4, 1), 1e10), np.zeros(1)])
    with pytest.raises(DivergenceError, match="before any update.*not the learning rate"):
        m.fit(X, np.zeros(8), epochs=1, batch_size=8, optimizer=gn.SGD(lr=1e-9), verbose=0)


@pytest.mark.parametrize("where", ["X", "y", "weights", "load"])
def test_values_that_overflow_the_model_dtype_are_refused(data, tmp_path, where):
    X, y = data
    m = gn.MLP([4, 6, 1], "tanh", seed=0)
    snap = snapshot(m)
    with pytest.raises(ValueError, match="overflow float32"):
        if where == "X":
            m.fit(np.where(X > 1, 1e39, X), X[:, 0], epochs=1, verbose=0)
        elif where == "y":
            m.fit(X, np.full(60, 1e39), epochs=1, verbose=0)
        elif where == "weights":
            m.set_weights([np.full((4, 6), 1e39), np.zeros(6), np.zeros((6, 1)), np.zeros(1)])
        else:
            big = gn.MLP([4, 6, 1], "tanh", seed=0, dtype="float64")
            big.set_weights([np.full((4, 6), 1e39), np.zeros(6), np.zeros((6, 1)), np.zeros(1)])
            big.save(tmp_path / "big.npz")
            gn.load(tmp_path / "big.npz", device="cpu", dtype="float32")
    assert_unchanged(m, snap)


# ---------------------------------------------------------------- every exception rolls back
class Boom(gn.Callback):
    def __init__(self, exc):
        self.exc = exc

    def on_batch_end(self, batch, logs=None):
        if batch == 2:
            raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("callback bug"), KeyboardInterrupt()])
def test_an_exception_inside_an_epoch_rolls_back_to_the_epoch_boundary(data, exc):
    m = trained(data)
    snap = snapshot(m)
    with pytest.raises(type(exc)):
        m.fit(*data, epochs=3, batch_size=8, callbacks=[Boom(exc)], verbose=0)
    assert_unchanged(m, snap)


@pytest.mark.parametrize("call, match", [
    (lambda m, X, y: m.fit(X, None, verbose=0), "y is required"),
    (lambda m, X, y: m.fit(X, y, validation_data=(X, None), verbose=0), "validation_data has no targets"),
    (lambda m, X, y: m.fit(X, y, callbacks=[gn.EarlyStopping("val_accuracy")], verbose=0), "val_accuracy.*validation_data"),
    (lambda m, X, y: m.fit(X, y, callbacks=[gn.ModelCheckpoint("m.npz", monitor="val_loss", save_best_only=True)],
                           verbose=0), "val_loss"),
    (lambda m, X, y: m.fit(X, y, callbacks=[gn.EarlyStopping("mae")], verbose=0), "'mae'"),
    (lambda m, X, y: m.fit(X, np.tile([0.5, 0.2, 0.2], (60, 1)), verbose=0), "summing to 1.*row 0 sums to 0.9"),
])
def test_checkable_things_are_checked_before_epoch_one(data, call, match):
    m = trained(data)
    snap = snapshot(m)
    with pytest.raises(ValueError, match=match):
        call(m, *data)
    assert_unchanged(m, snap)


# ---------------------------------------------------------------- shared objects
def test_predict_from_several_threads_is_correct(data):
    X, _ = data
    m = trained(data)
    ref = m.predict(X)
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(m.predict(X))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(r, ref) for r in results)


def test_a_concurrent_fit_on_one_model_is_refused(data):
    m = trained(data)
    started, release = threading.Event(), threading.Event()

    class Hold(gn.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            started.set()
            release.wait(10)
    t = threading.Thread(target=lambda: m.fit(*data, epochs=1, callbacks=[Hold()], verbose=0))
    t.start()
    started.wait(10)
    try:
        with pytest.raises(RuntimeError, match="already running on this model"):
            m.fit(*data, epochs=1, verbose=0)
    finally:
        release.set()
        t.join()


def test_an_optimizer_given_to_a_second_model_starts_fresh(data):
    opt = gn.Adam(lr=0.01)
    a = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0, dtype="float64")
    a.fit(*data, epochs=2, batch_size=16, optimizer=opt, verbose=0)
    b = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0, dtype="float64")
    b.fit(*data, epochs=1, batch_size=16, optimizer=opt, verbose=0)
    c = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0, dtype="float64")
    c.fit(*data, epochs=1, batch_size=16, optimizer=gn.Adam(lr=0.01), verbose=0)
    assert all((x == y).all() for x, y in zip(b.get_weights(), c.get_weights()))


@pytest.mark.parametrize("make, exc, match", [
    (lambda: gn.Adam(amsgrad="False"), TypeError, "amsgrad must be True or False"),
    (lambda: gn.SGD(momentum=0.9, nesterov="yes"), TypeError, "nesterov must be True or False"),
    (lambda: gn.EarlyStopping(patience="3"), TypeError, "patience must be an integer"),
    (lambda: gn.EarlyStopping(restore_best_weights="no"), TypeError, "restore_best_weights"),
    (lambda: gn.MLP([3, 4, 1], output_activation="softmax"), ValueError, "softmax over one output unit"),
])
def test_hyper_parameters_are_type_checked(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_verbose_true_means_one(data):
    m = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0)
    m.fit(*data, epochs=1, verbose=True)


# ---------------------------------------------------------------- files
def test_load_and_save_refuse_non_regular_files(tmp_path, data):
    m = trained(data)
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=f"{fifo}.*not a regular file"):
        gn.load(fifo, device="cpu")
    with pytest.raises(ValueError, match="not a regular file"):
        m.save(fifo)
    with pytest.raises(ValueError, match="/dev/null.*not a regular file"):
        m.save("/dev/null")
    assert os.path.exists("/dev/null") and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_save_keeps_mode_follows_symlinks_takes_bytes_and_cleans_stale_temporaries(tmp_path, data):
    m = trained(data)
    target = tmp_path / "real.npz"
    m.save(target)
    os.chmod(target, 0o640)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    stale = tmp_path / "real.npz.abcd1234.tmp"
    stale.write_bytes(b"half a model")
    os.utime(stale, (0, 0))
    m.save(os.fsencode(link))
    assert link.is_symlink() and stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert not stale.exists()
    assert gn.load(link, device="cpu").epochs_trained == 1


def test_load_checks_members_and_metadata_before_reading(tmp_path, data):
    m = trained(data)
    good = tmp_path / "m.npz"
    m.save(good)
    with np.load(good) as f:
        parts = dict(f)
    np.savez(tmp_path / "extra.npz", **parts, payload=np.zeros(3))
    with pytest.raises(ValueError, match="extra.npz.*never writes.*payload"):
        gn.load(tmp_path / "extra.npz", device="cpu")
    deep = np.frombuffer(("[" * 40 + "]" * 40).encode(), dtype=np.uint8)
    np.savez(tmp_path / "deep.npz", **dict(parts, meta=deep))
    with pytest.raises(ValueError, match="deep.npz"):
        gn.load(tmp_path / "deep.npz", device="cpu")
    huge = np.frombuffer(b'{"layers": [100000, 100000, 100000]}', dtype=np.uint8)
    np.savez(tmp_path / "huge.npz", **dict(parts, meta=huge))
    with pytest.raises(ValueError, match="huge.npz.*parameters"):
        gn.load(tmp_path / "huge.npz", device="cpu")


def test_model_checkpoint_formats_only_epoch_fields(tmp_path, data):
    m = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0)
    path = tmp_path / "ckpt-{epoch}-{not_a_field}.npz"
    m.fit(*data, epochs=2, callbacks=[gn.ModelCheckpoint(str(path), monitor="loss")], verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1-{not_a_field}.npz", "ckpt-2-{not_a_field}.npz"]


def test_gpunet_data_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="GPUNET_DATA.*nowhere"):
        gn.datasets.load_mnist()


def test_a_failed_fused_compile_affects_only_that_model(data, monkeypatch, caplog):
    from gpunet import backend

    ops = get_ops(backend.resolve("cpu"))
    if ops._mlp_step is None:
        pytest.skip("Numba not installed: no fused step")
    X = np.random.default_rng(0).normal(size=(40, 1))
    real, calls = ops._mlp_step, []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("simulated compile failure")
    monkeypatch.setattr(ops, "_mlp_step", broken)
    monkeypatch.setattr(ops, "_compiled", set())
    a = gn.MLP([1, 8, 1], "tanh", seed=0, dtype="float64")
    a.fit(X, X, epochs=2, verbose=0)  # falls back to NumPy, tries the compiled step once only
    assert len(calls) == 1 and "fused CPU step unavailable for this model" in caplog.text
    monkeypatch.setattr(ops, "_mlp_step", real)
    b = gn.MLP([1, 8, 1], "tanh", seed=0, dtype="float64")
    b.fit(X, X, epochs=2, verbose=0)
    assert ("float64", "float64") in ops._compiled  # the later model got the compiled step
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)


def test_a_schedule_instance_can_be_reused(data):
    sched = gn.StepDecay(1, gamma=0.5)
    a = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0)
    ha = a.fit(*data, epochs=2, optimizer=gn.Adam(lr=0.01), callbacks=[sched], verbose=0)
    b = gn.MLP([4, 6, 3], "tanh", "softmax", seed=0)
    hb = b.fit(*data, epochs=2, optimizer=gn.Adam(lr=0.1), callbacks=[sched], verbose=0)
    assert ha.history["lr"] == [0.01, 0.005] and hb.history["lr"] == [0.1, 0.05]
