"""Input validation at the public boundary (scikit-learn's ``validate_data`` idea).

Everything here runs on the host before anything is uploaded or any state changes, and raises
``ValueError``/``TypeError`` with a message that says what is wrong and how to fix it. Internal
functions trust their inputs.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def check_int(name, value, low=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_fraction(name, value, high_open=True):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1{')' if high_open else ']'}, got {value}")
    return value


def check_nonnegative(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (value >= 0.0 and value != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def check_layers(layers):
    try:
        sizes = list(layers)
    except TypeError:
        raise TypeError(f"layers must be a sequence of layer sizes such as [784, 128, 10], got {layers!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"layers needs at least an input and an output size, got {sizes!r}")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"every layer size must be an integer >= 1, got {sizes!r}")
    return tuple(int(s) for s in sizes)


#: DLPack device types (dlpack.h ``DLDeviceType``): kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13
_DLPACK_CPU, _DLPACK_CUDA = (1, 3), (2, 13)


def _dlpack_device_type(X):
    try:
        return int(X.__dlpack_device__()[0])
    except Exception:  # noqa: BLE001  (no or broken __dlpack_device__: not a DLPack array)
        return None


def is_device_array(X) -> bool:
    """Whether ``X`` lives in CUDA memory (CuPy, or any ``__dlpack__`` object on a CUDA device)."""
    if isinstance(X, np.ndarray):
        return False
    if hasattr(X, "__cuda_array_interface__") or type(X).__module__.startswith("cupy"):
        return True
    return hasattr(X, "__dlpack__") and _dlpack_device_type(X) in _DLPACK_CUDA


def host_view(name, X):
    """Host arrays from other libraries without a copy where the memory allows it: any object with
    ``__dlpack__`` on the CPU (PyTorch, JAX, NumPy itself) through ``np.from_dlpack``, which shares the
    producer's memory; pandas/polars frames and series through their ``to_numpy()``. CUDA arrays must
    be copied to the host explicitly by the caller (see :meth:`gpunet.backend.Backend.to_device`)."""
    if isinstance(X, np.ndarray):
        return X
    if hasattr(X, "__dlpack__") and _dlpack_device_type(X) in _DLPACK_CPU:
        try:
            return np.from_dlpack(X)
        except Exception as exc:  # e.g. a PyTorch tensor that requires grad
            raise TypeError(f"{name}: could not read the array through DLPack ({exc})") from None
    if hasattr(X, "to_numpy") and callable(X.to_numpy):  # pandas / polars DataFrame or Series
        return X.to_numpy()
    return X


def is_sparse(X) -> bool:
    """A SciPy sparse matrix or array (recognised without importing SciPy)."""
    return type(X).__module__.startswith("scipy.sparse") and hasattr(X, "toarray")


def check_sparse_X(X, n_features, name="X", standardised=False):
    """A SciPy sparse matrix of real numbers with ``n_features`` columns and at least one row (its values are
    checked for NaN/Inf where it is converted, :class:`gpunet.backend.SparseRows`), for a model that does not
    standardise its inputs (which would densify them)."""
    if standardised:
        raise TypeError(f"{name} is sparse, and this model standardises its inputs (which would densify them): "
                        "pass a dense array")
    if X.ndim != 2 or X.shape[1] != n_features or X.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n_samples >= 1, {n_features}), got {tuple(X.shape)}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
    return X


def as_float_array(name, X):
    """A host float64-or-float32 ndarray from array-likes; rejects objects, strings, complex, sparse matrices."""
    if is_sparse(X):
        raise TypeError(f"{name} is a sparse matrix ({type(X).__name__}); here gpunet takes dense arrays: densify it "
                        f"with {name}.toarray() (MLP.fit, predict and evaluate, and gpunet.sklearn, take sparse inputs)")
    if is_device_array(X):
        raise TypeError(f"{name} is a CUDA array but this model is on the CPU: copy it to the host first "
                        "(e.g. cupy.asnumpy(X)), or build the model with device='cuda'")
    try:
        arr = np.asarray(host_view(name, X))
    except TypeError:
        raise
    except Exception as exc:
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.float64)
    return arr


def check_fits(name, arr, dtype):
    """Finite after the cast to the model's ``dtype`` too: 1e39 is a finite float64 but Inf in float32."""
    dtype = np.dtype(dtype)
    if arr.dtype.kind in "iuf" and arr.size and dtype.kind == "f" and float(np.finfo(dtype).max) < _max_abs(arr):
        raise ValueError(f"{name} has values up to {_max_abs(arr):.3g}, which overflow {dtype} (largest "
                         f"{np.finfo(dtype).max:.3g}): rescale the data or use dtype='float64'")
    return arr


def _max_abs(arr):
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(arr)))


def check_bool(name, value):
    """A real boolean (``"False"`` is a non-empty string, hence truthy: refuse it instead of guessing)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_finite(name, arr):
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")


def check_X(X, n_features, name="X"):
    """Validate inputs of shape (n_samples, n_features)."""
    arr = as_float_array(name, X)
    if arr.ndim == 1 and n_features == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features but the network's input layer has {n_features}")
    check_finite(name, arr)
    return arr


def check_targets(y, n_samples, n_outputs, loss, name="y"):
    """Validate targets for ``loss``; return a float64 host array of shape (n_samples, n_outputs).

    Cross-entropy takes integer class labels (n,) in [0, n_outputs) or one-hot/probability rows
    (n, n_outputs); binary cross-entropy takes values in [0, 1]; MSE/MAE take any finite values.
    """
    if y is None:
        raise ValueError(f"{name} is required: pass the targets as well as the inputs (got None)")
    arr = as_float_array(name, y)
    if arr.shape[:1] != (n_samples,):
        got = arr.shape[0] if arr.ndim else "a scalar"
        raise ValueError(f"{name} has {got} samples but X has {n_samples}")
    check_finite(name, arr)
    if loss == "cross_entropy":
        if arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1 and n_outputs > 1):
            labels = arr.reshape(-1)
            if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
                raise ValueError(f"{name}: cross_entropy needs integer class labels, got non-integer values")
            lo, hi = labels.min(), labels.max()
            if lo < 0 or hi >= n_outputs:
                raise ValueError(f"{name}: class labels must be in [0, {n_outputs - 1}] for {n_outputs} outputs, "
                                 f"got values in [{lo:g}, {hi:g}]")
            onehot = np.zeros((n_samples, n_outputs))
            onehot[np.arange(n_samples), labels.astype(np.int64)] = 1.0
            return onehot
        if arr.ndim != 2 or arr.shape[1] != n_outputs:
            raise ValueError(f"{name} must be class labels (n,) or one-hot rows (n, {n_outputs}), got shape {arr.shape}")
        if arr.min() < 0:
            raise ValueError(f"{name}: one-hot/probability targets must be >= 0")
        sums = arr.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1.0) > 1e-6 * n_outputs)
        if off.size:  # the softmax cross-entropy gradient (a - y) / n assumes rows that sum to 1
            raise ValueError(f"{name}: cross_entropy targets must be one-hot or probability rows summing to 1; "
                             f"row {int(off[0])} sums to {sums[off[0]]:g} ({off.size} such rows)")
        return arr.astype(np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}) to match the output layer, got {arr.shape}")
    if loss == "binary_cross_entropy" and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{name}: binary_cross_entropy targets must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]")
    if loss == "poisson" and arr.min() < 0:
        raise ValueError(f"{name}: poisson targets must be counts or rates >= 0, got a minimum of {arr.min():g}")
    return arr.astype(np.float64)


def check_sample_weight(sample_weight, n_samples, name="sample_weight"):
    """Per-sample weights: None, or a finite non-negative (n_samples,) array with a positive sum. Returns
    a float64 (n_samples, 1) host array, or None when the weights are absent or all equal (a weighted
    mean with equal weights is the plain mean: the unweighted, fused path then trains bit for bit alike)."""
    if sample_weight is None:
        return None
    w = as_float_array(name, sample_weight).astype(np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"{name} must have shape ({n_samples},) (one weight per sample), got {w.shape}")
    check_finite(name, w)
    if n_samples and w.min() < 0:
        raise ValueError(f"{name} must be >= 0, got a minimum of {w.min():g}")
    if n_samples and not w.sum() > 0:
        raise ValueError(f"{name} sums to 0: at least one sample needs a positive weight")
    if n_samples == 0 or np.all(w == w[0]):
        return None
    # a weighted mean does not depend on the weights' scale: bring the largest into [0.5, 1) by a power of two
    # (exact), so that float32 neither overflows (1e39) nor underflows (1e-50) weights that float64 holds
    return np.ldexp(w, -int(np.frexp(w.max())[1])).reshape(-1, 1)


def check_standardisation(mean, scale, n_features, where="model", dtype=None):
    """``input_mean``/``input_scale``: None or finite float64 arrays of shape (n_features,), scale > 0.
    Returns both as arrays (a missing one is the identity: zeros / ones)."""
    out = []
    for name, value, default in (("input_mean", mean, 0.0), ("input_scale", scale, 1.0)):
        if value is None:
            out.append(np.full(n_features, default))
            continue
        arr = as_float_array(f"{where} {name}", value).astype(np.float64)
        if arr.shape != (n_features,):
            raise ValueError(f"{where} {name} must have shape ({n_features},), got {arr.shape}")
        check_finite(f"{where} {name}", arr)
        out.append(arr)
    if (out[1] <= 0).any():
        raise ValueError(f"{where} input_scale must be > 0 everywhere, got {out[1].min():g}")
    if dtype is not None:  # the values as the device holds them: a scale of 1e-40 is 0 (or subnormal) in float32
        info = np.finfo(np.dtype(dtype))
        small = out[1] < float(info.tiny)
        if small.any() or (np.abs(out[0]) > float(info.max)).any() or (out[1] > float(info.max)).any():
            j = int(np.argmax(small)) if small.any() else int(np.argmax(np.abs(out[0]) + out[1]))
            raise ValueError(f"{where} standardisation of input {j} (mean {out[0][j]:.3g}, scale {out[1][j]:.3g}) is "
                             f"not representable in {np.dtype(dtype)}: rescale the column or use dtype='float64'")
    return out[0], out[1]


def check_hyper(name, value, low=0.0, high=None, low_open=False):
    """A finite float hyper-parameter in ``[low, high)`` (``(low, high)`` with ``low_open``)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    bad = not math.isfinite(value) or value < low or (low_open and value == low) or (high is not None and value >= high)
    if bad:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return value


def encode_labels(classes, y, name="y"):
    """Original labels -> class indices for a model with ``classes`` (a host 1-D array); else ``y`` unchanged."""
    if classes is None:
        return y
    arr = np.asarray(y)
    if arr.ndim != 1:
        return y  # one-hot / probability rows
    index = {c: i for i, c in enumerate(classes.tolist())}
    try:
        return np.array([index[v] for v in arr.tolist()], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{name} holds the label {exc.args[0]!r}, which is not one of this model's classes "
                         f"{classes.tolist()!r}") from None
    except TypeError:
        raise ValueError(f"{name} holds unhashable labels") from None
