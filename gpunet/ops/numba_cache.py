"""Where gpunet's compiled Numba kernels are cached (:mod:`gpunet.ops.numba_kernels` decorates them there)."""
from __future__ import annotations

import logging
import os
import tempfile

log = logging.getLogger("gpunet")


def cache_dir():
    """Where gpunet's compiled kernels are cached: ``$NUMBA_CACHE_DIR`` when the user set it, else
    ``$XDG_CACHE_HOME/gpunet/numba`` (``~/.cache/gpunet/numba``); ``None`` (no caching, compile once per
    process) when that folder cannot be written, e.g. a read-only container running as ``nobody``: an
    unwritable ``$NUMBA_CACHE_DIR`` is said once, as a warning. Never the installed package: Numba's own
    fallback for a cache folder it cannot write is the in-tree cache (``gpunet/ops/__pycache__``,
    ``numba/core/caching.py``: ``InTreeCacheLocator`` follows ``UserProvidedCacheLocator``), which outlives
    ``pip uninstall`` and a reinstall and then shadows the package; and where no locator can write, the
    ``njit(cache=True)`` decorator raises ``RuntimeError`` and ``import gpunet`` would fail with it."""
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        path = user
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "gpunet", "numba")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        (log.warning if user else log.info)(
            "gpunet: cannot write the Numba cache folder %s%s (%s: %s); compiling gpunet's CPU kernels without a "
            "cache (once per process)", path, " ($NUMBA_CACHE_DIR)" if user else "", type(exc).__name__,
            exc.strerror or exc)
        return None
    return path
