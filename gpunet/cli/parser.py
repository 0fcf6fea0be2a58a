"""The ``gpunet`` command line: argument types, each subcommand's flags and the parser."""
from __future__ import annotations

import argparse

from gpunet._version import __version__
from gpunet.cli.config import BUILTIN, PRESETS, CLIError


EXAMPLES_TRAIN = """examples:
  gpunet train --dataset mnist --out runs/mnist
  gpunet train --data iris.csv --target species --epochs 200 --out runs/iris
  gpunet predict --model runs/iris --data new.csv --out preds.csv --proba

per-dataset defaults (flags override them):
  mnist    784-512-256-10, relu, softmax, cross_entropy, adam lr 1e-3 + cosine, batch 128, 10 epochs
  sinc     the seed's [1, 50x9, 1], relu, mse, sgd lr 0.005 (= the seed's lr 0.01 on half the squared
           error), batch 20, 1000 epochs
  sincos   [1, 16, 2], tanh, mse, adam lr 0.01, batch 32, 200 epochs
  --data   [features, 64, 64, outputs], relu; softmax + cross_entropy for classes, linear + mse for values;
           adam lr 1e-3, batch 32, 100 epochs, --test-split 0.2; features standardised with the training
           split's mean and standard deviation (stored in the model)
"""

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")

class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows "(default: X)" for options with a real default (the others say theirs in the help)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS, []) and "default" not in text:
            text += " (default: %(default)s)"
        return text

def layers_arg(text):
    try:
        sizes = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers must be comma-separated integers such as 784,512,10, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--layers needs at least two sizes >= 1, got {text!r}")
    return sizes

def _names_arg(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated column names, got {text!r}")
    return names

def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value

def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value

def _add_model_args(p):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=BUILTIN,
                     help="built-in data: mnist (default), sinc, sincos, or sincos01 (seed 003: sin/cos on [0, 1], "
                          "300 fresh batches of 32)")
    src.add_argument("--data", metavar="PATH", help="your own table: .csv/.tsv (header optional), .npz (X, y), "
                     ".npy (with --target Y.npy or a sibling y.npy) or .parquet")
    p.add_argument("--target", metavar="COL", help="--data: target column name or index (default: the last column)")
    p.add_argument("--task", choices=["classify", "regress"],
                   help="--data: default from the target (strings or few distinct integers: classify)")
    p.add_argument("--test-split", type=_fraction, help="--data: fraction held out as the test set (default 0.2; "
                   "stratified by class for a classifier)")
    p.add_argument("--split-seed", type=int, help="seeds the test/validation split (and the folds) apart from "
                   "--seed, which seeds the weights and batch order (default: 0)")
    p.add_argument("--no-impute", action="store_true", default=None, help="--data: refuse missing numbers instead "
                   "of imputing the training median with a missing-indicator column")
    p.add_argument("--no-encode", action="store_true", default=None, help="--data: refuse text columns instead of "
                   "one-hot encoding them")
    p.add_argument("--max-categories", type=_positive_int, help="--data: one-hot columns per categorical feature; "
                   "the rarer categories share one 'other' column (default: 20)")
    p.add_argument("--categorical", type=_names_arg, metavar="COL[,COL]", help="--data: numeric columns to one-hot "
                   "encode as categories (text columns always are)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a tuned or seed recipe (flags still override it)")
    p.add_argument("--data-dir", help="folder with the MNIST .gz files (default: shipped copy / $GPUNET_DATA)")
    p.add_argument("--layers", type=layers_arg, help="comma-separated layer sizes, e.g. 784,512,256,10 (default: per "
                   "dataset; for --data the widths follow from the data)")
    p.add_argument("--hidden-activation", choices=["relu", "sigmoid", "tanh", "linear"], help="default: per dataset")
    p.add_argument("--output-activation", choices=["linear", "sigmoid", "softmax", "tanh", "relu"],
                   help="default: per dataset")
    p.add_argument("--loss", choices=["mse", "mae", "cross_entropy", "binary_cross_entropy"],
                   help="default: per dataset (class labels are one-hot encoded for mse/mae)")
    p.add_argument("--init", choices=["glorot", "he"], help="default: glorot")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], help="default: per dataset")
    p.add_argument("--lr", type=float, help="learning rate (default: per dataset)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default: 0)")
    p.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=float, help="default: the optimizer's (0; AdamW 0.01)")
    p.add_argument("--l1", type=float, help="L1 penalty on weights (default: 0)")
    p.add_argument("--l2", type=float, help="L2 penalty on weights (default: 0)")
    p.add_argument("--dropout", type=float, help="dropout rate on hidden layers (default: 0)")
    p.add_argument("--schedule", choices=["none", "step", "cosine"], help="learning-rate schedule (default: per dataset)")
    p.add_argument("--epochs", type=int, help="default: per dataset")
    p.add_argument("--batch-size", type=_positive_int, help="default: per dataset")
    p.add_argument("--device", help="auto (default; $GPUNET_DEVICE), cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: float32")
    p.add_argument("--seed", type=int, help="weights, batch order and dropout (default: 0; --split-seed seeds the "
                   "splits)")
    p.add_argument("--tf32", action="store_true", help="TF32 tensor-core matmuls for float32 on CUDA (opt-in)")

def add_train_args(t):
    _add_model_args(t)
    t.add_argument("--patience", type=int, help="early stopping on val_loss after this many epochs without gain, "
                   "watching a validation split carved from the training data (0.1 unless --validation-split)")
    t.add_argument("--validation-split", type=_fraction,
                   help="hold out this fraction of the training data for validation (default: none, or 0.1 with "
                        "--patience; without it, --data runs show the training curve only and built-in datasets "
                        "the test curve, labelled 'test')")
    t.add_argument("--out", help="run folder for model.npz, metrics.json, history.json, plots, checkpoint "
                   "(default: runs/<dataset>-<timestamp>)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (up to --epochs in total)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: 'mpirun -n N gpunet train ... --distributed' (--batch-size "
                        "is the global batch; rank 0 writes the run)")

def add_compare_args(c):
    _add_model_args(c)
    c.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting to vary, e.g. hidden_activation=relu,sigmoid or hidden=64,128:64 (hidden widths "
                        "only; repeatable: the grid is crossed, each key once)")
    c.add_argument("--seeds", type=_positive_int, default=3, help="seeds per configuration")
    c.add_argument("--folds", type=_positive_int, help="K-fold cross-validation over the rows outside the test split "
                   "(stratified for classes): mean ± std over folds and seeds on validation")
    c.add_argument("--validation-split", type=_fraction, help="without --folds: the fraction of the training data "
                   "the configurations are compared on (default: 0.1); the test set is only reported")
    c.add_argument("--record", choices=["epoch", "batch"], default="epoch",
                   help="'batch' keeps every step's training loss in compare.json (one-pass runs)")
    c.add_argument("--out", required=True, help="folder for compare.json, compare.md and compare.png")

def add_predict_args(p):
    p.add_argument("--model", required=True, metavar="RUN_DIR|MODEL.npz", help="a run folder or a model file")
    p.add_argument("--data", required=True, metavar="PATH", help="inputs (.csv/.tsv/.npz/.npy/.parquet); a target "
                   "column the model was trained with is ignored")
    p.add_argument("--out", metavar="PREDS.csv", help="write the predictions here (default: standard output)")
    p.add_argument("--proba", action="store_true", help="add one probability column per class")
    p.add_argument("--keep", type=_names_arg, action="extend", metavar="COL[,COL]",
                   help="copy these input columns (an id, say) into the prediction file, before the predictions")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")

def add_evaluate_args(p):
    p.add_argument("--model", required=True, metavar="RUN_DIR|MODEL.npz", help="a run folder or a model file")
    p.add_argument("--data", required=True, metavar="PATH", help="inputs with targets (as for train --data)")
    p.add_argument("--target", metavar="COL", help="target column (default: the one the model was trained with)")
    p.add_argument("--out", metavar="METRICS.json",
                   help="write the metrics here as JSON (default: printed only; nothing is written into the model's "
                        "folder)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")

def add_export_args(p):
    p.add_argument("--model", required=True, metavar="RUN_DIR|MODEL.npz", help="a run folder or a model file")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="write the network here as ONNX (needs the "
                   "onnx package: pip install 'gpunet[onnx]')")

def add_info_args(p):
    pass

def build_parser(commands):
    parser = _Parser(prog="gpunet", description="Train multilayer perceptrons on a CUDA GPU (CuPy) or the CPU (NumPy).",
                     formatter_class=_Formatter, epilog=EXAMPLES_TRAIN.split("\n\n")[0])

    parser.add_argument("--version", action="version", version=f"gpunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, epilog, add_args, _) in commands.items():
        add_args(sub.add_parser(name, help=help_text, epilog=epilog, formatter_class=_Formatter))
    return parser
