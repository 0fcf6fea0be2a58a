"""One ``fit`` call: the epoch engine (:class:`Trainer`), its snapshot/rollback (:class:`EpochSnapshot`),
Ctrl-C handling, distributed gradient reduction, CUDA-graph replay, and full-batch L-BFGS (:mod:`lbfgs`). Services on a network passed in:
nothing here imports the model."""
from gpunet.training import lbfgs
from gpunet.training.loop import EpochSnapshot, Trainer, batch_sizes, fit

__all__ = ["fit", "Trainer", "EpochSnapshot", "batch_sizes", "lbfgs"]
