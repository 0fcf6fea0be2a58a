"""A fit's arguments checked before anything changes (validation data, the metrics callbacks monitor), and the
messages the epoch engine gives once (fallbacks) or on failure (out of memory)."""
from __future__ import annotations

import logging

from gpunet import callbacks as _callbacks
from gpunet.nn import losses

log = logging.getLogger("gpunet")


_said = set()


def say_once(message):
    """Log a fallback once per process (the rule for fast paths that can fall back)."""
    if message not in _said:
        _said.add(message)
        log.info(message)


def check_validation_data(model, validation_data, loss):
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    if validation_data[1] is None:
        raise ValueError("validation_data has no targets: pass (X_val, y_val)")
    return model.upload(validation_data[0], validation_data[1], loss, name="validation_data X")


def check_monitors(cbs, loss, has_validation):
    """A metric that EarlyStopping or ModelCheckpoint monitors must be one fit will log (checked before
    the first epoch, not after it)."""
    logged = {"loss", "lr"} | ({"accuracy"} if loss in losses.CLASSIFICATION else set())
    if has_validation:
        logged |= {f"val_{k}" for k in logged - {"lr"}}
    for cb in cbs:
        monitor = getattr(cb, "monitor", None)
        if isinstance(cb, (_callbacks.EarlyStopping, _callbacks.ModelCheckpoint)) and monitor not in logged:
            hint = " (pass validation_data or validation_split)" if str(monitor).startswith("val_") else ""
            raise ValueError(f"{type(cb).__name__} monitors {monitor!r}, which is not among the logged metrics of "
                             f"this fit{hint}; it logs {sorted(logged)}")


def oom_message(model, batch_size, when):
    return (f"out of memory on {model.device} while {when} with batch_size={batch_size} "
            f"({model.n_params:,} parameters); try a smaller batch_size. The weights are as they were before "
            f"the failed epoch.")
