"""One ``fit`` call: the epoch engine (:class:`Trainer`), its snapshot/rollback (:class:`EpochSnapshot`),
Ctrl-C handling, distributed gradient reduction, CUDA-graph replay, full-batch L-BFGS (:mod:`lbfgs`), and
the data of many models at once (:mod:`per_model`). Services on a network passed in:
nothing here imports the model."""
from gpunet.training import lbfgs, per_model
from gpunet.training.loop import EpochSnapshot, Trainer, batch_sizes, fit

__all__ = ["fit", "Trainer", "EpochSnapshot", "batch_sizes", "lbfgs", "per_model"]
