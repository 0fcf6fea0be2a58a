"""gpunet: multilayer perceptrons on a CUDA GPU with CuPy, or on the CPU with NumPy.

>>> import gpunet as gn
>>> net = gn.MLP([784, 512, 256, 10], output_activation="softmax")
>>> (X, y), (Xt, yt) = gn.datasets.load_mnist()
>>> hist = net.fit(X, y, epochs=10, batch_size=128, optimizer=gn.Adam(lr=1e-3))
"""
import importlib

from gpunet import callbacks, datasets
from gpunet._version import __version__
from gpunet.backend import devices
from gpunet.callbacks import Callback, CosineDecay, EarlyStopping, LearningRateScheduler, ModelCheckpoint, StepDecay
from gpunet.errors import DeviceUnavailableError, DivergenceError, OutOfMemoryError
from gpunet.model import MLP, load
from gpunet.optim import SGD, Adam, AdamW
from gpunet.stack import MLPStack


def __getattr__(name):
    """``gn.plot`` and ``gn.bench`` import on first use (matplotlib and the peers are not needed to train)."""
    if name in ("plot", "bench"):
        return importlib.import_module(f"gpunet.{name}")
    raise AttributeError(f"module 'gpunet' has no attribute {name!r}")


__all__ = [
    "MLP", "MLPStack", "SGD", "Adam", "AdamW", "load", "devices", "datasets", "callbacks", "DeviceUnavailableError",
    "DivergenceError", "OutOfMemoryError", "Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "StepDecay",
    "CosineDecay", "__version__",
]
