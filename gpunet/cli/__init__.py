"""The ``gpunet`` command: ``train``, ``predict``, ``evaluate``, ``compare``, ``bench`` and ``info``.

Each subcommand is one entry of :data:`COMMANDS`: a function adding its arguments and a function running
it, so a new subcommand is one more entry. Errors print one line (``gpunet: error: ...``) and exit
non-zero: 2 for bad arguments, bad input and unavailable devices, 1 for failures during training
(divergence, I/O), 130 after Ctrl-C. Everything a command checks is checked before it writes anything.
Set ``GPUNET_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

from gpunet import bench
from gpunet._optional import MissingExtraError
from gpunet.cli.compare import cmd_compare
from gpunet.cli.config import CLIError
from gpunet.cli.info import cmd_info
from gpunet.cli.parser import (EXAMPLES_TRAIN, add_compare_args, add_evaluate_args, add_export_args, add_info_args,
                               add_predict_args, add_train_args, build_parser)
from gpunet.cli.predict import cmd_evaluate, cmd_export, cmd_predict
from gpunet.cli.train import cmd_train
from gpunet.errors import DeviceUnavailableError, DivergenceError
from gpunet.tabular import TableWarning

log = logging.getLogger("gpunet")

#: name -> (help, epilog, add_arguments(parser), run(args) -> exit code); ``bench`` has its own parser
COMMANDS = {
    "train": ("train a network and write model, metrics and plots", EXAMPLES_TRAIN, add_train_args, cmd_train),
    "predict": ("predict with a trained model: one CSV row per input", None, add_predict_args, cmd_predict),
    "evaluate": ("metrics of a trained model on a labelled file", None, add_evaluate_args, cmd_evaluate),
    "compare": ("train several configurations over several seeds and compare them", None, add_compare_args,
                cmd_compare),
    "bench": ("training throughput against PyTorch, JAX, scikit-learn and plain NumPy (options: "
              "'gpunet bench --help')", None, add_info_args, None),
    "export": ("write a trained model as ONNX for onnxruntime and other runtimes",
               "example: gpunet export --model runs/mnist --onnx mnist.onnx", add_export_args, cmd_export),
    "info": ("versions, devices and BLAS", None, add_info_args, cmd_info),
}

def _note(message, category, filename, lineno, file=None, line=None):
    """Table warnings (ignored columns, unseen categories) as one 'gpunet: note:' line each on stderr."""
    if issubclass(category, TableWarning):
        text = " ".join(str(message).split())
        if text not in _NOTED:  # the same table goes through several calls (evaluate, score, metrics): said once
            _NOTED.add(text)
            print(f"gpunet: note: {text}", file=sys.stderr)
    else:
        _show(message, category, filename, lineno, file, line)


_show = warnings.showwarning
_NOTED = set()


def main(argv=None):
    _NOTED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("always", TableWarning)
        warnings.showwarning = _note
        return _main(argv)


def _main(argv=None):
    debug = os.environ.get("GPUNET_DEBUG") == "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser(COMMANDS)
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        if argv[:1] == ["bench"]:  # the benchmark has its own parser (see 'gpunet bench --help')

            return bench.main(argv[1:])
        args = parser.parse_args(argv)
        return COMMANDS[args.command][3](args)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except Exception as exc:  # every error: one line, no traceback (unless GPUNET_DEBUG=1)
        if debug:
            raise

        if isinstance(exc, CLIError):
            code = exc.code
        elif isinstance(exc, (ValueError, TypeError, DeviceUnavailableError, FileNotFoundError, MissingExtraError)):
            code = 2
        else:
            code = 1
        if isinstance(exc, DivergenceError):
            code = 1
        message = " ".join(str(exc).split()) or type(exc).__name__
        if code == 1 and not isinstance(exc, (DivergenceError, OSError, CLIError, MemoryError)):
            message = f"internal error ({type(exc).__name__}): {message}; rerun with GPUNET_DEBUG=1 for a traceback"
        print(f"gpunet: error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("gpunet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
