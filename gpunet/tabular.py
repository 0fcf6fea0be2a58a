"""The user's own tables: CSV/TSV (with or without a header), ``.npz`` (``X``, ``y``), ``.npy`` pairs and
Parquet (with pyarrow), read into a float64 feature matrix and a raw target column.

Files are a trust boundary: sizes are checked before anything is read (``$GPUNET_MAX_DATA_BYTES``, default
2 GiB, bounds a file and every array inside a ``.npz``), arrays are loaded with ``allow_pickle=False``, and
every problem raises :class:`DataError` (a ``ValueError``) with one line naming the file and the place:
a missing target column, non-numeric feature columns, ragged rows, NaNs, an empty file.
"""
from __future__ import annotations

import csv
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpunet.errors import DataError

SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".npz", ".npy", ".parquet", ".pq")
_MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}


@dataclass
class Table:
    X: np.ndarray                      # (n, d) float64, finite
    y: np.ndarray | None               # (n,) or (n, k) raw targets (strings or numbers), or None
    features: list = field(default_factory=list)
    target: str | None = None
    path: str = ""


def max_bytes():
    try:
        return int(os.environ.get("GPUNET_MAX_DATA_BYTES", 2 << 30))
    except ValueError:
        raise DataError(f"GPUNET_MAX_DATA_BYTES must be an integer, got {os.environ['GPUNET_MAX_DATA_BYTES']!r}") from None


def _check_file(path):
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such data file: {p}")
    if not p.is_file():
        raise DataError(f"{p} is not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise DataError(f"{p} is empty")
    if size > max_bytes():
        raise DataError(f"{p} is {size:,} bytes, over the limit of {max_bytes():,} (raise $GPUNET_MAX_DATA_BYTES)")
    return p


def read(path, target=None, require_target=True):
    """Read ``path``; ``target`` is a column name or index (CSV/Parquet; default the last column), or
    for ``.npy`` the path of the targets file (default: the sibling with ``X`` replaced by ``y``).
    With ``require_target=False`` a table without the target column is accepted (for prediction)."""
    p = _check_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_npz(p, require_target)
    if suffix == ".npy":
        return _read_npy(p, target, require_target)
    if suffix in (".parquet", ".pq"):
        header, columns = _read_parquet(p)
        return _from_columns(p, header, columns, target, require_target)
    if suffix in SUFFIXES or suffix == "":
        header, columns = _read_text(p)
        return _from_columns(p, header, columns, target, require_target)
    raise DataError(f"{p}: unknown data format {suffix!r}; use one of {', '.join(SUFFIXES)}")


# ----------------------------------------------------------------------------- text
def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return cell.strip().lower() in _MISSING
    return True


def _read_text(p):
    """(header or None, list of columns of strings) from a CSV/TSV file; the header is detected."""
    delimiter = "\t" if p.suffix.lower() in (".tsv", ".tab") else None
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            if delimiter is None:
                sample = f.read(64 * 1024)
                f.seek(0)
                try:
                    delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t ").delimiter
                except csv.Error:
                    delimiter = ","
            rows = [[c.strip() for c in row] for row in csv.reader(f, delimiter=delimiter)]
    except UnicodeDecodeError as exc:
        raise DataError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start}); is it a binary file?") from None
    except csv.Error as exc:
        raise DataError(f"{p}: not a valid CSV file ({exc})") from None
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(r)]  # blank lines are skipped
    if not numbered:
        raise DataError(f"{p} holds no rows")
    header = None
    first = numbered[0][1]
    second = numbered[1][1] if len(numbered) > 1 else None
    # a header is a first row with more non-numeric cells than the row after it (labels may be strings)
    if second is None or sum(not _is_number(c) for c in first) > sum(not _is_number(c) for c in second):
        if any(not _is_number(c) for c in first):
            header, numbered = first, numbered[1:]
    if not numbered:
        raise DataError(f"{p} has a header but no data rows")
    width = len(header) if header is not None else len(numbered[0][1])
    for line, row in numbered:
        if len(row) != width:
            raise DataError(f"{p}: line {line} has {len(row)} fields, expected {width} (ragged rows)")
    columns = [np.array([r[j] for _, r in numbered], dtype=object) for j in range(width)]
    lines = np.array([f"line {line}" for line, _ in numbered])
    return header, [(c, lines) for c in columns]


def _read_parquet(p):
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise DataError(f"reading Parquet ({p}) needs pyarrow: pip install 'gpunet[parquet]'") from None
    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises its own error types for bad files
        raise DataError(f"{p}: not a readable Parquet file ({exc})") from None
    rows = np.array([f"row {i + 1}" for i in range(table.num_rows)])
    columns = []
    for name in table.column_names:
        col = table.column(name).to_numpy(zero_copy_only=False)
        columns.append((col, rows))
    return list(table.column_names), columns


# ----------------------------------------------------------------------------- columns -> Table
def _column_index(p, header, n_cols, target):
    if target is None:
        return n_cols - 1
    if header is not None and str(target) in header:
        return header.index(str(target))
    try:
        idx = int(target)
    except (TypeError, ValueError):
        names = ", ".join(header) if header is not None else f"no header; give a column index 0..{n_cols - 1}"
        raise DataError(f"{p}: no target column {target!r} (columns: {names})") from None
    if not -n_cols <= idx < n_cols:
        raise DataError(f"{p}: target column index {idx} out of range for {n_cols} columns")
    return idx % n_cols


def _numeric(p, name, values, rows, what):
    """A float64 column from strings/objects/numbers, or DataError naming the column/row."""
    if values.dtype.kind in "biuf":
        arr = values.astype(np.float64)
    else:
        arr = np.empty(len(values))
        for i, v in enumerate(values):
            if v is None or (isinstance(v, str) and v.strip().lower() in _MISSING):
                arr[i] = np.nan
                continue
            try:
                arr[i] = float(v)
            except (TypeError, ValueError):
                raise DataError(f"{p}: {what} {name!r} is not numeric ({rows[i]}: {v!r}); encode it as numbers "
                                f"or drop it") from None
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise DataError(f"{p}: {what} {name!r} has {bad.size} missing or non-finite value(s), first at "
                        f"{rows[bad[0]]}; fill or drop them")
    return arr


def _from_columns(p, header, columns, target, require_target):
    n_cols = len(columns)
    names = header if header is not None else [f"column {j}" for j in range(n_cols)]
    t = None
    if require_target or (target is not None and header is not None and str(target) in header):
        if n_cols < 2 and require_target:
            raise DataError(f"{p} has {n_cols} column; it needs feature columns and a target column")
        t = _column_index(p, header, n_cols, target)
    feats = [j for j in range(n_cols) if j != t]
    non_numeric = []
    X_cols = []
    for j in feats:
        values, rows = columns[j]
        try:
            X_cols.append(_numeric(p, names[j], values, rows, "feature column"))
        except DataError as exc:
            if "is not numeric" not in str(exc):
                raise
            non_numeric.append(names[j])
    if non_numeric:
        raise DataError(f"{p}: non-numeric feature column(s) {', '.join(map(repr, non_numeric))}; encode them as "
                        f"numbers or drop them" + ("" if require_target or t is not None else
                                                   " (or name the target column with --target)"))
    X = np.stack(X_cols, axis=1) if X_cols else np.empty((len(columns[0][0]), 0))
    y = None
    if t is not None:
        values, rows = columns[t]
        y = _labels(p, names[t], values, rows)
    return Table(X, y, [names[j] for j in feats], None if t is None else names[t], str(p))


def _labels(p, name, values, rows):
    """Targets as numbers where every cell is a number, else as strings; missing values refused."""
    if values.dtype.kind in "biuf":
        out = values
    else:
        try:
            out = _numeric(p, name, values, rows, "target column")
        except DataError as exc:
            if "is not numeric" not in str(exc):
                raise
            out = np.array(["" if v is None else str(v) for v in values])
            missing = np.flatnonzero([v.strip().lower() in _MISSING for v in out])
            if missing.size:
                raise DataError(f"{p}: target column {name!r} is missing at {rows[missing[0]]}") from None
    if out.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise DataError(f"{p}: target column {name!r} has NaN or Inf, first at {rows[bad[0]]}")
        if np.all(out == np.round(out)) and np.abs(out).max(initial=0) < 2 ** 53:
            out = out.astype(np.int64)
    return out


# ----------------------------------------------------------------------------- binary arrays
def _check_array(p, name, arr, ndim):
    if arr.dtype.kind not in "biufUS" or arr.ndim not in ndim:
        raise DataError(f"{p}: array {name!r} has dtype {arr.dtype} and shape {arr.shape}; expected numbers "
                        f"with {' or '.join(map(str, ndim))} dimensions")
    if arr.size == 0:
        raise DataError(f"{p}: array {name!r} is empty")
    return arr


def _finite_X(p, X, name="X"):
    if X.dtype.kind not in "biuf":
        raise DataError(f"{p}: {name} must hold numbers, got dtype {X.dtype}")
    X = X.astype(np.float64).reshape(X.shape[0], -1) if X.ndim != 1 else X.astype(np.float64).reshape(-1, 1)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        raise DataError(f"{p}: {name} has {len(bad)} NaN/Inf value(s), first at row {bad[0][0]}, column {bad[0][1]}")
    return X


def _read_npz(p, require_target):
    limit = max_bytes()
    try:
        with zipfile.ZipFile(p) as zf:  # bound the decompressed sizes before numpy reads anything
            for info in zf.infolist():
                if info.file_size > limit:
                    raise DataError(f"{p}: member {info.filename} is {info.file_size:,} bytes uncompressed, over the "
                                    f"limit of {limit:,} (raise $GPUNET_MAX_DATA_BYTES)")
        with np.load(p, allow_pickle=False) as data:
            if "X" not in data.files or (require_target and "y" not in data.files):
                raise DataError(f"{p}: a .npz data file needs arrays 'X' and 'y', it has {data.files}")
            X = _check_array(p, "X", data["X"], (1, 2))
            y = _check_array(p, "y", data["y"], (1, 2)) if "y" in data.files else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npz file ({exc})") from None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{p}: cannot read ({exc}); pickled object arrays are not accepted") from None
    return _pair(p, X, y, "X", "y")


def _load_npy(p):
    try:
        return np.load(_check_file(p), allow_pickle=False)
    except (OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npy file ({exc})") from None
    except ValueError as exc:
        raise DataError(f"{p}: cannot read ({exc}); pickled object arrays are not accepted") from None


def _read_npy(p, target, require_target):
    X = _check_array(p, "X", _load_npy(p), (1, 2))
    if target is None:
        stem = p.stem
        for a, b in (("X", "y"), ("x", "y"), ("features", "labels"), ("features", "targets")):
            if a in stem:
                candidate = p.with_name(stem[::-1].replace(a[::-1], b[::-1], 1)[::-1] + p.suffix)
                if candidate.is_file():
                    target = candidate
                    break
    if target is None:
        if require_target:
            raise DataError(f"{p}: no targets for this .npy file; give --target PATH.npy (or name the files X.npy, "
                            f"y.npy)")
        return _pair(p, X, None, "X", "y")
    y = _check_array(Path(target), "y", _load_npy(target), (1, 2))
    return _pair(p, X, y, "X", f"{target}")


def _pair(p, X, y, xname, yname):
    Xf = _finite_X(p, X, xname)
    if y is not None:
        if len(y) != len(Xf):
            raise DataError(f"{p}: {xname} has {len(Xf)} rows but {yname} has {len(y)}")
        if y.dtype.kind in "US":
            y = y.astype(str)
        elif y.dtype.kind == "f":
            bad = np.argwhere(~np.isfinite(y.reshape(len(y), -1)))
            if bad.size:
                raise DataError(f"{p}: {yname} has NaN/Inf, first at row {bad[0][0]}")
    return Table(Xf, y, [f"x{j}" for j in range(Xf.shape[1])], None, str(p))


# ----------------------------------------------------------------------------- preparation
def infer_task(y):
    """"classify" for strings, booleans and integers with few distinct values, else "regress"."""
    if y.ndim == 2 and y.shape[1] > 1:
        return "regress"
    if y.dtype.kind in "USOb":
        return "classify"
    if y.dtype.kind in "iu":
        distinct = len(np.unique(y))
        return "classify" if distinct <= max(2, min(50, math.isqrt(len(y)) + 1)) else "regress"
    return "regress"


def split_indices(n, test_split, validation_split, seed):
    """A seeded permutation cut into (train, validation, test) index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_split * n)) if test_split else 0
    n_val = int(round(validation_split * n)) if validation_split else 0
    if test_split and n_test == 0:
        n_test = 1
    if validation_split and n_val == 0:
        n_val = 1
    if n - n_test - n_val < 1:
        raise DataError(f"{n} rows leave no training data after a test split of {n_test} and a validation split "
                        f"of {n_val}")
    return order[n_test + n_val:], order[n_test:n_test + n_val], order[:n_test]


def standardisation(X):
    """Mean and scale (population std, 1 where a column is constant), as scikit-learn's StandardScaler."""
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[~(scale > 0)] = 1.0
    return mean, scale
