"""Saving and loading models: one ``.npz`` file, no pickle, written atomically.

Layout: ``params`` (the flat parameter buffer, in the model's dtype), ``opt.<name>`` (optimizer
state buffers, same layout) and ``meta`` (UTF-8 JSON as a uint8 array: format and version,
architecture, dtype, optimizer name/config/step, RNG states, epochs trained). Files are written to a
temporary file beside the target, fsynced and renamed, so a crash never leaves half a model.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "gpunet.mlp"
#: 2 adds ``input_mean``/``input_scale``/``classes`` (absent = None); version-1 files still load
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path}: directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a saved model should get the usual mode
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def model_metadata(model, include_optimizer=True):
    from gpunet import __version__  # noqa: PLC0415

    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "gpunet_version": __version__,
        "layers": list(model.layer_sizes), "hidden_activation": model.hidden_activation,
        "output_activation": model.output_activation, "dtype": model.dtype, "init": model.init,
        "seed": model.seed, "l1": model.l1, "l2": model.l2, "dropout": model.dropout, "loss": model.loss,
        "epochs_trained": model.epochs_trained,
        "rng": {"shuffle": model.shuffle_rng.bit_generator.state, "dropout": model.dropout_rng.bit_generator.state},
        "optimizer": None,
        "input_mean": _list_or_none(model.input_mean), "input_scale": _list_or_none(model.input_scale),
        "classes": _list_or_none(model.classes),
    }
    opt = model.optimizer
    if include_optimizer and opt is not None:
        meta["optimizer"] = {"name": opt.name, "config": opt.get_config(), "step_count": opt.step_count,
                             "state": sorted(opt.state)}
    return meta


def _list_or_none(arr):
    return None if arr is None else np.asarray(arr).tolist()


def _read_preprocessing(path, meta, model):
    """``input_mean``/``input_scale``/``classes`` from the metadata, checked (type, shape, finite, > 0)."""
    from gpunet import validation  # noqa: PLC0415

    mean, scale, classes = meta.get("input_mean"), meta.get("input_scale"), meta.get("classes")
    try:
        for name, value in (("input_mean", mean), ("input_scale", scale)):
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"{name} must be a list of numbers")
        if mean is not None or scale is not None:
            m, s = validation.check_standardisation(mean, scale, model.layer_sizes[0], where="metadata")
            model.input_mean = None if mean is None else m
            model.input_scale = None if scale is None else s
        if classes is not None:
            if (not isinstance(classes, list) or not classes
                    or not (all(isinstance(c, str) for c in classes)
                            or all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes))):
                raise ValueError("classes must be a non-empty list of strings or of numbers")
            if len(set(classes)) != len(classes):
                raise ValueError("classes must be distinct")
            n_out = model.layer_sizes[-1]
            if len(classes) != n_out and not (len(classes) == 2 and n_out == 1):
                raise ValueError(f"{len(classes)} classes for {n_out} outputs")
            model.classes = np.array(classes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid preprocessing metadata ({exc})") from None


def save(model, path, include_optimizer=True, extra=None):
    """Write ``model`` to ``path`` atomically. ``extra``: JSON-serialisable dict stored in the metadata."""
    meta = model_metadata(model, include_optimizer)
    if extra:
        meta["extra"] = extra
    arrays = {"params": model.backend.to_host(model.params)}
    if meta["optimizer"]:
        for k, v in model.optimizer.state.items():
            arrays[f"opt.{k}"] = model.backend.to_host(v)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return os.fspath(path)


def read(path):
    """Read and check a model file; returns ``(meta, arrays)`` with host arrays. Raises ``ValueError``
    naming the file when it is not a valid gpunet model (truncated, corrupted, pickled, wrong format)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{path} is not a readable gpunet model file (truncated or corrupted?): {exc}") from None
    if "meta" not in arrays or "params" not in arrays:
        raise ValueError(f"{path} is not a gpunet model file (missing 'meta' or 'params')")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupted metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gpunet model file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} has format version {meta.get('format_version')!r}; this gpunet reads version "
                         f"{FORMAT_VERSION}: upgrade gpunet or re-save the model")
    return meta, arrays


def load(path, device="auto", dtype=None):
    """Rebuild a model saved with :meth:`gpunet.MLP.save` on ``device`` (optimizer and RNG state
    included, so ``fit`` continues where it stopped)."""
    from gpunet import backend, optim  # noqa: PLC0415
    from gpunet.model import MLP  # noqa: PLC0415

    meta, arrays = read(path)
    be = backend.resolve(device)  # a bad device is the caller's error, not the file's
    try:
        model = MLP(meta["layers"], meta["hidden_activation"], meta["output_activation"], device=be,
                    dtype=dtype or meta["dtype"], seed=meta["seed"], init=meta["init"], l1=meta["l1"], l2=meta["l2"],
                    dropout=meta["dropout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid architecture in metadata ({exc})") from None
    params = arrays["params"]
    if params.ndim != 1 or params.shape[0] != model.n_params or params.dtype.kind != "f":
        raise ValueError(f"{path}: parameter buffer has shape {params.shape} and dtype {params.dtype}, but the "
                         f"architecture {meta['layers']} needs ({model.n_params},) floats")
    if not np.isfinite(params).all():
        raise ValueError(f"{path}: parameters contain NaN or Inf")
    model.params[...] = model.backend.to_device(params, model.dtype)
    model.loss = meta.get("loss")
    _read_preprocessing(path, meta, model)
    model.epochs_trained = int(meta.get("epochs_trained", 0))
    rng = meta.get("rng") or {}
    with contextlib.suppress(KeyError, TypeError, ValueError):
        model.shuffle_rng.bit_generator.state = rng["shuffle"]
        model.dropout_rng.bit_generator.state = rng["dropout"]
    opt_meta = meta.get("optimizer")
    if opt_meta:
        state = {k: arrays.get(f"opt.{k}") for k in opt_meta.get("state", [])}
        if any(v is None or v.shape != params.shape for v in state.values()):
            raise ValueError(f"{path}: optimizer state is missing or has the wrong shape")
        state = {k: v.astype(model.dtype) for k, v in state.items()}
        try:
            model.optimizer = optim.from_config(opt_meta["name"], opt_meta["config"], state, opt_meta["step_count"],
                                                model.backend)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid optimizer metadata ({exc})") from None
    model.metadata = meta
    return model
