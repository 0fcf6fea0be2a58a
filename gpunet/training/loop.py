"""The training loop: device-resident data, host-seeded shuffling, one host read per epoch.

Data are validated and uploaded once per ``fit``; each epoch uploads one permutation (drawn on the host
from the model's seeded generator, so the batch order is the same on every device) and gathers the
batches on the device. Per-batch losses are written into a device array and read once at the end of
the epoch, which is also when divergence is detected: a non-finite loss restores the weights, the
optimizer state and the RNG state of the start of the epoch and raises :class:`DivergenceError`.
Ctrl-C stops after the current batch and rolls back the same way, so the model is always at an epoch
boundary and a resumed run matches an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

import numpy as np

from gpunet import backend as _backend, callbacks as _callbacks, checks, distributed, optim
from gpunet.errors import DivergenceError, OutOfMemoryError
from gpunet.nn import losses
import gpunet.training.cuda_graph as _cuda_graph
from gpunet.training.arguments import check_monitors, check_validation_data, oom_message, say_once
from gpunet.training.interrupts import log_handler, progress, stop_on_sigint
from gpunet.training.state import EpochSnapshot, batch_sizes, split_last

log = logging.getLogger("gpunet")


@distributed.guard_fit  # distributed=True: the ranks agree at setup, or stop (gpunet.distributed)
def fit(model, X, y, *, epochs=1, batch_size=32, optimizer=None, loss=None, validation_data=None, shuffle=True,
        callbacks=None, verbose=1, cuda_graph=None, distributed=False, shard=False, validation_split=0.0,
        record="epoch", sample_weight=None):
    """Train ``model`` on ``(X, y)``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    y : array of shape (n_samples,) or (n_samples, n_outputs)
        Class labels or one-hot rows for ``cross_entropy``; values in [0, 1] for
        ``binary_cross_entropy``; anything finite for ``mse``/``mae``.
    epochs : int >= 0
        Epochs to train in this call (the model counts all epochs in ``model.epochs_trained``).
    batch_size : int >= 1
        Samples per step; the last batch of an epoch holds the remainder.
    optimizer : Optimizer or {"adam", "adamw", "sgd"} or None
        ``None`` continues with the model's previous optimizer (state included), else Adam(). An instance
        that trained another model, still alive, stays that model's: this one trains with its own copy
        (same hyper-parameters, fresh state; :meth:`gpunet.optim.Optimizer.for_params`).
    loss : {"mse", "mae", "cross_entropy", "binary_cross_entropy"} or None
        Default from the output activation: softmax -> cross_entropy, sigmoid -> binary_cross_entropy,
        otherwise mse.
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``).
    shuffle : bool
        Reshuffle every epoch with the model's seeded host generator.
    callbacks : list of :class:`gpunet.callbacks.Callback`
    verbose : int
        0 silent; 1 a progress bar (on a TTY) and one log line per epoch.
    cuda_graph : bool, "require" or None
        On a CUDA device, capture the training step of full batches as a CUDA graph and replay it
        (small batches are launch-bound). ``None`` reads ``$GPUNET_CUDA_GRAPH`` (default off). Not used
        with dropout or on the CPU. The captured GEMMs go through cuBLAS's C API (:mod:`gpunet.cublas`),
        because CuPy 14.2 refuses its own cuBLAS calls during a capture (``cupy_backends/cuda/libs/cublas.pyx``,
        ``setStream``). The first request in a process checks graph training against eager training
        (:meth:`gpunet.kernels.CupyOps.check_graphs`); when graphs cannot be used, training continues with
        eager launches and says why once, ``"require"`` raises instead. ``History.cuda_graph`` reports
        replays, captures and the fallback reason.
    distributed : bool
        Data-parallel training over MPI ranks (see :mod:`gpunet.distributed`): call on every rank with
        the same model seed and the same data; ``batch_size`` is the global batch, each rank computes
        the gradient of its contiguous share and one all-reduce per step keeps the replicas identical.
        Validation, logging and checkpoints happen on rank 0 only.
    shard : bool
        With ``distributed``: each rank passes its own shard of the data (all shards the same size,
        ``batch_size`` divisible by the number of ranks) and batches are drawn from the local shard.
    validation_split : float in [0, 1)
        As in Keras: hold out the *last* fraction of ``(X, y)`` (before any shuffling) as validation
        data. Cannot be combined with ``validation_data``.
    record : {"epoch", "batch"}
        ``"batch"`` also keeps the loss of every optimizer step in ``History.batch_loss`` (read once per
        epoch with the epoch's losses, so it costs no extra synchronisation).
    sample_weight : array of shape (n_samples,), optional
        Non-negative per-sample weights: each batch's loss is the weighted mean of its rows' losses
        (``sum w_i l_i / sum w_i``, scikit-learn's convention), on every device. Equal weights are the
        plain mean and change nothing. Weighted batches run on the reference loss and the per-layer
        primitives: the fused CPU step and CUDA graphs take no weights, which ``History.fast_paths`` and
        the log say. Not combined with ``distributed=True``.

    Returns
    -------
    History
    """
    epochs = checks.check_int("epochs", epochs, low=0)
    batch_size = checks.check_int("batch_size", batch_size, low=1)
    verbose = checks.check_int("verbose", int(verbose) if isinstance(verbose, bool) else verbose, low=0)
    loss = model.resolve_loss(loss)
    if record not in ("epoch", "batch"):
        raise ValueError(f"record must be 'epoch' or 'batch', got {record!r}")
    validation_split = checks.check_fraction("validation_split", validation_split)
    if validation_split:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        X, y, validation_data, sample_weight = split_last(X, y, validation_split, sample_weight)
    if optimizer is None:
        opt = model.optimizer if model.optimizer is not None else optim.Adam()
    else:
        opt = optim.get(optimizer).for_params(model.params, model.optimizer)  # another model's: a copy
    Xd, Yd = model.upload(X, y, loss)
    Wd = model.upload_weights(sample_weight, Xd.shape[0])
    if distributed and checks.is_sparse(X):
        raise TypeError("X is a sparse matrix: distributed=True takes dense arrays (densify it with X.toarray())")
    if Wd is not None and distributed:
        raise ValueError("sample_weight is not supported with distributed=True (each rank would need the global "
                         "weight sum of every batch); fold the weights into the data or train on one process")
    val = check_validation_data(model, validation_data, loss)
    reducer = _distributed_setup(model, opt, loss, Xd, Yd, batch_size, epochs, shuffle, shard) if distributed else None
    if reducer is not None and reducer.rank:  # rank 0 alone logs, validates and writes checkpoints
        verbose, val = 0, None
        callbacks = [c for c in (callbacks or []) if not isinstance(c, _callbacks.ModelCheckpoint)]
    cbs = _callbacks.CallbackList(callbacks, model)
    check_monitors(cbs.callbacks, loss, validation_data is not None)
    # ---- nothing above changed any state; from here on the model trains ----
    lock = model.fit_lock
    if not lock.acquire(blocking=False):
        raise RuntimeError("fit is already running on this model in another thread; train a copy "
                           "(gpunet.load of a saved file) or wait for that fit to return")
    try:
        return _fit_locked(model, opt, loss, Xd, Yd, val, cbs, reducer, epochs, batch_size, shuffle, verbose,
                           cuda_graph, shard, record, Wd)
    finally:
        lock.release()


def _fit_locked(model, opt, loss, Xd, Yd, val, cbs, reducer, epochs, batch_size, shuffle, verbose, cuda_graph,
                shard, record, Wd=None):
    previous = (model.optimizer, model.loss)
    model.optimizer, model.loss, model.stop_training = opt, loss, False
    if cuda_graph is None:
        cuda_graph = os.environ.get("GPUNET_CUDA_GRAPH", "0") == "1"
    trainer = Trainer(model, opt, loss, Xd, Yd, val, batch_size, shuffle, verbose, reducer, shard, Wd)
    if (Wd is not None or trainer.sparse) and cuda_graph:
        log.info("gpunet: CUDA graphs are not used with sample_weight or sparse inputs (the captured step takes "
                 "neither)")
        cuda_graph = False
    if reducer is not None and cuda_graph:
        log.info("gpunet: CUDA graphs are not used with distributed=True (the all-reduce sits inside the step)")
        cuda_graph = False
    trainer.record_batches = record == "batch"
    backend = model.backend
    with backend.activate():
        try:
            trainer.allocate(cuda_graph)
        except Exception as exc:  # nothing trained: the previous optimizer stays the model's
            model.optimizer, model.loss = previous
            if not backend.is_out_of_memory(exc):
                raise
            raise OutOfMemoryError(oom_message(model, trainer.B, "allocating the training buffers")) from None
    # every training launch goes to one stream (the graph's when graphs are on: replays stay ordered with
    # the eager work); overflow inside an epoch is reported once, as DivergenceError, not as warnings
    with backend.activate(), trainer.stream(), stop_on_sigint() as interrupted, np.errstate(all="ignore"), \
            log_handler(verbose), contextlib.ExitStack() as finish:
        finish.callback(trainer.finish)
        cbs.begin()
        cbs.on_train_begin()
        final_epoch = model.epochs_trained + epochs
        for _ in range(epochs):
            epoch = model.epochs_trained
            cbs.on_epoch_begin(epoch)
            try:
                logs = trainer.epoch(epoch, final_epoch, cbs, interrupted)
            except BaseException as exc:  # whatever leaves an epoch (a callback, a second Ctrl-C, OOM): roll back
                trainer.rollback()
                if isinstance(exc, Exception) and backend.is_out_of_memory(exc):
                    raise OutOfMemoryError(oom_message(model, trainer.B, f"training epoch {epoch + 1}")) from None
                raise
            if logs is None:  # interrupted, rolled back to the start of the epoch
                trainer.history.interrupted = True
                log.warning("gpunet: training interrupted during epoch %d; the model is back at the end of "
                            "epoch %d", epoch + 1, epoch)
                break
            model.epochs_trained += 1
            trainer.history.on_epoch_end(epoch, logs)
            cbs.on_epoch_end(epoch, logs)
            if verbose:
                metrics = " - ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "lr")
                seconds = trainer.history.seconds[-1]
                log.info("epoch %d - %s - %.2fs (%.0f samples/s)", epoch + 1, metrics, seconds,
                         trainer.n / max(seconds, 1e-9))
            if model.stop_training:
                break
        cbs.on_train_end()
    if reducer is not None:
        trainer.history.distributed = reducer.stats()
    trainer.history.cuda_graph = trainer.graph_summary()
    trainer.history.fast_paths = trainer.fast_paths()
    model.history = trainer.history
    return trainer.history


def _distributed_setup(model, opt, loss, Xd, Yd, batch_size, epochs, shuffle, shard):
    """The gradient reducer, after ONE allgather of every rank's fingerprint (a collective): the same
    one-line error on every rank when they differ (see :func:`gpunet.distributed.fingerprint`)."""
    reducer = distributed.setup(model.backend, distributed.fingerprint(model, opt, loss, Xd, Yd, batch_size,
                                                                       epochs, shuffle, shard))
    if shard and batch_size % reducer.size:
        raise ValueError(f"shard=True needs batch_size divisible by the number of ranks ({reducer.size}); "
                         f"got {batch_size}")
    return reducer


class Trainer:
    """The state of one :func:`fit` call: device data, batch layout, workspace, snapshot, history."""

    def __init__(self, model, opt, loss, Xd, Yd, val, batch_size, shuffle, verbose, reducer=None, shard=False,
                 Wd=None):
        self.model, self.opt, self.loss, self.Xd, self.Yd, self.val = model, opt, loss, Xd, Yd, val
        self.Wd = Wd  # per-sample weights (n, 1) on the device, or None
        self.sparse = isinstance(Xd, _backend.SparseRows)  # densified a batch at a time
        self.fused_steps = 0
        self.shuffle, self.verbose, self.reducer, self.shard = shuffle, verbose, reducer, shard
        self.n = n = Xd.shape[0]
        if reducer is not None and shard:  # local batches of batch_size / ranks rows from the local shard
            batch_size //= reducer.size
        self.B, self.sizes = batch_sizes(n, batch_size)
        self.n_batches = self.sizes.shape[0]
        self.classification = loss in losses.CLASSIFICATION
        ranks = reducer.size if reducer is not None and shard else 1
        self.acc_denominator = losses.accuracy_count(loss, n * ranks, model.layer_sizes[-1])
        self.history = _callbacks.History()

    def fast_paths(self):
        """The backend's fast paths as this fit used them: a weighted fit does not run the fused step."""
        paths = {k: dict(v) for k, v in self.model.ops.status().items()}
        if "fused_step" in paths:  # how many steps of this fit it ran (0: the model or the fit is outside its scope)
            paths["fused_step"]["steps"] = self.fused_steps
        if self.Wd is not None and paths.get("fused_step", {}).get("live"):
            paths["fused_step"].update(live=False, reason="sample_weight: the fused step takes no per-sample weights")
        elif self.sparse and paths.get("fused_step", {}).get("live"):
            paths["fused_step"].update(live=False, reason="sparse X: batches are densified for the per-layer primitives")
        return paths

    def graph_summary(self):
        """What ``cuda_graph`` did, for ``History.cuda_graph`` and metrics.json: requested, replays,
        captures, and the reason when it fell back to eager launches."""
        if self.graph is not None:
            self.graph_report.update(replays=self.graph.replays, captures=self.graph.captures)
        return dict(self.graph_report)

    def allocate(self, cuda_graph=False):
        self.opt.bind(self.model.params)
        self.ws = self.model.workspace(self.B)
        self.wb = self.model.zeros((self.B, 1)) if self.Wd is not None else None
        if self.Wd is not None and self.model.ops.status().get("fused_step", {}).get("live"):
            say_once("gpunet: sample_weight: weighted batches use the per-layer primitives and the reference loss "
                      "(the fused step takes no per-sample weights)")
        self.snapshot = EpochSnapshot(self.model.zeros, self.model.params, self.opt, [self.model])
        self.graph = self.graph_stream = None
        self.graph_required = cuda_graph == "require"
        self.graph_report = {"requested": bool(cuda_graph), "replays": 0, "captures": 0, "fallback": None}
        if self.graph_required and not (self.model.backend.is_gpu and not self.model.dropout):
            raise RuntimeError("cuda_graph='require' needs a CUDA device and no dropout; this model is on "
                               f"{self.model.device} with dropout={self.model.dropout}")
        if cuda_graph and self.model.backend.is_gpu and not self.model.dropout:
            # the first request in a process checks capture against eager training (kernels.CupyOps.check_graphs)
            reason = _cuda_graph.check_graphs(self.model.ops, type(self.model))
            if reason is not None:
                self.graph_report["fallback"] = reason
                if self.graph_required:
                    raise RuntimeError(f"cuda_graph='require': CUDA graphs are off on {self.model.device}: {reason}")
                log.info("gpunet: CUDA graphs are off on %s (%s); training with eager launches", self.model.device,
                         reason)
                return
            self.graph = _cuda_graph.GraphStep(self)
            self.graph_stream = self.graph.stream
        elif cuda_graph:
            log.info("gpunet: CUDA graphs need a CUDA device and no dropout; training with eager launches")

    def stream(self):
        """The stream every training launch goes to (the graph's, when graphs are on)."""
        return self.graph_stream if getattr(self, "graph_stream", None) is not None else contextlib.nullcontext()

    def finish(self):
        """Wait for the graph stream's queued work (the last replays, rollback copies) before ``fit``
        returns: later reads on the default stream do not synchronise with a non-blocking stream."""
        if getattr(self, "graph", None) is not None:
            self.close_graph()  # synchronises the graph stream first
        elif getattr(self, "graph_stream", None) is not None:
            self.graph_stream.synchronize()

    def close_graph(self):
        """Release the captured graph now (its handle, pool and stream), keeping its counts for the report."""
        graph = getattr(self, "graph", None)
        if graph is not None:
            self.graph_report.update(replays=graph.replays, captures=graph.captures)
            graph.close()
            self.graph = None

    def step(self, rows, r, weight=None):
        """One eager optimizer step on the batch ``rows`` (r of them); returns (loss, correct).

        ``weight`` (distributed): this rank's share of the global batch; its gradient is scaled by it
        and summed over the ranks before the optimizer step."""
        model, ops, ws = self.model, self.model.ops, self.ws
        if r == 0:  # distributed: no rows of this global batch fall to this rank
            model.grads[...] = 0.0
            self._reduce_gradients(0.0)
            self.opt.step(model.params, model.grads, ops)
            return 0.0, 0.0 if self.classification else None
        fused = None if self.Wd is not None or self.sparse else ops.fused_step(model, ws, self.Xd, self.Yd, rows,
                                                                               self.loss)
        if fused is not None:
            self.fused_steps += 1
            if model.l1 or model.l2:  # the penalty's gradient and value, beside the fused data gradient
                fused = (fused[0] + model.add_penalty(), fused[1])
            self._reduce_gradients(weight)
            self.opt.step(model.params, model.grads, ops)
            return fused
        x = self.gather(rows, ws.a[0][:r, ...])
        yb = ops.take_rows(self.Yd, rows, ws.y[:r, ...])
        wb = ops.take_rows(self.Wd, rows, self.wb[:r, ...]) if self.Wd is not None else None
        value, _, correct = model.step_gradients(x, yb, ws, self.loss, train=True, count=self.classification,
                                                 weight=wb)
        self._reduce_gradients(weight)
        self.opt.step(model.params, model.grads, ops)
        return value, correct

    def gather(self, rows, out):
        """The batch's inputs ``X[rows]`` into ``out`` (dense rows of a sparse matrix, densified here)."""
        if self.sparse:
            return self.Xd.take(rows, out)
        return self.model.ops.take_rows(self.Xd, rows, out)

    def _reduce_gradients(self, weight):
        if self.reducer is not None:
            if weight != 1.0:
                self.model.grads *= weight
            self.reducer.allreduce_(self.model.grads)

    def graph_step(self, rows, r):
        try:
            return self.graph.step(rows)
        except Exception as exc:  # capture unsupported here: say so once (or raise), continue eagerly
            if self.model.backend.is_out_of_memory(exc):
                raise
            reason = f"{type(exc).__name__}: {exc}"
            self.graph_report.update(fallback=reason, replays=self.graph.replays)
            if self.graph_required:
                raise RuntimeError(f"cuda_graph='require': the training step could not be captured as a CUDA "
                                   f"graph ({reason})") from exc
            log.warning("gpunet: CUDA graph capture failed (%s); continuing with eager launches", reason)
            self.close_graph()
            self.graph_report["fallback"] = reason
            return self.step(rows, r)

    def _finite_at_start(self, order):
        """Whether the (restored) weights give a finite loss on the epoch's first batch."""
        rows = self.model.backend.to_device(order[:self.B].astype(np.int64))
        x = self.gather(rows, self.model.zeros((rows.shape[0], self.model.layer_sizes[0])))
        y = self.model.xp.take(self.Yd, rows, axis=0)
        value = self.model.evaluate_device(x, y, self.loss)["loss"]
        return bool(np.isfinite(value))

    def rollback(self):
        """Back to the start of the epoch (a captured graph's device step count is then stale)."""
        self.snapshot.restore()
        if self.graph is not None:
            self.graph.invalidate()

    def epoch(self, epoch, final_epoch, cbs, interrupted):
        """Train one epoch; returns its logs, or ``None`` if interrupted (state rolled back).

        Raises :class:`DivergenceError` (state rolled back) when a batch loss is not finite.
        """
        model, opt, B = self.model, self.opt, self.B
        backend = model.backend
        self.snapshot.take()
        order = model.shuffle_rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        idx = backend.to_device(order.astype(np.int64))
        batch_loss = model.zeros((self.n_batches,))
        batch_correct = model.zeros((self.n_batches,)) if self.classification else None
        bar = progress(self.verbose, self.n, epoch + 1, final_epoch)
        report_every = max(1, self.n_batches // 20)
        t0 = time.perf_counter()
        done = 0
        red = self.reducer
        if red is not None:
            # ranks must not stop at different batches (the others would wait in the all-reduce): under
            # distributed=True the first Ctrl-C does not stop early; mpirun forwards a second one as usual
            interrupted = threading.Event()
        for i in range(self.n_batches):
            s = i * B
            r = int(self.sizes[i])
            if red is not None:  # this rank's contiguous share of the global batch, weighted by its size
                lo, hi = (0, r) if self.shard else distributed.share(r, red.rank, red.size)
                weight = 1.0 / red.size if self.shard else (hi - lo) / r
                value, correct = self.step(idx[s + lo:s + hi], hi - lo, weight)
                red.rows += hi - lo
                value = value * weight
            elif self.graph is not None and r == B:
                value, correct = self.graph_step(idx[s:s + r], r)
            else:
                value, correct = self.step(idx[s:s + r], r)
                if self.graph is not None:
                    self.graph.after_eager_step()
            batch_loss[i] = value
            if self.classification:
                batch_correct[i] = correct
            done = i + 1
            if cbs.wants_batches:
                cbs.on_batch_end(i, {"size": r})
            if bar is not None:
                bar.update(r)
                if i % report_every == 0:
                    bar.set_postfix(loss=f"{backend.item(batch_loss[i]):.4g}", refresh=False)
            if interrupted.is_set():
                break
        if red is not None:  # one reduction of the epoch's batch losses and accuracy counts
            red.allreduce_(batch_loss)
            if self.classification:
                red.allreduce_(batch_correct)
        host_loss = backend.to_host(batch_loss)[:done]
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        if interrupted.is_set():
            self.rollback()
            return None
        if not np.isfinite(host_loss).all():
            bad = int(np.flatnonzero(~np.isfinite(host_loss))[0])
            self.rollback()
            if bad == 0 and not self._finite_at_start(order):
                raise DivergenceError(
                    f"the loss is {host_loss[0]} at epoch {epoch + 1}, batch 1, before any update of this epoch: "
                    f"the data or the current weights already give a non-finite loss (inputs too large for "
                    f"{model.dtype}? rescale them), not the learning rate. The weights were restored to the end of "
                    f"epoch {epoch}.")
            raise DivergenceError(
                f"training diverged: the loss became {host_loss[bad]} at epoch {epoch + 1}, batch {bad + 1} of "
                f"{self.n_batches}; the learning rate ({opt.lr:g}) is probably too high for this model and data. "
                f"The weights were restored to the end of epoch {epoch}.")
        # the last update of the epoch is not followed by a loss: check the weights themselves (one read)
        if not bool(backend.to_host(model.xp.all(model.xp.isfinite(model.params)))):
            self.rollback()
            raise DivergenceError(
                f"training diverged: the weights overflowed to Inf/NaN during epoch {epoch + 1} (the last losses "
                f"were finite); the learning rate ({opt.lr:g}) is too high for this model and data. The weights "
                f"were restored to the end of epoch {epoch}.")
        logs = {"loss": float(host_loss @ self.sizes / self.n)}
        if self.classification:
            logs["accuracy"] = float(backend.to_host(batch_correct).sum() / self.acc_denominator)
        if self.val is not None:
            logs.update({f"val_{k}": v for k, v in model.evaluate_device(self.val[0], self.val[1], self.loss).items()})
        if red is not None:  # rank 0's validation metrics to every rank, so callbacks decide alike
            logs.update(red.bcast({k: v for k, v in logs.items() if k.startswith("val_")}))
        logs["lr"] = opt.lr
        self.history.seconds.append(seconds)
        if getattr(self, "record_batches", False):
            self.history.batch_loss.extend(float(v) for v in host_loss)
        return logs
