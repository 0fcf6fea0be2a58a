"""Optional third-party packages, imported on first use with one install hint (thinc's ``compat.py``)."""
from __future__ import annotations

import importlib

#: the extra that installs each optional package
EXTRAS = {"cupy": "cuda12' or 'gpunet[cuda13]", "numba": "numba", "scipy": "numba", "mpi4py": "distributed",
          "onnx": "onnx", "onnxruntime": "onnx", "pyarrow": "tables", "sklearn": "sklearn", "pandas": "tables"}


class MissingExtraError(ImportError):
    """An optional package gpunet needs for what was asked is not installed; the message names the extra."""


def import_optional(name, purpose):
    """``importlib.import_module(name)``, or :class:`MissingExtraError` saying which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.partition(".")[0]
        extra = EXTRAS.get(top, top)
        raise MissingExtraError(f"{purpose} needs {top}: pip install 'gpunet[{extra}]' ({exc})") from None
