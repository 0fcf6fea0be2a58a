"""The training loop: device-resident data, host-seeded shuffling, one host read per epoch.

Data are validated and uploaded once per ``fit``; each epoch uploads one permutation (drawn on the host
from the model's seeded generator, so the batch order is the same on every device) and gathers the
batches on the device. Per-batch losses are written into a device array and read once at the end of
the epoch, which is also when divergence is detected: a non-finite loss restores the weights, the
optimizer state and the RNG state of the start of the epoch and raises :class:`DivergenceError`.
Ctrl-C stops after the current batch and rolls back the same way, so the model is always at an epoch
boundary and a resumed run matches an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
import time

import numpy as np

from gpunet import callbacks as _callbacks, losses, optim, validation

log = logging.getLogger("gpunet")


class DivergenceError(RuntimeError):
    """The training loss became NaN or Inf; the model keeps its last finite weights."""


class _Snapshot:
    """Start-of-epoch copy of everything one epoch of training changes."""

    def __init__(self, model, opt):
        self.params = model._zeros(model.params.shape)
        self.state = {k: model._zeros(v.shape) for k, v in opt.state.items()}

    def take(self, model, opt):
        self.params[...] = model.params
        for k, v in opt.state.items():
            self.state[k][...] = v
        self.step_count = opt.step_count
        self.rng = (model.shuffle_rng.bit_generator.state, model.dropout_rng.bit_generator.state)

    def restore(self, model, opt):
        model.params[...] = self.params
        for k, v in opt.state.items():
            v[...] = self.state[k]
        opt.step_count = self.step_count
        model.shuffle_rng.bit_generator.state, model.dropout_rng.bit_generator.state = self.rng


@contextlib.contextmanager
def _stop_on_sigint():
    """First Ctrl-C sets ``flag.set`` (training stops after the batch); a second one raises."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        log.warning("gpunet: interrupted, stopping after the current batch (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _ensure_log_handler():
    """With verbose output and no logging configured, show gpunet's INFO lines on stderr."""
    logger = logging.getLogger("gpunet")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _progress(verbose, total, epoch, epochs):
    if verbose < 1 or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415  (import cost only when a bar is shown)

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="sample", unit_scale=True, leave=verbose >= 2,
                dynamic_ncols=True)


def _check_validation_data(model, validation_data, loss):
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    return model._upload(validation_data[0], validation_data[1], loss, name="validation_data X")


def fit(model, X, y, *, epochs=1, batch_size=32, optimizer=None, loss=None, validation_data=None, shuffle=True,
        callbacks=None, verbose=1):
    """Train ``model`` on ``(X, y)``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples,) or (n_samples, n_outputs)
        Class labels or one-hot rows for ``cross_entropy``; values in [0, 1] for
        ``binary_cross_entropy``; anything finite for ``mse``/``mae``.
    epochs : int >= 0
        Epochs to train in this call (the model counts all epochs in ``model.epochs_trained``).
    batch_size : int >= 1
        Samples per step; the last batch of an epoch holds the remainder.
    optimizer : Optimizer or {"adam", "adamw", "sgd"} or None
        ``None`` continues with the model's previous optimizer (state included), else Adam().
    loss : {"mse", "mae", "cross_entropy", "binary_cross_entropy"} or None
        Default from the output activation: softmax -> cross_entropy, sigmoid -> binary_cross_entropy,
        otherwise mse.
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``).
    shuffle : bool
        Reshuffle every epoch with the model's seeded host generator.
    callbacks : list of :class:`gpunet.callbacks.Callback`
    verbose : int
        0 silent; 1 a progress bar (on a TTY) and one log line per epoch.

    Returns
    -------
    History
    """
    epochs = validation.check_int("epochs", epochs, low=0)
    batch_size = validation.check_int("batch_size", batch_size, low=1)
    verbose = validation.check_int("verbose", verbose, low=0)
    loss = model._resolve_loss(loss)
    if optimizer is None:
        opt = model.optimizer if model.optimizer is not None else optim.Adam()
    else:
        opt = optim.get(optimizer)
    Xd, Yd = model._upload(X, y, loss)
    val = _check_validation_data(model, validation_data, loss)
    cbs = _callbacks.CallbackList(callbacks, model)
    # ---- nothing above changed any state; from here on the model trains ----
    backend, ops = model.backend, model.backend.ops
    n = Xd.shape[0]
    B = min(batch_size, n)
    n_batches = math.ceil(n / B)
    sizes = np.full(n_batches, B, dtype=np.float64)
    sizes[-1] = n - B * (n_batches - 1)
    classification = loss in losses.CLASSIFICATION
    acc_denominator = n if loss == "cross_entropy" else n * model.layer_sizes[-1]
    history = _callbacks.History()
    model.optimizer, model.loss, model.stop_training = opt, loss, False
    if verbose:
        _ensure_log_handler()
    # overflow inside an epoch is reported once, as DivergenceError, not as a flood of warnings
    with backend.activate(), _stop_on_sigint() as interrupted, np.errstate(all="ignore"):
        opt.bind(model.params)
        ws = model._workspace(B)
        snapshot = _Snapshot(model, opt)
        cbs.begin()
        cbs.on_train_begin()
        final_epoch = model.epochs_trained + epochs
        for _ in range(epochs):
            epoch = model.epochs_trained
            cbs.on_epoch_begin(epoch)
            snapshot.take(model, opt)
            order = model.shuffle_rng.permutation(n) if shuffle else np.arange(n)
            idx = backend.to_device(order.astype(np.int64))
            batch_loss = model._zeros((n_batches,))
            batch_correct = model._zeros((n_batches,)) if classification else None
            bar = _progress(verbose, n, epoch + 1, final_epoch)
            report_every = max(1, n_batches // 20)
            t0 = time.perf_counter()
            done = 0
            for i in range(n_batches):
                s = i * B
                r = int(sizes[i])
                rows = idx[s:s + r]
                x = ops.take_rows(Xd, rows, ws.a[0][:r, ...])
                yb = ops.take_rows(Yd, rows, ws.y[:r, ...])
                value, a_out = model._step_gradients(x, yb, ws, loss, train=True)
                opt.step(model.params, model.grads, ops)
                batch_loss[i] = value
                if classification:
                    batch_correct[i] = ops.correct(loss, a_out, yb)
                done = i + 1
                if cbs.wants_batches:
                    cbs.on_batch_end(i, {"size": r})
                if bar is not None:
                    bar.update(r)
                    if i % report_every == 0:
                        bar.set_postfix(loss=f"{backend.item(batch_loss[i]):.4g}", refresh=False)
                if interrupted.is_set():
                    break
            host_loss = backend.to_host(batch_loss)[:done]
            seconds = time.perf_counter() - t0
            if bar is not None:
                bar.close()
            if interrupted.is_set():
                snapshot.restore(model, opt)
                history.interrupted = True
                log.warning("gpunet: training interrupted during epoch %d; the model is back at the end of "
                            "epoch %d", epoch + 1, epoch)
                break
            if not np.isfinite(host_loss).all():
                bad = int(np.flatnonzero(~np.isfinite(host_loss))[0])
                snapshot.restore(model, opt)
                raise DivergenceError(
                    f"training diverged: the loss became {host_loss[bad]} at epoch {epoch + 1}, batch {bad + 1} of "
                    f"{n_batches}; the learning rate ({opt.lr:g}) is probably too high for this model and data. "
                    f"The weights were restored to the end of epoch {epoch}.")
            logs = {"loss": float(host_loss @ sizes / n)}
            if classification:
                logs["accuracy"] = float(backend.to_host(batch_correct).sum() / acc_denominator)
            if val is not None:
                logs.update({f"val_{k}": v for k, v in model._evaluate_device(val[0], val[1], loss).items()})
            logs["lr"] = opt.lr
            model.epochs_trained += 1
            history.seconds.append(seconds)
            history.on_epoch_end(epoch, logs)
            cbs.on_epoch_end(epoch, logs)
            if verbose:
                metrics = " - ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "lr")
                log.info("epoch %d - %s - %.2fs (%.0f samples/s)", epoch + 1, metrics, seconds, n / max(seconds, 1e-9))
            if model.stop_training:
                break
        cbs.on_train_end()
    model.history = history
    return history
