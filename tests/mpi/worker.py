"""Run under mpirun by tests/test_distributed.py: ``worker.py MODE OUT [extra]``.

MODE train: 2 epochs float64 data-parallel, rank 0 writes the weights to OUT (.npz, plain arrays).
MODE shard: the same with each rank given its half of the data (shard=True).
MODE resume: load OUT's model file (saved by a run with another number of ranks), train 1 epoch more.
MODE raise: rank 1 raises before the first all-reduce; MODE kill: rank 1 kills itself mid-training.
"""
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
