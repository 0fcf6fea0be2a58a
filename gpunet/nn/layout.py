"""The flat parameter layout: every weight matrix and bias vector of a network as a block of one 1-D buffer
(``W1, b1, W2, b2, ...``, each row-major), optionally with each block starting on an aligned boundary.

Files and :meth:`gpunet.MLP.get_weights` use the *dense* layout (blocks back to back); a device may use a
*padded* one (CUDA: 16-byte aligned blocks, zeros between them that no optimizer moves, because their
gradient is zero). :class:`Layout` converts between the two on the host.
"""
from __future__ import annotations

import math

import numpy as np


class Layout:
    """Shapes and offsets of a network's parameter blocks.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``[n_0, n_1, ..., n_L]``.
    align : int
        Every block starts at a multiple of ``align`` elements (1: dense).
    """

    def __init__(self, layer_sizes, align=1):
        self.shapes = []
        for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
            self.shapes += [(n_in, n_out), (n_out,)]
        self.offsets, offset = [], 0
        for shape in self.shapes:
            offset = -(-offset // align) * align
            self.offsets.append(offset)
            offset += math.prod(shape)
        #: the buffer's length (with padding) and the number of parameters (without)
        self.size = -(-offset // align) * align
        self.n_params = sum(math.prod(s) for s in self.shapes)

    def blocks(self):
        """``(offset, size, shape)`` of every block, in order."""
        return [(o, math.prod(s), s) for o, s in zip(self.offsets, self.shapes)]

    def views(self, xp, flat):
        """Views of a flat buffer as the blocks' shapes."""
        return [xp.reshape(flat[o:o + size], shape) for o, size, shape in self.blocks()]

    def padded(self, dense):
        """Host: a dense vector in this layout (zeros between aligned blocks)."""
        dense = np.asarray(dense)
        if self.size == dense.shape[0]:
            return dense
        out = np.zeros(self.size, dtype=dense.dtype)
        start = 0
        for o, size, _ in self.blocks():
            out[o:o + size] = dense[start:start + size]
            start += size
        return out

    def dense(self, flat):
        """Host: this layout back to the dense vector (the file layout)."""
        flat = np.asarray(flat)
        if flat.shape[0] == self.n_params:
            return flat
        return np.concatenate([flat[o:o + size] for o, size, _ in self.blocks()])


def flatten(arrays):
    """Host arrays -> one float64 vector in order (the dense layout)."""
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays])


def split(flat, shapes):
    """A dense host vector -> copies of consecutive blocks with the given shapes."""
    out, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[offset:offset + size].reshape(shape).copy())
        offset += size
    return out
