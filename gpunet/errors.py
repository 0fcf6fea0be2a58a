"""gpunet's error classes (all re-exported as ``gpunet.<Name>``); a leaf: imports nothing of gpunet."""


class DeviceUnavailableError(RuntimeError):
    """A CUDA device was requested but cannot be used; the message says why and what to install."""


class OutOfMemoryError(MemoryError):
    """The device (or host) ran out of memory; the message says what did not fit and what to try."""


class DivergenceError(RuntimeError):
    """The training loss became NaN or Inf; the model keeps its last finite weights."""


class DataError(ValueError):
    """A data file that cannot be used as it is; the message names the file and the place."""
