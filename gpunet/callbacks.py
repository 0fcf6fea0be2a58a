"""Training callbacks (Keras' protocol): subclass :class:`Callback` and override any hook.

Hooks receive the epoch index (0-based, counting every epoch the model has trained) and a ``logs``
dict of host floats: ``loss``, ``accuracy`` (classification), ``val_loss``, ``val_accuracy``, ``lr``.
Setting ``self.model.stop_training = True`` ends training after the current epoch.
"""
from __future__ import annotations

import logging
import math
import os
import re

from gpunet import checks

log = logging.getLogger("gpunet")


class Callback:
    """Base class; every hook is optional. ``self.model`` is the network being trained."""

    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        """Called after every optimizer step with ``{"size": rows}``; the loss is not read per batch
        (that would synchronise the GPU), so it is not in ``logs``."""


class History(Callback):
    """What ``fit`` returns: ``history.history[name]`` is a list with one value per epoch;
    ``batch_loss`` the loss of every optimizer step when ``fit(..., record="batch")``."""

    def __init__(self):
        self.history: dict[str, list[float]] = {}
        self.batch_loss: list[float] = []
        self.epoch: list[int] = []
        self.seconds: list[float] = []
        self.interrupted = False
        #: what fit(cuda_graph=...) did: requested, replays, captures, fallback reason (set by fit)
        self.cuda_graph = None
        #: the backend's fast paths when fit ran: {path: {"live": bool, "reason": str or None}}
        self.fast_paths = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def _better(mode, monitor):
    mode = mode if mode != "auto" else ("max" if "acc" in monitor else "min")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _improved(mode, value, best, min_delta=0.0):
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    With ``restore_best_weights`` the model ends with the weights of its best epoch.
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto", restore_best_weights=False):
        patience = checks.check_int("patience", patience)
        if not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool):
            raise TypeError(f"min_delta must be a number, got {min_delta!r}")
        if patience < 0 or not min_delta >= 0:
            raise ValueError(f"patience and min_delta must be >= 0, got {patience} and {min_delta}")
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a metric name such as 'val_loss', got {monitor!r}")
        restore_best_weights = checks.check_bool("restore_best_weights", restore_best_weights)
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = _better(mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.stopped_epoch = None

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.wait, self.best_weights, self.stopped_epoch = None, 0, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not among the logged metrics "
                             f"{sorted(logs or {})}; pass validation_data or monitor='loss'")
        if _improved(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            log.info("gpunet: early stopping at epoch %d (best %s=%.6g at epoch %d)", epoch + 1, self.monitor,
                     self.best, (self.best_epoch or 0) + 1)

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (with optimizer and RNG state, so training can resume) after each epoch,
    atomically. ``path`` may contain ``{epoch}``; with ``save_best_only`` only improvements of
    ``monitor`` are written."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise TypeError(f"ModelCheckpoint needs a file path (str or os.PathLike), got {path!r}")
        path = os.fspath(path)
        self.path, self.monitor, self.save_best_only = str(path), monitor, save_best_only
        self.mode = _better(mode, monitor)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs=None):
        if self.save_best_only:
            value = (logs or {}).get(self.monitor)
            if value is None:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which is not logged; have {sorted(logs or {})}")
            if not _improved(self.mode, value, self.best):
                return
            self.best = value
        self.model.save(_format_epoch(self.path, epoch + 1))


def _format_epoch(path, epoch):
    """Fill ``{epoch}`` / ``{epoch:03d}`` fields and nothing else, so other braces in a path stay as written."""
    return re.sub(r"\{epoch(?::([^{}]*))?\}", lambda m: format(epoch, m.group(1) or ""), str(path))


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of each epoch to ``schedule(epoch, lr)``."""

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError("schedule must be a callable (epoch, lr) -> new lr")
        self.schedule = schedule
        self.base_lr = None
        #: a base rate that overrides the optimizer's (a resumed run whose optimizer holds a decayed rate)
        self.fixed_base_lr = None

    def on_train_begin(self, logs=None):
        # from this fit's optimizer, every time: one schedule instance can serve several fits and models
        self.base_lr = self.fixed_base_lr if self.fixed_base_lr is not None else self.model.optimizer.lr

    def on_epoch_begin(self, epoch, logs=None):
        lr = float(self.schedule(epoch, self.model.optimizer.lr))
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"the schedule returned an invalid learning rate {lr!r} for epoch {epoch}")
        self.model.optimizer.lr = lr


class StepDecay(LearningRateScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, step_size, gamma=0.1):
        step_size = checks.check_int("step_size", step_size, low=1)
        gamma = checks.check_hyper("gamma", gamma, low=0.0, low_open=True)
        super().__init__(lambda epoch, lr: self.base_lr * gamma ** (epoch // step_size))


class CosineDecay(LearningRateScheduler):
    """Cosine annealing from the base rate to ``min_lr`` over ``epochs`` epochs (then ``min_lr``)."""

    def __init__(self, epochs, min_lr=0.0):
        epochs = checks.check_int("epochs", epochs, low=1)
        min_lr = checks.check_hyper("min_lr", min_lr)

        def schedule(epoch, lr):
            t = min(epoch, epochs) / epochs
            return max(min_lr + 0.5 * (self.base_lr - min_lr) * (1 + math.cos(math.pi * t)), 1e-12)

        super().__init__(schedule)


class CallbackList:
    def __init__(self, callbacks, model):
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be gpunet.callbacks.Callback instances, got {type(cb).__name__}")
        self.callbacks = callbacks
        self.model = model
        self.wants_batches = any(type(cb).on_batch_end is not Callback.on_batch_end for cb in callbacks)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        def call(*args):
            for cb in self.callbacks:
                getattr(cb, hook)(*args)
        return call

    def begin(self):
        for cb in self.callbacks:
            cb.set_model(self.model)
