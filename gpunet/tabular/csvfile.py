"""CSV and TSV files read into a :class:`~gpunet.tabular.raw.RawTable` through pyarrow's CSV parser (extra
``gpunet[tables]``): the header found by the ``csv`` module, the file cut into byte ranges at row starts (never
inside a quoted value) and parsed by parallel threads; one whole-file pass where ranges cannot be used."""
from __future__ import annotations

import bisect
import collections
import csv
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpunet._optional import import_optional
from gpunet.errors import DataError
from gpunet.tabular.raw import NULL_SET, NULLS, RawTable, arrow_chunk, arrow_kind

def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _has_header(rows):
    """Whether the first of ``rows`` (lists of str) is a header. A first row of numbers and missing cells is data.
    Otherwise it is a header, unless every one of its text cells is a value its column holds again further down
    (a headerless file whose labels are text: "5.1,3.5,setosa"); so "2019,2020,species" is a header."""
    first, rest = rows[0], rows[1:]
    text = [j for j, c in enumerate(first) if c.strip() not in NULL_SET and not _is_number(c)]
    if not text:
        return False
    if not rest:
        return True
    return not all(any(j < len(r) and r[j] == first[j] for r in rest) for j in text)


def _physical_lines(text):
    """The lines as pyarrow counts them for ``skip_rows``: ``\n``, ``\r\n`` or ``\r`` ends one (``str.splitlines``
    also splits at ``\x0c``, ``\x1c``, ``\u2028``, ..., which would skip a data row)."""
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _sample(p):
    with open(p, "rb") as f:
        raw = f.read(256 * 1024)
    try:
        sample = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(raw) - 4:  # not just a multi-byte character cut at the end of the sample
            raise DataError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start}); is it a binary file?") from None
        sample = raw[:exc.start].decode("utf-8-sig")
    if "\x00" in sample:
        raise DataError(f"{p} holds NUL bytes; is it a binary file?")
    return sample


def read_csv(p, text_columns):
    pacsv = import_optional("pyarrow.csv", f"reading {p.name}")
    pa = import_optional("pyarrow", f"reading {p.name}")
    sample = _sample(p)
    delimiter = "\t" if p.suffix.lower() in (".tsv", ".tab") else None
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(sample[:64 * 1024], delimiters=",;\t ").delimiter
        except csv.Error:
            delimiter = ","
    lines = _physical_lines(sample)
    lines = lines[:-1] if len(sample) == 256 * 1024 else lines
    rows = [r for r in csv.reader(lines[:201], delimiter=delimiter) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{p} holds no rows")
    header = _has_header(rows)
    width = len(rows[0])
    names = [c.strip() for c in rows[0]] if header else [f"column {j}" for j in range(width)]
    seen = set()
    dup = sorted({n for n in names if n in seen or seen.add(n)} - {""})
    if dup:
        raise DataError(f"{p}: duplicate column name(s) {', '.join(map(repr, dup))}; every column needs its own name")
    unnamed = [j + 1 for j, n in enumerate(names) if not n]
    if len(unnamed) > 1:  # one may be pandas' index (dropped later); more would share one output column
        raise DataError(f"{p}: columns {', '.join(map(str, unnamed))} have no name; name them in the header")
    arrow_names = [n if n else f"\x00unnamed {j}" for j, n in enumerate(names)]
    # the header is the first line with text; without one, the data start at the first line that is a row for
    # pyarrow: a line of tabs in a tab-separated file is a row of missing cells, not a blank line to skip
    first_line = next(i for i, line in enumerate(lines) if (line if header else line.replace(delimiter, "x")).strip())
    if header:
        try:
            next(csv.reader([lines[first_line]], delimiter=delimiter, strict=True))
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise DataError(f"{p}: the header line ends inside a quoted column name (a line break in a name?); "
                                f"the header must be one line") from None
    ragged = []

    def on_invalid(row):
        ragged.append(row)
        return "error"

    # pyarrow infers each column's type from the first range (_read_ranges); a later range that does not
    # convert (an integer column with a "1.5", a number column with text) makes the file read again with that
    # column widened along pyarrow's inference order (_wider; pyarrow/_csv.pyx, ConvertOptions.column_types)
    forced = {arrow_names[j]: pa.string() for j in _positions(names, text_columns)}
    data_lines = [line for line in lines[first_line + 1:] if line.strip()][:200]
    bytes_per_row = max(1.0, sum(len(line.encode()) + 1 for line in data_lines) / max(len(data_lines), 1))
    estimate = int(p.stat().st_size / bytes_per_row * 1.05) + 64
    read_options = dict(column_names=arrow_names, skip_rows=first_line + (1 if header else 0))
    parse_options = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid, ignore_empty_lines=True)
    convert = dict(null_values=NULLS, strings_can_be_null=True, true_values=[], false_values=[])
    split, seen, tried = True, {}, {}
    for _attempt in range(len(_ladder(pa)) * len(names) + 2):
        try:
            columns, info = _read_ranges(p, pa, pacsv, names, estimate, read_options, parse_options, convert, forced,
                                         split, seen)
            return RawTable(names, columns, not header, str(p), read_info=info)
        except pa.ArrowInvalid as exc:
            where = re.search(r"In CSV column #(\d+)", str(exc))
            name = arrow_names[int(where.group(1))] if where else None
            if split and (ragged or name is None):  # a parse problem: judged on the file read in one pass
                split = False
                ragged.clear()
                continue
            if ragged:
                raise DataError(_ragged_message(p, delimiter, width)) from None
            if name is None or forced.get(name) == pa.string():
                raise DataError(f"{p}: not a readable CSV file ({' '.join(str(exc).split())[:200]})") from None
            current = forced.get(name) or seen.get(name)
            tried.setdefault(name, set())
            if current is not None:
                tried[name].add(str(_later_type(current, pa)))  # the type that just failed
            forced[name] = _wider(current, pa, tried[name])
    raise DataError(f"{p}: not a readable CSV file")


def _later_type(t, pa):
    """The type the later ranges read a column with whose first range pyarrow typed ``t``: integers (a later "1.5")
    and all-missing columns as float64, anything else as ``t``."""
    return pa.float64() if pa.types.is_integer(t) or pa.types.is_null(t) else t


def _ladder(pa):
    """The types pyarrow's inference tries, in its order (pyarrow's ConvertOptions docs: null, int64, boolean,
    date32, time32, timestamp[s], timestamp[ns], float64, string); booleans are off (no true/false values)."""
    return [pa.date32(), pa.time32("s"), pa.timestamp("s"), pa.timestamp("ns"), pa.float64(), pa.string()]


def _wider(current, pa, tried=()):
    """The type to read a column with after it failed on a later cell: the next one pyarrow's inference would have
    tried after ``current`` (the first range's type, or the last widening) that has not failed yet (``tried``:
    their names), so a file read in ranges types each column as one pass over it would: a date column with a
    later datetime becomes a timestamp, and a column empty in the first range starts the order again."""
    ladder = _ladder(pa)
    if current is None or pa.types.is_null(current):
        candidates = ladder
    elif current in ladder:
        candidates = ladder[ladder.index(current) + 1:]
    elif pa.types.is_integer(current):
        candidates = [pa.float64(), pa.string()]
    else:
        candidates = [pa.string()]
    return next((t for t in candidates if str(t) not in tried), pa.string())


#: the first byte range of a CSV file, from which pyarrow infers each column's type, and the size of the later
#: ranges, which parser threads read side by side with those types
BLOCK_BYTES = 1 << 20
RANGE_BYTES = 4 << 20
WINDOW = 2


def parser_threads():
    """Threads that parse a CSV file's byte ranges at once: the cores this process may use, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


#: above this many quote characters a file is read in one whole-file pass: the quote scan would cost more than the
#: parallel parse saves
MAX_QUOTES = 1_000_000


def _quoted_spans(p, delimiter):
    """``[(open, close)]``: the byte offsets of every quoted value's quotes, by pyarrow's rules (its defaults: a
    quote opens a value only as the first character of a field, ``""`` inside a quoted value is a quote, a quote
    anywhere else is literal, as in ``5" tv``); ``None`` above :data:`MAX_QUOTES` quote characters."""
    quote, starters = ord('"'), {ord(delimiter), 10, 13}
    positions, before = [], []
    count, offset, last = 0, 0, 10  # the file's start counts as a line start
    with open(p, "rb") as f:
        while chunk := f.read(16 << 20):
            if b'"' not in chunk:  # memchr speed: most numeric tables hold no quotes at all
                last, offset = chunk[-1], offset + len(chunk)
                continue
            a = np.frombuffer(chunk, dtype=np.uint8)
            idx = np.flatnonzero(a == quote)
            count += len(idx)
            if count > MAX_QUOTES:
                return None
            prev = a[np.maximum(idx - 1, 0)]
            if idx[0] == 0:
                prev[0] = last
            if offset == 0 and chunk.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM: the text starts after it
                prev[idx == 3] = 10
            positions.append(idx + offset)
            before.append(prev)
            last, offset = int(a[-1]), offset + len(chunk)
    if not positions:
        return []
    pos, prev = np.concatenate(positions).tolist(), np.concatenate(before).tolist()
    spans, opened, i = [], None, 0
    while i < len(pos):
        if opened is None:
            if prev[i] in starters:
                opened = pos[i]
            i += 1
        elif i + 1 < len(pos) and pos[i + 1] == pos[i] + 1:
            i += 2  # "" inside a quoted value
        else:
            spans.append((opened, pos[i]))
            opened, i = None, i + 1
    if opened is not None:  # unterminated: to the end of the file
        spans.append((opened, offset))
    return spans


def _byte_ranges(p, first, size, delimiter):
    """``[(start, end)]`` covering the file: about ``first`` bytes, then ``size``-byte ranges, each extended to the
    end of a line outside every quoted value (:func:`_quoted_spans`), so a range always starts at the start of a
    row; ``None`` where the file holds too many quotes to scan (the caller reads it in one whole-file pass)."""
    total = p.stat().st_size
    if total <= first:
        return [(0, total)]
    spans = _quoted_spans(p, delimiter)
    if spans is None:
        return None
    opens = [a for a, _ in spans]
    bounds = [0]
    with open(p, "rb") as f:
        step = first
        while bounds[-1] + step < total:
            at = bounds[-1] + step
            while True:
                f.seek(at)
                f.readline()
                end = f.tell()  # just past the first line break at or after ``at``
                k = bisect.bisect_right(opens, end - 1) - 1
                if end < total and k >= 0 and spans[k][1] > end - 1:  # that line break is inside a quoted value
                    at = spans[k][1]
                    continue
                if f.read(3) == b"\xef\xbb\xbf":  # pyarrow would strip a BOM that starts a range: not here
                    at = end
                    continue
                break
            if end >= total:
                break
            bounds.append(end)
            step = size
    bounds.append(total)
    return list(zip(bounds[:-1], bounds[1:]))


def _read_ranges(p, pa, pacsv, names, estimate, read_options, parse_options, convert, forced, split=True,
                 seen=None):
    """The file parsed as byte ranges by :func:`parser_threads` threads (pyarrow's ``read_csv`` releases the GIL),
    each range's record batches copied in file order into preallocated NumPy columns, with a few ranges in flight,
    so the peak memory is the output and a few ranges, not a whole Arrow table beside it. pyarrow infers the
    types from the first range (as pyarrow's streaming reader does from its first block); the later ranges are read
    with those types (integers as float64), so a later cell that does not convert raises ``ArrowInvalid`` naming
    its column, as pyarrow's streaming reader would, and the caller reads the file again with that column widened.
    ``seen`` (a dict) receives the types inferred from the first range. ``split=False`` (the caller's fallback for
    a parse problem), or a file with too many quotes to scan, is read in one pass by pyarrow's whole-file reader
    instead, with the same copy."""
    ranges = _byte_ranges(p, BLOCK_BYTES, RANGE_BYTES, parse_options.delimiter) if split else None
    if ranges is None:  # pyarrow's whole-file reader (its streaming reader can drop the \n of a quoted \r\n at a
        # block boundary; a whole-file read gets it right): more memory, for the rare file that needs it
        # newlines_in_values: a quoted value may hold line breaks, so pyarrow's chunker must cut its blocks by
        # quotes (a range is parsed as one block: it needs no chunker, and skips that ~15% of the parse time)
        options = pacsv.ParseOptions(**{k: getattr(parse_options, k) for k in (
            "delimiter", "quote_char", "double_quote", "escape_char", "ignore_empty_lines", "invalid_row_handler")},
            newlines_in_values=True)
        table = pacsv.read_csv(p, read_options=pacsv.ReadOptions(**read_options, block_size=16 << 20),
                               parse_options=options,
                               convert_options=pacsv.ConvertOptions(**convert, column_types=forced))
        if seen is not None:
            seen.update({f.name: f.type for f in table.schema})
        return _copy_batches(p, pa, names, estimate, table.schema, table.to_batches()), {"ranges": 1, "threads": 1,
                                                                                         "one_pass": True}
    threads = min(parser_threads(), max(1, len(ranges) - 1))

    def parse(i, types):
        start, end = ranges[i]
        with open(p, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        options = dict(read_options, use_threads=False, block_size=max(BLOCK_BYTES, len(data) + 1))
        if i:
            options["skip_rows"] = 0  # a later range starts at a line start after the header
        return pacsv.read_csv(pa.BufferReader(data), read_options=pacsv.ReadOptions(**options),
                              parse_options=parse_options,
                              convert_options=pacsv.ConvertOptions(**convert, column_types=types))

    head = [parse(0, forced)]  # popped when copied, so no reference keeps it alive after that
    schema = head[0].schema
    later = {f.name: _later_type(f.type, pa) for f in schema}
    if seen is not None:
        seen.update({f.name: f.type for f in schema})  # inferred from the first range

    def tables():
        yield head.pop()
        if len(ranges) == 1:
            return
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpunet-csv") as pool:
            pending = collections.deque()
            following = iter(range(1, len(ranges)))
            try:
                for i in following:
                    pending.append(pool.submit(parse, i, later))
                    if len(pending) >= WINDOW * threads:
                        break
                while pending:
                    table = pending.popleft().result()
                    nxt = next(following, None)
                    if nxt is not None:
                        pending.append(pool.submit(parse, nxt, later))
                    yield table
                    del table
            finally:
                for future in pending:
                    future.cancel()

    batches = (batch for table in tables() for batch in table.to_batches())
    return _copy_batches(p, pa, names, estimate, schema, batches), {"ranges": len(ranges), "threads": threads}


def _copy_batches(p, pa, names, estimate, schema, batches):
    """Record batches copied in order into preallocated NumPy columns (grown when the estimate of the row count is
    short, trimmed at the end): float64 for numbers, object str for text."""
    kinds = [arrow_kind(p, name, schema.field(j).type, pa) for j, name in enumerate(names)]
    out = {n: np.empty(estimate, dtype=np.float64 if k == "number" else object) for n, k in zip(names, kinds)}
    pos = 0
    for batch in batches:
        n = batch.num_rows
        if pos + n > len(out[names[0]]):
            grow = max(2 * len(out[names[0]]), pos + n)
            for col in out.values():
                col.resize(grow, refcheck=False)
        for j, (name, kind) in enumerate(zip(names, kinds)):
            out[name][pos:pos + n] = arrow_chunk(batch.column(j), kind, pa)
        pos += n
    for col in out.values():
        col.resize(pos, refcheck=False)
    return out


def _positions(names, wanted):
    out = set()
    for w in wanted:
        if isinstance(w, int) and not isinstance(w, bool) and -len(names) <= w < len(names):
            out.add(w % len(names))
        elif w in names:
            out.add(names.index(w))
    return out


def _ragged_message(p, delimiter, width):
    with open(p, newline="", encoding="utf-8-sig", errors="replace") as f:
        for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if any(c.strip() for c in row) and len(row) != width:
                return f"{p}: line {line} has {len(row)} fields, expected {width} (ragged rows)"
    return f"{p}: ragged rows"
