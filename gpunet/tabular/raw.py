"""What every table reader returns: :class:`RawTable`, named columns of float64 (NaN = missing) or object ``str``
(None = missing), and the conversions of pyarrow columns into them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpunet.errors import DataError

#: cells read as missing: pyarrow's default null strings (pyarrow/_csv.pyx, ConvertOptions.null_values) and a few
#: more that hand-made tables use
NULLS = ['', '#N/A', '#N/A N/A', '#NA', '-1.#IND', '-1.#QNAN', '-NaN', '-nan', '1.#IND', '1.#QNAN', 'N/A', 'NA',
         'NULL', 'NaN', 'n/a', 'nan', 'null', 'na', 'Na', 'None', 'none', 'NONE', '?']
NULL_SET = set(NULLS)


@dataclass
class RawTable:
    """Named columns of equal length: float64 (NaN = missing) or object arrays of str (None = missing)."""
    names: list
    columns: dict
    headerless: bool = False
    path: str = ""
    notes: list = field(default_factory=list)
    #: how a CSV file was read: ``{"ranges": byte ranges parsed, "threads": parser threads}``
    read_info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.columns[self.names[0]]) if self.names else 0

    def take(self, idx):
        return RawTable(list(self.names), {k: v[idx] for k, v in self.columns.items()}, self.headerless, self.path)

    def drop(self, name):
        return RawTable([n for n in self.names if n != name], {k: v for k, v in self.columns.items() if k != name},
                        self.headerless, self.path, list(self.notes))


def arrow_kind(p, name, t, pa):
    if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
            pa.types.is_fixed_size_binary(t):
        raise DataError(f"{p}: column {name!r} holds {t} values; gpunet reads numbers and text only (flatten or "
                        f"drop it)")
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        return "number"
    return "text"


def arrow_chunk(arr, kind, pa):
    """One record batch's column as float64 (NaN = missing) or as str objects (None = missing); text is dictionary
    encoded first, so the object array holds one str per distinct value of the batch, not one per cell."""
    if kind == "number":
        if arr.type != pa.float64():
            arr = arr.cast(pa.float64())
        return arr.to_numpy(zero_copy_only=False)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.string())  # booleans, dates, times: their text
    encoded = arr.dictionary_encode()
    values = np.array(encoded.dictionary.to_pylist() + [None], dtype=object)
    indices = encoded.indices.fill_null(len(values) - 1)
    return values[indices.to_numpy(zero_copy_only=False)]


def from_arrow(p, name, col, pa):
    """A pyarrow column as float64 (NaN = missing) or object str (None = missing)."""
    t = col.type
    if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or \
            pa.types.is_fixed_size_binary(t):
        raise DataError(f"{p}: column {name!r} holds {t} values; gpunet reads numbers and text only (flatten or "
                        f"drop it)")
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        if col.num_chunks == 1 and col.null_count == 0 and t == pa.float64():
            return col.chunk(0).to_numpy(zero_copy_only=False)
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        try:
            col = col.cast(pa.string())  # booleans, dates, times: their text
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise DataError(f"{p}: column {name!r} holds {t} values, which gpunet cannot read as numbers or "
                            f"text") from None
    return col.to_numpy(zero_copy_only=False).astype(object, copy=False)
