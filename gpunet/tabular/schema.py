"""A table's schema, stored in the model (JSON, no pickle) and enforced at every door: the feature columns by
name and in order, each one's kind, and the preprocessing fitted on the training split, as scikit-learn's
``ColumnTransformer([("num", SimpleImputer("median", add_indicator=True), numeric),
("cat", OneHotEncoder(handle_unknown="ignore", max_categories=k), categorical)])`` would do it.

Two stages, so the device does the arithmetic and the host only what needs Python objects:

- :meth:`Schema.codes` (host): any table-like input (a file's :class:`RawTable`, a pandas DataFrame, a dict of
  columns, or a 2-D array in the schema's order) to a float64 matrix with one column per feature: the number
  (NaN where missing) for a numeric feature, the category's index for a categorical one (``-1``: never seen in
  training). Columns are selected by name; missing ones are refused, naming them; extra ones are ignored with one
  :class:`TableWarning`.
- :meth:`Schema.expand` (device, any array-API namespace): that matrix to the network's inputs: numeric columns
  with NaN replaced by the training median, one missing-indicator column per numeric feature that had missing
  values in training, and the one-hot block of every categorical feature (an index of ``-1`` gives zeros).
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np

from gpunet.errors import DataError
from gpunet.tabular.raw import NULL_SET, RawTable

#: default cap on one-hot columns per categorical feature (the rarer categories share one "other" column)
MAX_CATEGORIES = 20
#: a text column with more distinct values than this is an identifier or free text, not a category
MAX_DISTINCT = 1000
#: training-row hashes kept in the model (a bottom-k sample) to detect evaluation on training rows
ROW_SAMPLE = 2048


class TableWarning(UserWarning):
    """Something about an input table the caller should know (ignored columns, unseen categories)."""


def _names(values):
    shown = ", ".join(repr(v) for v in values[:8])
    return shown + (f", ... ({len(values)} in all)" if len(values) > 8 else "")


def as_text(col):
    """A column as an object array of str (None where missing); integral numbers as integers ("3", not "3.0")."""
    col = np.asarray(col)
    if col.dtype.kind in "biuf":
        f = col.astype(np.float64)
        out = np.empty(len(f), dtype=object)
        for i, v in enumerate(f.tolist()):
            out[i] = None if v != v else (str(int(v)) if v == int(v) and abs(v) < 2 ** 53 else repr(v))
        return out
    out = np.empty(len(col), dtype=object)
    for i, v in enumerate(col.tolist()):
        out[i] = None if v is None or (isinstance(v, float) and v != v) or \
            (isinstance(v, str) and v.strip() in NULL_SET) else str(v)
    return out


def as_number(col, where):
    """A column as float64 (NaN where missing); DataError naming the first cell that is not a number."""
    col = np.asarray(col)
    if col.dtype.kind in "biuf":
        return col.astype(np.float64)
    if col.dtype.kind == "b":
        return col.astype(np.float64)
    out = np.empty(len(col))
    for i, v in enumerate(col.tolist()):
        if v is None or (isinstance(v, str) and v.strip() in NULL_SET):
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise DataError(f"{where}: row {i + 1} holds {str(v)[:40]!r}, which is not a number") from None
    return out


def _mostly_numbers(text):
    present = [t for t in text.tolist() if t is not None]
    if not present:
        return None
    bad = []
    for t in present:
        try:
            float(t)
        except ValueError:
            bad.append(t)
    return bad[:3] if len(bad) <= 0.1 * len(present) else None


class Schema:
    """See the module docstring. ``features``: one dict per feature column, in the order the network sees them:
    ``{"name", "kind": "numeric", "median": float or None, "indicator": bool}`` or ``{"name", "kind":
    "categorical", "categories": [str or None, ...], "infrequent": [str or None, ...]}`` (None is the missing
    category; the infrequent ones share the "other" column)."""

    def __init__(self, features, target=None, headerless=False, impute=True, train_rows=None):
        self.features = features
        self.target = target
        self.headerless = bool(headerless)
        self.impute = bool(impute)
        self.train_rows = train_rows  # {"n": int, "hashes": [16-hex str]} or None
        self.names = [f["name"] for f in features]

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, table, features, rows, target=None, impute=True, encode=True, max_categories=MAX_CATEGORIES,
            categorical=()):
        """Kinds, medians and categories from the training ``rows`` of ``table`` (a :class:`RawTable`).
        ``impute=False`` / ``encode=False`` refuse missing numbers / text columns, listing every offending column
        in one message."""
        where = table.path or "the table"
        unknown = [c for c in categorical if c not in features]
        if unknown:
            raise DataError(f"--categorical: no feature column(s) {_names(unknown)} in {where}")
        out, missing, text, infinite, empty, wide, numeric_like = [], [], [], [], [], [], []
        for name in features:
            col = table.columns[name]
            values = None
            if col.dtype.kind != "f" and name not in categorical:
                values = as_text(col)
                if _mostly_numbers(values) == []:  # text cells that are all numbers (or missing markers such as "?")
                    col = as_number(values, f"{where}: column {name!r}")
            if col.dtype.kind == "f" and name not in categorical:
                if np.isinf(col).any():
                    infinite.append(name)
                nan = np.isnan(col)
                if nan.any():
                    missing.append(f"{name!r} ({int(nan.sum())} missing, first in row {int(np.argmax(nan)) + 1})")
                train = col[rows]
                ok = train[~np.isnan(train)]
                if not ok.size:
                    empty.append(name)
                    continue
                had = bool(np.isnan(train).any())
                out.append({"name": name, "kind": "numeric", "median": float(np.median(ok)) if impute else None,
                            "indicator": had and impute})
                continue
            values = as_text(col) if values is None else values
            mostly = _mostly_numbers(values) if col.dtype.kind != "f" else None
            if mostly and name not in categorical:
                numeric_like.append(f"{name!r} (e.g. {', '.join(map(repr, mostly))})")
                continue
            if not encode:
                text.append(name)
                continue
            keys = np.array(["\x00" if v is None else v for v in values[rows].tolist()], dtype=object)
            uniq, counts = np.unique(keys, return_counts=True)
            if len(uniq) > MAX_DISTINCT:
                wide.append(f"{name!r} ({len(uniq)} distinct values)")
                continue
            order = sorted(range(len(uniq)), key=lambda i: (-counts[i], uniq[i]))
            cats = [None if uniq[i] == "\x00" else str(uniq[i]) for i in order]
            out.append({"name": name, "kind": "categorical", "categories": cats[:max_categories],
                        "infrequent": cats[max_categories:]})
        problems = []
        if infinite:
            problems.append(f"infinite values in {_names(infinite)}")
        if empty:
            problems.append(f"no values at all in the training split of {_names(empty)} (drop them)")
        if numeric_like:
            problems.append(f"numbers with a few text cells in {', '.join(numeric_like)}: fix those cells, or "
                            f"write them as empty (missing) cells")
        if wide:
            problems.append(f"too many distinct values to one-hot encode in {', '.join(wide)} (an identifier or "
                            f"free text? drop it)")
        if missing and not impute:
            problems.append(f"missing values in {', '.join(missing)} (--no-impute; without it they are imputed with "
                            f"the training median)")
        if text:
            problems.append(f"non-numeric feature column(s) {_names(text)} (--no-encode; without it they are one-hot "
                            f"encoded)")
        if problems:
            raise DataError(f"{where}: " + "; ".join(problems))
        return cls(out, target, table.headerless, impute)

    # ------------------------------------------------------------------ sizes and names
    def width(self):
        """The number of network inputs the expansion gives."""
        n = 0
        for f in self.features:
            if f["kind"] == "numeric":
                n += 1 + bool(f["indicator"])
            else:
                n += len(f["categories"]) + bool(f["infrequent"])
        return n

    def input_names(self):
        """The names of the network's inputs, in :meth:`expand`'s order: numeric values, indicators, one-hots."""
        num = [f["name"] for f in self.features if f["kind"] == "numeric"]
        ind = [f"{f['name']} (missing)" for f in self.features if f["kind"] == "numeric" and f["indicator"]]
        cat = []
        for f in self.features:
            if f["kind"] == "categorical":
                cat += [f"{f['name']}={'(missing)' if c is None else c}" for c in f["categories"]]
                cat += [f"{f['name']}=(other)"] if f["infrequent"] else []
        return num + ind + cat

    def numeric_names(self):
        return [f["name"] for f in self.features if f["kind"] == "numeric"]

    def categorical_names(self):
        return [f["name"] for f in self.features if f["kind"] == "categorical"]

    def describe(self):
        n_cat = len(self.categorical_names())
        imputed = [f["name"] for f in self.features if f["kind"] == "numeric" and f["indicator"]]
        parts = [f"{len(self.features)} feature columns ({len(self.features) - n_cat} numeric, {n_cat} categorical)"]
        if imputed:
            parts.append(f"median-imputed with a missing indicator: {_names(imputed)}")
        if n_cat:
            parts.append("one-hot: " + ", ".join(f"{f['name']} ({len(f['categories'])}"
                                                  + (" + other" if f["infrequent"] else "") + ")"
                                                  for f in self.features if f["kind"] == "categorical"))
        return "; ".join(parts) + f" -> {self.width()} inputs"

    # ------------------------------------------------------------------ the host stage
    def _columns(self, X, name):
        """``(names, get(name) -> 1-D array, positional)`` of a table-like input."""
        if isinstance(X, RawTable):
            where = X.path or name
            if X.headerless and not self.headerless:
                raise DataError(f"{where} has no header, but the model was trained on named columns: add the header "
                                f"line ({_names(self.names)})")
            if self.headerless and not X.headerless and not set(self.names) <= set(X.names):
                raise DataError(f"{where} has a header, but the model was trained on a file without one: give the "
                                f"columns in the training order, without a header line")
            if self.headerless and not set(self.names) <= set(X.names) and len(X.names) == len(self.names):
                return self.names, dict(zip(self.names, (X.columns[n] for n in X.names))).__getitem__, where
            return list(X.names), X.columns.__getitem__, where
        if hasattr(X, "columns") and hasattr(X, "iloc"):  # a pandas DataFrame (duck-typed: pandas is optional)
            names = [str(c) for c in X.columns]
            lookup = dict(zip(names, X.columns))

            def get(n):
                col = X[lookup[n]]
                if getattr(col.dtype, "kind", "O") in "biuf":
                    return col.to_numpy(dtype=np.float64, na_value=np.nan)
                return col.to_numpy(dtype=object, na_value=None)
            return names, get, name
        if isinstance(X, dict):
            names = [str(k) for k in X]
            cols = {str(k): np.asarray(v) for k, v in X.items()}
            return names, cols.__getitem__, name
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != len(self.names):
            raise ValueError(f"{name} must have {len(self.names)} columns in the model's order ({_names(self.names)}), "
                             f"got shape {arr.shape}; or pass a DataFrame or a dict of columns by name")
        return self.names, dict(zip(self.names, arr.T)).__getitem__, name

    def ordered(self, X, name="X"):
        """The schema's columns of a table-like ``X`` as one 2-D object array in the schema's order (rows can then
        be sliced as an array's, by position, and the result is still read by name)."""
        names, get, where = self._columns(X, name)
        absent = [n for n in self.names if n not in set(names)]
        if absent:
            raise DataError(f"{where} lacks the column(s) {_names(absent)} the model was trained on")
        cols = [get(n) for n in self.names]
        out = np.empty((len(cols[0]), len(cols)), dtype=object)
        for j, col in enumerate(cols):
            out[:, j] = col
        return out

    def codes(self, X, name="X", dtype="float64"):
        """The host stage (see the module docstring): a float64 matrix (n, n_features)."""
        names, get, where = self._columns(X, name)
        seen = set()
        dup = sorted({n for n in names if n in seen or seen.add(n)})
        if dup:
            raise DataError(f"{where}: duplicate column name(s) {_names(dup)}")
        absent = [n for n in self.names if n not in seen]
        if absent:
            raise DataError(f"{where} lacks the column(s) {_names(absent)} the model was trained on")
        extra = [n for n in names if n not in set(self.names) and n != self.target]
        if extra:
            warnings.warn(f"{where}: ignored {len(extra)} column(s) the model does not use: {_names(extra)}",
                          TableWarning, stacklevel=5)
        cols = [get(n) for n in self.names]
        n = len(cols[0]) if cols else 0
        R = np.empty((n, len(self.names)))
        missing, unseen = [], []
        limit = float(np.finfo(np.dtype(dtype)).max)
        for j, (f, col) in enumerate(zip(self.features, cols)):
            if len(col) != n:
                raise DataError(f"{where}: column {f['name']!r} has {len(col)} rows, the others {n}")
            if f["kind"] == "numeric":
                v = as_number(col, f"{where}: column {f['name']!r}")
                if np.isinf(v).any() or np.nanmax(np.abs(v), initial=0) > limit:
                    raise DataError(f"{where}: column {f['name']!r} holds values that are infinite in {dtype}, first "
                                    f"in row {int(np.argmax(~(np.abs(np.nan_to_num(v)) <= limit))) + 1}")
                nan = np.isnan(v)
                if nan.any() and f["median"] is None:
                    missing.append(f"{f['name']!r} ({int(nan.sum())}, first in row {int(np.argmax(nan)) + 1})")
                R[:, j] = v
            else:
                text = as_text(col)
                index = {c: i for i, c in enumerate(f["categories"])}
                other = len(f["categories"])
                index.update({c: other for c in f["infrequent"]})
                keys = np.array(["\x00" if t is None else t for t in text.tolist()], dtype=object)
                uniq, inv = np.unique(keys, return_inverse=True)
                lookup = np.array([index.get(None if u == "\x00" else u, -1) for u in uniq.tolist()], dtype=np.float64)
                R[:, j] = lookup[inv.reshape(-1)]
                bad = lookup[inv.reshape(-1)] < 0
                if bad.any():
                    values = sorted({"(missing)" if u == "\x00" else u for u, c in zip(uniq.tolist(), lookup) if c < 0})
                    unseen.append(f"{f['name']!r}: {int(bad.sum())} row(s) ({_names(values)})")
        if missing:
            raise DataError(f"{where}: missing values in {', '.join(missing)}; the model was trained with --no-impute "
                            f"and cannot fill them")
        if unseen:
            warnings.warn(f"{where}: categories never seen in training, encoded as all zeros: {'; '.join(unseen)}",
                          TableWarning, stacklevel=5)
        return R

    # ------------------------------------------------------------------ the device stage
    def expand(self, R, to_device, dtype):
        """The device stage: ``R`` (n, n_features), in the model's ``dtype`` on its device, to the network's inputs.
        ``to_device(host_array, dtype)`` puts a constant on the same device (:meth:`gpunet.backend.Backend.to_device`)."""
        xp = R.__array_namespace__()
        num = [j for j, f in enumerate(self.features) if f["kind"] == "numeric"]
        parts = []
        if num:
            N = R if len(num) == R.shape[1] else xp.take(R, to_device(np.array(num), "int64"), axis=1)
            ind = [k for k, j in enumerate(num) if self.features[j]["indicator"]]
            if self.impute:
                nan = xp.isnan(N)
                med = to_device(np.array([[self.features[j]["median"] or 0.0 for j in num]]), dtype)
                parts.append(xp.where(nan, med, N))
                if ind:
                    parts.append(xp.astype(xp.take(nan, to_device(np.array(ind), "int64"), axis=1), R.dtype))
            else:
                parts.append(N)
        for j, f in enumerate(self.features):
            if f["kind"] == "categorical":
                k = len(f["categories"]) + bool(f["infrequent"])
                levels = to_device(np.arange(k).reshape(1, k), dtype)
                parts.append(xp.astype(R[:, j:j + 1] == levels, R.dtype))
        if len(parts) == 1 and parts[0] is not R:
            return parts[0]
        return xp.concat(parts, axis=1) if len(parts) > 1 else R + 0

    # ------------------------------------------------------------------ rows seen in training
    def remember_rows(self, R):
        """Keep a bottom-k sample of the training rows' hashes (the rows of :meth:`codes`)."""
        h = np.sort(np.unique(row_hashes(R)))[:ROW_SAMPLE]
        self.train_rows = {"n": int(len(R)), "hashes": [f"{int(v):016x}" for v in h]}

    def overlap(self, R):
        """``(rows found among the training rows, rows checked, exact)``, or None when nothing is stored."""
        if not self.train_rows or not self.train_rows["hashes"]:
            return None
        stored = np.array([int(v, 16) for v in self.train_rows["hashes"]], dtype=np.uint64)
        exact = self.train_rows["n"] <= ROW_SAMPLE
        h = row_hashes(R)
        checked = h <= stored.max() if not exact else np.ones(len(h), bool)
        found = np.isin(h[checked], stored)
        return int(found.sum()), int(checked.sum()), exact

    # ------------------------------------------------------------------ JSON
    def to_json(self):
        return {"features": self.features, "target": self.target, "headerless": self.headerless,
                "impute": self.impute, "train_rows": self.train_rows}

    @classmethod
    def from_json(cls, obj, where="model"):
        """A schema from its JSON, every field checked (the file is a trust boundary)."""
        def bad(why):
            raise ValueError(f"{where}: invalid table schema ({why})")

        if not isinstance(obj, dict) or not isinstance(obj.get("features"), list) or not obj["features"]:
            bad("needs a non-empty 'features' list")
        names = set()
        for f in obj["features"]:
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) or f["name"] in names:
                bad("every feature needs a distinct string 'name'")
            names.add(f["name"])
            if f.get("kind") == "numeric":
                m = f.get("median")
                if m is not None and (not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m)):
                    bad(f"median of {f['name']!r} must be a finite number or null")
                if not isinstance(f.get("indicator"), bool):
                    bad(f"indicator of {f['name']!r} must be true or false")
            elif f.get("kind") == "categorical":
                for key in ("categories", "infrequent"):
                    v = f.get(key)
                    if not isinstance(v, list) or not all(c is None or isinstance(c, str) for c in v) or \
                            len(v) > MAX_DISTINCT:
                        bad(f"{key} of {f['name']!r} must be a list of at most {MAX_DISTINCT} strings")
                if not f["categories"] or len(set(f["categories"] + f["infrequent"])) != \
                        len(f["categories"]) + len(f["infrequent"]):
                    bad(f"categories of {f['name']!r} must be distinct and not empty")
            else:
                bad(f"kind of {f['name']!r} must be 'numeric' or 'categorical'")
            if set(f) - {"name", "kind", "median", "indicator", "categories", "infrequent"}:
                bad(f"unknown fields in {f['name']!r}")
        if obj.get("target") is not None and not isinstance(obj["target"], str):
            bad("target must be a string or null")
        rows = obj.get("train_rows")
        if rows is not None and (not isinstance(rows, dict) or not isinstance(rows.get("n"), int)
                                 or not isinstance(rows.get("hashes"), list) or len(rows["hashes"]) > ROW_SAMPLE
                                 or not all(isinstance(h, str) and re.fullmatch("[0-9a-f]{16}", h)
                                            for h in rows["hashes"])):
            bad("train_rows must hold n and at most 2048 16-digit hex hashes")
        return cls(obj["features"], obj.get("target"), bool(obj.get("headerless")), bool(obj.get("impute", True)),
                   rows)

    def check_dtype(self, dtype, where="model"):
        """Every stored value representable in the model's dtype (a median of 1e39 is Inf in float32)."""
        limit = float(np.finfo(np.dtype(dtype)).max)
        for f in self.features:
            if f["kind"] == "numeric" and f["median"] is not None and abs(f["median"]) > limit:
                raise ValueError(f"{where}: the median {f['median']:.3g} of {f['name']!r} overflows {dtype}: rescale the "
                                 f"column or use dtype='float64'")


def row_hashes(R):
    """A 64-bit hash per row of a float64 matrix (NaN and -0.0 normalised), splitmix64-mixed column by column."""
    R = np.where(np.isnan(R), np.nan, R + 0.0)
    bits = np.ascontiguousarray(R, dtype=np.float64).view(np.uint64)
    h = np.full(len(R), 0x9E3779B97F4A7C15, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(bits.shape[1]):
            h = (h ^ bits[:, j]) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
            h = h * np.uint64(0x94D049BB133111EB)
            h ^= h >> np.uint64(29)
    return h
