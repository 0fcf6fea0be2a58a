"""The user's files read into a :class:`RawTable` of named columns: CSV/TSV through pyarrow's CSV parser, byte
ranges in parallel threads (:mod:`.csvfile`, extra ``gpunet[tables]``), Parquet through pyarrow, ``.npz`` (``X``,
``y``) and ``.npy`` pairs.

A column is either numeric (float64, NaN where a cell is missing) or text (an object array of ``str``, ``None``
where a cell is missing), so that "007" and "7" stay two labels. Files are a trust boundary: sizes are checked
before anything is read (``$GPUNET_MAX_DATA_BYTES``, default 2 GiB, bounds a file and the size every array
header declares), arrays are never unpickled, and every problem raises :class:`DataError` (a ``ValueError``)
with one line naming the file and the place.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from gpunet._files import npy_header
from gpunet._optional import import_optional
from gpunet.errors import DataError
from gpunet.tabular.csvfile import read_csv
from gpunet.tabular.raw import RawTable, from_arrow

SUFFIXES = (".csv", ".tsv", ".tab", ".txt", ".npz", ".npy", ".parquet", ".pq")


def max_bytes():
    try:
        return int(os.environ.get("GPUNET_MAX_DATA_BYTES", 2 << 30))
    except ValueError:
        raise DataError(f"GPUNET_MAX_DATA_BYTES must be an integer, got {os.environ['GPUNET_MAX_DATA_BYTES']!r}") from None


def check_file(path):
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


def read(path, text_columns=()):
    """Read ``path`` into a :class:`RawTable`. ``text_columns``: names or indices (-1: the last) of CSV columns
    read as text whatever they hold (the target: "007" and "7" are two labels)."""
    p = check_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        table = _read_npz(p)
    elif suffix == ".npy":
        table = _read_npy(p)
    elif suffix in (".parquet", ".pq"):
        table = _read_parquet(p)
    elif suffix in SUFFIXES or suffix == "":
        table = read_csv(p, text_columns)
    else:
        raise DataError(f"{p}: unknown data format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    if not table.names:
        raise DataError(f"{p} holds no columns")
    if len(table) == 0:
        raise DataError(f"{p} has a header but no data rows" if not table.headerless else f"{p} holds no rows")
    return _drop_index(table)


def _drop_index(table):
    """pandas' ``to_csv`` writes the index as an unnamed first column holding 0..n-1: it would leak the row order
    into the features, so it is dropped, with a note."""
    first = table.names[0]
    col = table.columns[first]
    if not table.headerless and first in ("", "Unnamed: 0") and col.dtype.kind == "f" and len(table.names) > 1:
        if np.array_equal(col, np.arange(len(col))):
            out = table.drop(first)
            out.notes.append(f"dropped the unnamed first column of {table.path} (a 0..{len(col) - 1} row index, as "
                             f"pandas' to_csv writes it)")
            return out
    if "" in table.columns:
        raise DataError(f"{table.path}: column {table.names.index('') + 1} has no name; name it in the header")
    return table


# ----------------------------------------------------------------------------- Parquet
def _read_parquet(p):
    pq = import_optional("pyarrow.parquet", f"reading Parquet ({p.name})")
    pa = import_optional("pyarrow", f"reading Parquet ({p.name})")
    try:
        pf = pq.ParquetFile(p)
        table = pf.read()
    except Exception as exc:  # pyarrow raises its own error types for bad files
        raise DataError(f"{p}: not a readable Parquet file ({' '.join(str(exc).split())[:200]})") from None
    names = list(table.column_names)
    if not names:
        raise DataError(f"{p} holds no columns")
    if table.num_rows == 0:
        raise DataError(f"{p} holds no rows")
    bad = [f"{n!r} ({table.schema.field(n).type})" for n in names
           if pa.types.is_nested(table.schema.field(n).type) or pa.types.is_binary(table.schema.field(n).type)
           or pa.types.is_large_binary(table.schema.field(n).type)]
    if bad:
        raise DataError(f"{p}: column(s) {', '.join(bad)} hold lists, structs or bytes; gpunet reads numbers and "
                        f"text only (flatten or drop them)")
    seen = set()
    dup = sorted({n for n in names if n in seen or seen.add(n)})
    if dup:
        raise DataError(f"{p}: duplicate column name(s) {', '.join(map(repr, dup))}")
    return RawTable(names, {n: from_arrow(p, n, table.column(n), pa) for n in names}, False, str(p))


# ----------------------------------------------------------------------------- binary arrays
def load_npy(open_stream, where, limit=None):
    """An array from an ``.npy`` stream (``open_stream()`` opens it), its header checked before the data are read
    (:func:`gpunet._files.npy_header`: no pickle, the declared size within the limit)."""
    limit = max_bytes() if limit is None else limit
    with open_stream() as f:
        try:
            shape, dtype = npy_header(f, where, limit)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    if dtype.kind not in "biufUS" or len(shape) not in (1, 2):
        raise DataError(f"{where}: the array has dtype {dtype} and shape {shape}; expected numbers (or labels) "
                        f"with 1 or 2 dimensions")
    if 0 in shape:
        raise DataError(f"{where}: the array is empty")
    with open_stream() as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{where}: not a readable array ({' '.join(str(exc).split())[:160]})") from None


def _read_npz(p):
    limit = max_bytes()
    arrays = {}
    try:
        with zipfile.ZipFile(p) as zf:  # bound the decompressed sizes before numpy reads anything
            names = zf.namelist()
            if "X.npy" not in names:
                raise DataError(f"{p}: a .npz data file needs arrays 'X' and 'y', it has "
                                f"{[n[:-4] for n in names]}")
            for info in zf.infolist():
                if info.file_size > limit:
                    raise DataError(f"{p}: member {info.filename} is {info.file_size:,} bytes uncompressed, over the "
                                    f"limit of {limit:,} (raise $GPUNET_MAX_DATA_BYTES)")
            for member in ("X.npy", "y.npy"):
                if member in names:
                    arrays[member[0]] = load_npy(lambda m=member: zf.open(m), f"{p}: array {member[0]!r}", limit)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npz file ({exc})") from None
    return _pair(p, arrays["X"], arrays.get("y"))


def _read_npy(p):
    X = load_npy(lambda: open(p, "rb"), str(p))
    target = None
    stem = p.stem
    for a, b in (("X", "y"), ("x", "y"), ("features", "labels"), ("features", "targets")):
        if a in stem:
            candidate = p.with_name(stem[::-1].replace(a[::-1], b[::-1], 1)[::-1] + p.suffix)
            if candidate.is_file():
                target = candidate
                break
    y = None
    if target is not None:
        y = read_targets_npy(target)
    return _pair(p, X, y)


def read_targets_npy(path):
    """``--target y.npy``: the targets of an ``.npy`` feature file."""
    path = check_file(path)
    return load_npy(lambda: open(path, "rb"), str(path))


def _pair(p, X, y):
    """Arrays as a headerless table: columns ``x0..``, the targets as column ``y`` (text when they are text)."""
    if X.dtype.kind not in "biuf":
        raise DataError(f"{p}: X must hold numbers, got dtype {X.dtype}")
    X = X.reshape(-1, 1) if X.ndim == 1 else X
    names = [f"x{j}" for j in range(X.shape[1])]
    columns = {n: np.ascontiguousarray(X[:, j], dtype=np.float64) for j, n in enumerate(names)}
    if y is not None:
        if len(y) != len(X):
            raise DataError(f"{p}: X has {len(X)} rows but y has {len(y)}")
        if y.dtype.kind in "US":
            y = np.array([str(v) for v in y.tolist()], dtype=object)
        elif y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        names.append("y")
        columns["y"] = y
    return RawTable(names, columns, True, str(p))
