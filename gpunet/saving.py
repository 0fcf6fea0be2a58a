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
import zipfile

import numpy as np

from gpunet import checks, optim, tabular
from gpunet._files import atomic_write, npy_header
from gpunet._version import __version__
from gpunet.nn import losses

FORMAT = "gpunet.mlp"
#: 2 adds ``input_mean``/``input_scale``/``classes`` (absent = None); 3 adds ``schema`` (a table schema, written only
#: by models that have one, so a gpunet that cannot apply it refuses the file); version-1 and 2 files still load
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


def model_metadata(model, include_optimizer=True):
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
    schema = getattr(model, "schema", None)
    if schema is not None:
        meta["schema"] = schema.to_json()
    else:
        meta["format_version"] = 2  # nothing a version-2 reader would miss
    opt = model.optimizer
    if include_optimizer and opt is not None:
        meta["optimizer"] = {"name": opt.name, "config": opt.get_config(), "step_count": opt.step_count,
                             "state": sorted(opt.state)}
    return meta


def _list_or_none(arr):
    return None if arr is None else np.asarray(arr).tolist()


def _read_preprocessing(path, meta, model):
    """``input_mean``/``input_scale``/``classes`` from the metadata, checked (type, shape, finite, > 0)."""
    mean, scale, classes = meta.get("input_mean"), meta.get("input_scale"), meta.get("classes")
    try:
        for name, value in (("input_mean", mean), ("input_scale", scale)):
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"{name} must be a list of numbers")
        if mean is not None or scale is not None:
            m, s = checks.check_standardisation(mean, scale, model.layer_sizes[0], where="metadata")
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
        if meta.get("schema") is not None:
            schema = tabular.Schema.from_json(meta["schema"], where="metadata")
            if schema.width() != model.layer_sizes[0]:
                raise ValueError(f"the schema gives {schema.width()} inputs for a network of {model.layer_sizes[0]}")
            schema.check_dtype(model.dtype, where="metadata")
            model.schema = schema
        if mean is not None or scale is not None:
            checks.check_standardisation(mean, scale, model.layer_sizes[0], where="metadata", dtype=model.dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid preprocessing metadata ({exc})") from None


def save(model, path, include_optimizer=True, extra=None):
    """Write ``model`` to ``path`` atomically. ``extra``: JSON-serialisable dict stored in the metadata."""
    meta = model_metadata(model, include_optimizer)
    if extra:
        meta["extra"] = extra
    arrays = {"params": model.dense(model.backend.to_host(model.params))}  # the dense layout on every device
    if meta["optimizer"]:
        for k, v in model.optimizer.state.items():
            arrays[f"opt.{k}"] = model.dense(model.backend.to_host(v))
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return os.fspath(path)


def read(path):
    """Read and check a model file; returns ``(meta, arrays)`` with host arrays. Raises ``ValueError``
    naming the file when it is not a valid gpunet model (truncated, corrupted, pickled, wrong format)."""
    path = os.fsdecode(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a regular file (a model file is an .npz written by gpunet)")
    try:
        with zipfile.ZipFile(path) as zf:
            meta, arrays = _read_members(path, zf)
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(f"{path} is not a readable gpunet model file (truncated or corrupted?): {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gpunet model file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path} has format version {meta.get('format_version')!r}; this gpunet reads version "
                         f"{FORMAT_VERSION}: upgrade gpunet or re-save the model")
    return meta, arrays


#: bounds on what a model file may declare, checked before anything is allocated
MAX_META_BYTES = 1 << 20
MAX_JSON_DEPTH = 16
MAX_PARAMS = 1 << 31
_STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def _depth(obj, level=0):
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(obj, dict):
        return max([_depth(v, level + 1) for v in obj.values()] + [level])
    if isinstance(obj, list):
        return max([_depth(v, level + 1) for v in obj] + [level])
    return level


def _header(path, zf, member, max_bytes=None):
    """Shape and dtype an .npy member declares (read from its header only, with the data reader's checks:
    :func:`gpunet._files.npy_header`)."""
    with zf.open(member) as f:
        return npy_header(f, f"{path}: member {member}", MAX_PARAMS * 8 if max_bytes is None else max_bytes)


def _read_members(path, zf):
    """The members a model needs, each checked against the metadata before its data are read: only
    ``meta``, ``params`` and known optimizer states; metadata at most 1 MiB and 16 levels deep; every
    array 1-D, floating point, with exactly the parameter count the declared layers imply."""
    names = set(zf.namelist())
    known = {"meta.npy", "params.npy"} | {f"opt.{k}.npy" for k in _STATE_NAMES}
    if "meta.npy" not in names or "params.npy" not in names:
        raise ValueError(f"{path} is not a gpunet model file (missing 'meta' or 'params')")
    if names - known:
        raise ValueError(f"{path} has members a gpunet model never writes: {sorted(names - known)[:5]}")
    info = zf.getinfo("meta.npy")
    if info.file_size > MAX_META_BYTES:
        raise ValueError(f"{path}: metadata of {info.file_size:,} bytes (at most {MAX_META_BYTES:,})")
    shape, dtype = _header(path, zf, "meta.npy")
    if dtype.hasobject:
        raise ValueError(f"{path}: the metadata is a pickled object array, which gpunet never loads (not a "
                         "gpunet model, or a tampered one)")
    if dtype != np.uint8 or len(shape) != 1:
        raise ValueError(f"{path}: corrupted metadata (declared {dtype} {shape})")
    with zf.open("meta.npy") as f:
        raw = np.lib.format.read_array(f, allow_pickle=False)
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: corrupted metadata ({str(exc)[:200]})") from None
    if _depth(meta) > MAX_JSON_DEPTH:
        raise ValueError(f"{path}: metadata nested deeper than {MAX_JSON_DEPTH} levels")
    layers = meta.get("layers") if isinstance(meta, dict) else None
    if (not isinstance(layers, list) or len(layers) < 2 or len(layers) > 1000
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n < MAX_PARAMS for n in layers)):
        raise ValueError(f"{path}: invalid architecture in metadata (layers {str(layers)[:80]})")
    n_params = sum(a * b + b for a, b in zip(layers[:-1], layers[1:]))
    if n_params > MAX_PARAMS:
        raise ValueError(f"{path}: the declared layers imply {n_params:,} parameters (at most {MAX_PARAMS:,})")
    arrays = {}
    for member in sorted(names - {"meta.npy"}):
        shape, dtype = _header(path, zf, member)
        if shape != (n_params,) or dtype.kind != "f" or dtype.itemsize not in (4, 8):
            what = "parameters" if member == "params.npy" else f"optimizer state {member[4:-4]!r}"
            raise ValueError(f"{path}: the {what} declare {dtype} {shape}, but the architecture {layers} "
                             f"needs ({n_params},) floats (checked before reading it)")
        with zf.open(member) as f:
            arrays[member[:-4]] = np.lib.format.read_array(f, allow_pickle=False)
    return meta, arrays


def _check_fields(path, meta):
    """Types and ranges of the metadata fields a model is rebuilt from (the file names every error)."""
    def bad(field, why):
        raise ValueError(f"{path}: metadata field {field!r} {why}")

    epochs = meta.get("epochs_trained", 0)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        bad("epochs_trained", f"must be an integer >= 0, got {epochs!r}")
    loss = meta.get("loss")
    if loss is not None and loss not in losses.LOSSES:
        bad("loss", f"must be one of {', '.join(losses.LOSSES)} or null, got {str(loss)[:40]!r}")
    opt = meta.get("optimizer")
    if opt is None:
        return
    if not isinstance(opt, dict) or opt.get("name") not in optim.OPTIMIZERS:
        bad("optimizer", f"must name one of {', '.join(optim.OPTIMIZERS)}, got {str(opt)[:60]!r}")
    steps = opt.get("step_count", 0)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        bad("optimizer.step_count", f"must be an integer >= 0, got {steps!r}")
    if not isinstance(opt.get("config"), dict) or not isinstance(opt.get("state", []), list):
        bad("optimizer", "needs a 'config' object and a 'state' list")
    names = opt.get("state", [])
    if not all(isinstance(n, str) and n in _STATE_NAMES for n in names) or len(set(names)) != len(names):
        bad("optimizer.state", f"must list distinct state buffer names among {', '.join(_STATE_NAMES)}, got "
                               f"{str(names)[:80]!r}")


def restore_into(model, path, meta, arrays):
    """Fill ``model`` (built from ``meta``'s architecture by :func:`gpunet.load`) with the parameters, optimizer,
    RNG and preprocessing state of a file that :func:`read` returned; every value is checked first."""
    params = arrays["params"]
    if params.ndim != 1 or params.shape[0] != model.n_params or params.dtype.kind != "f":
        raise ValueError(f"{path}: parameter buffer has shape {params.shape} and dtype {params.dtype}, but the "
                         f"architecture {meta['layers']} needs ({model.n_params},) floats")
    if not np.isfinite(params).all():
        raise ValueError(f"{path}: parameters contain NaN or Inf")
    checks.check_fits(f"{path}: the parameters", params, model.dtype)
    _check_fields(path, meta)
    model.params[...] = model.backend.to_device(model.padded(params), model.dtype)
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
        for k, v in state.items():
            if not np.isfinite(v).all() or (k != "exp_avg" and k != "momentum_buffer" and v.min() < 0):
                raise ValueError(f"{path}: optimizer state {k!r} must be finite" +
                                 ("" if k in ("exp_avg", "momentum_buffer") else " and non-negative"))
            checks.check_fits(f"{path}: optimizer state {k!r}", v, model.dtype)
        state = {k: model.padded(v.astype(model.dtype)) for k, v in state.items()}
        try:
            model.optimizer = optim.from_config(opt_meta["name"], opt_meta["config"], state, opt_meta["step_count"],
                                                model.backend)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid optimizer metadata ({exc})") from None
    model.metadata = meta
    return model
