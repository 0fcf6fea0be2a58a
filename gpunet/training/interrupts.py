"""What surrounds an epoch loop on the host: Ctrl-C handling, a temporary log handler, the progress bar."""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

log = logging.getLogger("gpunet")


@contextlib.contextmanager
def stop_on_sigint():
    """First Ctrl-C sets ``flag.set`` (training stops after the batch); a second one raises."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        log.warning("gpunet: interrupted, stopping after the current batch (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def log_handler(verbose):
    """With verbose output and no logging configured anywhere, show gpunet's INFO lines on stderr for the
    duration of this fit only; the handler is removed afterwards and propagation is never turned off, so
    an application that configures logging later sees every record once."""
    logger = logging.getLogger("gpunet")
    if not verbose or logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def progress(verbose, total, epoch, epochs):
    if verbose < 1 or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415  (import cost only when a bar is shown)

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="sample", unit_scale=True, leave=verbose >= 2,
                dynamic_ncols=True)
