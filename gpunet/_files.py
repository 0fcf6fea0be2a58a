"""Files as a trust boundary: atomic writes (a temporary file renamed over the target) and the clean-up of
temporaries an interrupted write left behind."""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time

import numpy as np


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``."""
    path = os.fsdecode(os.fspath(path))  # str, bytes or PathLike
    if os.path.islink(path):  # write through a symlink to its target (the link stays a link)
        path = os.path.realpath(path)
    if os.path.exists(path) and not os.path.isfile(path):  # never rename over /dev/null, a FIFO, a folder
        raise ValueError(f"refusing to write {path}: it exists and is not a regular file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path}: directory {directory} does not exist")
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    # an existing file keeps its permission bits; a new one gets the usual mode (mkstemp makes 0600 files)
    os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else 0o666 & ~umask)
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


#: temporary files of an interrupted save (killed process, power loss) older than this are removed by the next save
STALE_SECONDS = 3600


def _remove_stale_temporaries(path):
    directory, base = os.path.split(os.path.abspath(path))
    now = time.time()
    for name in os.listdir(directory):
        if name.startswith(base + ".") and name.endswith(".tmp") and len(name) == len(base) + 13:  # mkstemp: 8 chars
            full = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.isfile(full) and not os.path.islink(full) and now - os.stat(full).st_mtime > STALE_SECONDS:
                    os.unlink(full)


def npy_header(f, where, max_bytes):
    """Shape and dtype that an ``.npy`` stream declares, read from its header alone (``f`` is left at the start
    of the data), refused before anything is allocated when the dtype holds Python objects (pickle) or the
    declared size (shape x itemsize, not the file's size) is over ``max_bytes``. The one check of array headers
    shared by the data reader (:mod:`gpunet.tabular`) and the model loader (:mod:`gpunet.saving`); raises
    ``ValueError`` naming ``where``."""
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = reader(f)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ValueError(f"{where}: not a valid .npy array header ({str(exc)[:120]})") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: the array holds Python objects (dtype {dtype}), which would need pickle; "
                         f"gpunet never unpickles files: save numbers or fixed-width strings")
    declared = dtype.itemsize
    for n in shape:
        declared *= int(n)
    if declared > max_bytes:
        raise ValueError(f"{where}: the header declares shape {tuple(shape)} of {dtype}, {declared:,} bytes, over the "
                         f"limit of {max_bytes:,} (checked before reading)")
    return tuple(shape), dtype
