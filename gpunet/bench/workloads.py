"""The benchmark's workloads: MNIST at a batch size, the seed's small regression net, and FLOPs per sample."""
from __future__ import annotations

import numpy as np

from gpunet import datasets


MNIST_LAYERS = [784, 512, 256, 10]

SMALL_LAYERS = [1] + [50] * 9 + [1]

def flops_per_sample(layers):
    """Training FLOPs per sample: forward and weight-gradient GEMMs, plus the delta GEMMs of layers 2..L."""
    pairs = list(zip(layers[:-1], layers[1:]))
    gemm = sum(2 * a * b for a, b in pairs)
    return 2 * gemm + sum(2 * a * b for a, b in pairs[1:])

class Workload:
    def __init__(self, name, layers, batch_size, X, y, classification):
        self.name, self.layers, self.batch_size = name, layers, batch_size
        self.X, self.y, self.classification = X, y, classification

def mnist_workload(batch_size, n_rows):

    (X, y), _ = datasets.load_mnist()
    reps = -(-n_rows // len(X))
    X, y = np.concatenate([X] * reps)[:n_rows], np.concatenate([y] * reps)[:n_rows]
    return Workload(f"mnist-b{batch_size}", MNIST_LAYERS, batch_size, X, y, True)

def small_workload(batch_size, n_rows):

    X, y = datasets.sinc(n_rows, seed=0)
    return Workload(f"sinc-b{batch_size}", SMALL_LAYERS, batch_size, X.astype(np.float32), y.astype(np.float32), False)
