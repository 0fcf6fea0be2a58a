"""Callbacks, schedules, resume through save/load, Ctrl-C in fit, summary."""
import math
import signal

import numpy as np
import pytest

import gpunet as gn


@pytest.fixture
def blobs(rng):
    X = rng.standard_normal((200, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return X, y


def net(**kw):
    return gn.MLP([4, 16, 2], "relu", "softmax", device="cpu", seed=0, **kw)


def test_callback_protocol_order(blobs):
    events = []

    class Spy(gn.Callback):
        def on_train_begin(self, logs=None):
            events.append("begin")

        def on_epoch_begin(self, epoch, logs=None):
            events.append(f"e{epoch}")

        def on_batch_end(self, batch, logs=None):
            events.append(f"b{batch}:{logs['size']}")

        def on_epoch_end(self, epoch, logs=None):
            events.append(f"end{epoch}:{sorted(logs)}")

        def on_train_end(self, logs=None):
            events.append("stop")

    net().fit(*blobs, epochs=2, batch_size=80, callbacks=[Spy()], verbose=0)
    keys = "['accuracy', 'loss', 'lr']"
    assert events == ["begin", "e0", "b0:80", "b1:80", "b2:40", f"end0:{keys}", "e1", "b0:80", "b1:80", "b2:40",
                      f"end1:{keys}", "stop"]


def test_early_stopping_restores_best_weights(blobs):
    X, y = blobs
    model = net()
    seen = {}

    class Record(gn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = (logs["val_loss"], self.model.get_weights())

    stop = gn.EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    # validation labels flipped: val_loss gets worse as training improves, so it stops early
    hist = model.fit(X, y, epochs=50, batch_size=20, optimizer=gn.Adam(lr=0.05), validation_data=(X, 1 - y),
                     callbacks=[Record(), stop], verbose=0)
    assert len(hist.epoch) < 50 and stop.stopped_epoch == hist.epoch[-1]
    best = min(seen, key=lambda e: seen[e][0])
    for a, b in zip(model.get_weights(), seen[best][1]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_needs_the_metric(blobs):
    with pytest.raises(ValueError, match="val_loss.*not among the logged metrics"):
        net().fit(*blobs, epochs=2, callbacks=[gn.EarlyStopping()], verbose=0)


def test_schedules_set_the_learning_rate(blobs):
    hist = net().fit(*blobs, epochs=6, optimizer=gn.SGD(lr=0.1), callbacks=[gn.StepDecay(2, gamma=0.5)], verbose=0)
    np.testing.assert_allclose(hist.history["lr"], [0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    hist = net().fit(*blobs, epochs=5, optimizer=gn.Adam(lr=0.01), callbacks=[gn.CosineDecay(4, min_lr=0.001)], verbose=0)
    expected = [0.001 + 0.5 * 0.009 * (1 + math.cos(math.pi * min(e, 4) / 4)) for e in range(5)]
    np.testing.assert_allclose(hist.history["lr"], expected)


def test_model_checkpoint_every_epoch_and_best_only(blobs, tmp_path):
    X, y = blobs
    net().fit(X, y, epochs=3, callbacks=[gn.ModelCheckpoint(tmp_path / "e{epoch}.npz", monitor="loss")], verbose=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.npz", "e2.npz", "e3.npz"]
    assert gn.load(tmp_path / "e2.npz", device="cpu").epochs_trained == 2
    best = gn.ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    net().fit(X, y, epochs=3, validation_data=(X, y), callbacks=[best], verbose=0)
    assert best.mode == "max" and (tmp_path / "best.npz").exists()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_save_load_resume_is_bit_identical(blobs, tmp_path, dropout):
    X, y = blobs
    straight = net(dropout=dropout)
    straight.fit(X, y, epochs=4, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0)
    part = net(dropout=dropout)
    part.fit(X, y, epochs=2, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0)
    part.save(tmp_path / "ckpt.npz")
    resumed = gn.load(tmp_path / "ckpt.npz", device="cpu")
    assert resumed.epochs_trained == 2 and resumed.optimizer.step_count == 14
    resumed.fit(X, y, epochs=2, batch_size=32, verbose=0)  # optimizer=None: continue the saved one
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_ctrl_c_in_fit_stops_after_the_batch_and_rolls_back_to_the_epoch(blobs):
    X, y = blobs
    model = net()
    model.fit(X, y, epochs=1, batch_size=20, verbose=0)
    after_one = model.get_weights()

    class Interrupt(gn.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 3:
                signal.raise_signal(signal.SIGINT)

    hist = model.fit(X, y, epochs=5, batch_size=20, callbacks=[Interrupt()], verbose=0)
    assert hist.interrupted and hist.epoch == [] and model.epochs_trained == 1
    for a, b in zip(after_one, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_summary_lists_layers_and_parameter_counts():
    model = gn.MLP([784, 512, 256, 10], output_activation="softmax", device="cpu", dropout=0.2)
    text = str(model)
    assert "535,818 parameters" in text and "784 -> 512" in text and "401,920" in text and "dropout=0.2" in text
    assert model.n_params == 535818
    assert "MLP([784, 512, 256, 10]" in repr(model)


def test_callbacks_must_be_callbacks(blobs):
    with pytest.raises(TypeError, match="Callback"):
        net().fit(*blobs, epochs=1, callbacks=[lambda: None], verbose=0)


def test_cuda_graph_request_on_cpu_falls_back_to_the_same_training(blobs, caplog):
    import logging
    X, y = blobs
    a, b = net(), net()
    a.fit(X, y, epochs=2, batch_size=32, verbose=0)
    with caplog.at_level(logging.INFO, logger="gpunet"):
        b.fit(X, y, epochs=2, batch_size=32, verbose=0, cuda_graph=True)
    assert any("CUDA graphs need a CUDA device" in r.getMessage() for r in caplog.records)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_plot_functions_from_python(blobs, tmp_path):
    from helpers import assert_png
    X, y = blobs
    model = net()
    hist = model.fit(X, y, epochs=3, validation_data=(X, y), verbose=0)
    gn.plot.plot_history(hist, tmp_path / "h.png")
    gn.plot.plot_confusion(y, model.predict_classes(X), tmp_path / "c.png", n_classes=2)
    reg = gn.MLP([1, 8, 1], "tanh", device="cpu")
    Xs, ys = gn.datasets.sinc(100)
    reg.fit(Xs, ys, epochs=2, verbose=0)
    gn.plot.plot_fit(reg, Xs, ys, tmp_path / "f.png")
    for name in ("h.png", "c.png", "f.png"):
        assert_png(tmp_path / name)
    assert gn.plot.confusion_matrix([0, 1, 1], [0, 1, 0], 2).tolist() == [[1, 0], [1, 1]]
