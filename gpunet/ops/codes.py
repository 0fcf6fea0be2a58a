"""The integer codes that compiled kernels read: one table for Numba (:mod:`gpunet.ops.numba_kernels`) and
CUDA (``ops/cuda/kernels.cu``, whose ``switch`` statements use the same numbers)."""

#: activation codes; 4 = softmax (output layer only, never elementwise)
ACT_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "softmax": 4}
#: the elementwise activations (every code a kernel may apply per entry)
ELEMENTWISE = ("linear", "relu", "sigmoid", "tanh")
LOSS_CODES = {"mse": 0, "mae": 1, "cross_entropy": 2, "binary_cross_entropy": 3}


def supports(hidden, out_act, loss):
    """Whether the compiled kernels know these activations and this loss (every code is in the tables above)."""
    return hidden in ACT_CODES and out_act in ACT_CODES and loss in LOSS_CODES
