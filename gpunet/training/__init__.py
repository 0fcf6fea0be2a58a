"""One ``fit`` call: the epoch engine (:class:`Trainer`), its snapshot/rollback (:class:`EpochSnapshot`),
Ctrl-C handling, distributed gradient reduction and CUDA-graph replay. Services on a network passed in:
nothing here imports the model."""
from gpunet.training.loop import EpochSnapshot, Trainer, batch_sizes, fit

__all__ = ["fit", "Trainer", "EpochSnapshot", "batch_sizes"]
