"""Run under mpirun by tests/integration/test_distributed.py: ``worker.py MODE OUT [extra]``.

MODE train: 2 epochs float64 data-parallel, rank 0 writes the weights to OUT (.npz, plain arrays).
MODE shard: the same with each rank given its half of the data (shard=True).
MODE resume: load OUT's model file (saved by a run with another number of ranks), train 1 epoch more.
MODE raise: rank 1 raises before the first all-reduce; MODE kill: rank 1 kills itself mid-training.
MODE differ (extra: seed, lr, batch_size, data, optimizer or shard): rank 1 calls fit with that one thing changed; every
rank prints what its fit raised (or "trained") and exits normally.
MODE caught: rank 1's fit fails its own argument check and rank 1 catches it; rank 0 prints what it got.
MODE caught-in-loop: a callback raises on rank 1 at batch 2 and rank 1 catches it (the job must abort).
MODE both-in-loop: the callback raises on every rank, every rank catches it, then every rank trains again.
MODE no-fit / swallowed / swallowed-guarded / stuck: rank 1 never calls fit (it ends at once; it raises and catches
an error and carries on, without or inside dist.guard(); it sleeps), rank 0 calls fit.
"""
import contextlib
import os
import signal
import sys

import numpy as np

import gpunet as gn
import gpunet.distributed as dist

mode, out = sys.argv[1], sys.argv[2]
rank, size = dist.init()
rng = np.random.default_rng(0)
X = rng.normal(size=(203, 5))
y = (X[:, 0] - X[:, 1] + 0.5 * X[:, 2] > 0).astype(int) + (X[:, 3] > 0.8)
kw = dict(epochs=2, batch_size=32, optimizer=gn.Adam(lr=0.01), verbose=0, distributed=True)


def net():
    return gn.MLP([5, 16, 8, 3], "tanh", "softmax", dtype="float64", seed=7, l2=1e-3)


if mode == "train":
    m = net()
    h = m.fit(X, y, validation_data=(X[:50], y[:50]), **kw)
    if rank == 0:
        st = h.distributed
        np.savez(out, *m.get_weights(), loss=np.array(h.history["loss"]), acc=np.array(h.history["accuracy"]),
                 val=np.array(h.history["val_loss"]), stats=np.array([st["ranks"], st["allreduces"], st["rows"]]))
        m.save(out + ".model.npz")
elif mode == "shard":
    n = 200 // size
    m = net()
    m.fit(X[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n], shard=True, **kw)
    if rank == 0:
        np.savez(out, *m.get_weights())
elif mode == "resume":
    m = gn.load(out + ".model.npz", device="cpu")
    m.fit(X, y, epochs=1, batch_size=32, verbose=0, distributed=True)
    if rank == 0:
        np.savez(out + ".resumed.npz", *m.get_weights())
elif mode == "raise":
    if rank == 1:
        raise RuntimeError("boom on rank 1")
    net().fit(X, y, **kw)
elif mode == "kill":
    class Die(gn.Callback):
        def on_batch_end(self, batch, logs=None):
            if rank == 1 and batch == 2:
                os.kill(os.getpid(), signal.SIGKILL)
    net().fit(X, y, callbacks=[Die()], **dict(kw, epochs=50))
elif mode == "differ":
    field = sys.argv[3]
    m = gn.MLP([5, 16, 8, 3], "tanh", "softmax", dtype="float64", seed=7 + (rank if field == "seed" else 0),
               l2=1e-3)
    args = dict(kw)
    if field == "lr":
        args["optimizer"] = gn.Adam(lr=0.01 if rank == 0 else 0.001)
    if field == "batch_size":
        args["batch_size"] = 32 + rank
    if field == "optimizer" and rank == 1:
        args["optimizer"] = gn.SGD(lr=0.01, momentum=0.9)
    Xr, yr = X.copy(), y
    if field == "data" and rank == 1:
        Xr[5, 2] = np.nextafter(Xr[5, 2], np.inf)  # one bit of one value
    if field == "shard":  # each rank its own shard, rank 1's one row longer
        Xr, yr, args["shard"] = X[rank * 100:(rank + 1) * 100 + rank], y[rank * 100:(rank + 1) * 100 + rank], True
    try:
        m.fit(Xr, yr, **args)
        print(f"rank {rank}: trained", flush=True)
    except ValueError as exc:
        print(f"rank {rank}: {exc}", flush=True)
elif mode == "caught":
    try:
        net().fit(X, y, **dict(kw, batch_size=0 if rank == 1 else 32))
        print(f"rank {rank}: trained", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"rank {rank}: {type(exc).__name__}: {exc}", flush=True)
elif mode in ("caught-in-loop", "both-in-loop"):
    class Boom(gn.Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 2 and (rank == 1 or mode == "both-in-loop"):
                raise ValueError(f"boom in a callback on rank {rank}")
    m = net()
    try:
        m.fit(X, y, callbacks=[Boom()], **kw)
    except ValueError as exc:
        print(f"rank {rank}: caught {exc}", flush=True)
    m.fit(X, y, **kw)
    print(f"rank {rank}: trained again", flush=True)
elif mode in ("no-fit", "swallowed", "swallowed-guarded", "stuck"):
    # rank 1 never calls fit: it leaves at once, or after an error it raised and caught itself (reported
    # with dist.guard(), or not), or it is stuck somewhere else; rank 0 calls fit
    if rank == 1:
        if mode == "stuck":
            import time
            time.sleep(600)
        try:
            with dist.guard() if mode == "swallowed-guarded" else contextlib.nullcontext():
                if mode != "no-fit":
                    raise OSError("cannot read the data on rank 1")
        except OSError as exc:
            print(f"rank 1: caught {exc}; carrying on without training", flush=True)
        print("rank 1: done", flush=True)
    else:
        net().fit(X, y, **kw)
        print("rank 0: trained", flush=True)
