"""Many models of one shape trained as one: :class:`MLPStack`.

Seed studies and hyper-parameter sweeps train K small networks of the same shape. One at a time they
leave a GPU idle (every step is a handful of tiny launches) and pay Python overhead per model on the
CPU. ``MLPStack`` keeps the K parameter vectors as rows of one ``(K, n_params)`` buffer and runs every
layer for all K models at once with batched GEMMs (``xp.matmul`` on ``(K, rows, n)`` stacks), so a
step costs about as many calls as one model's step.

Each model keeps everything it would have alone: its initial weights, batch order and dropout masks
come from its own seed through the same generators as ``MLP(seed=s)`` (the K template models built here
*are* those generators), and it may have its own learning rate. The optimizer update is elementwise
over the flat buffer, so it is applied to the whole ``(K, n_params)`` buffer at once with the learning
rate broadcast per row. Model ``k`` therefore equals ``MLP(seed=seeds[k])`` trained alone with the same
settings, to float64 rounding (``tests/unit/test_stack.py``).

The maths is written once against ``xp`` (NumPy, CuPy), like :mod:`gpunet.model`; only host-drawn
randomness (permutations, dropout masks) goes through the backend.
"""
from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np

from gpunet import callbacks as _callbacks, checks, optim
from gpunet.errors import DivergenceError
from gpunet.model import MLP
from gpunet.nn import activations, losses
from gpunet.training import EpochSnapshot, batch_sizes, per_model

log = logging.getLogger("gpunet")


class MLPStack:
    """K networks of one shape, one per seed, trained together.

    Parameters
    ----------
    layers, hidden_activation, output_activation, device, dtype, init, l1, l2, dropout
        As for :class:`gpunet.MLP`; shared by every model.
    seeds : sequence of int
        One model per seed (K = ``len(seeds)``); model ``k`` starts exactly like ``MLP(seed=seeds[k])``.
    lr : sequence of float, optional
        A learning rate per model; default: the optimizer's ``lr`` for every model.

    Examples
    --------
    >>> stack = gn.MLPStack([1, 16, 2], "tanh", seeds=range(16))
    >>> stack.fit(X, y, epochs=20, batch_size=32, optimizer=gn.SGD(lr=0.1))
    >>> nets = stack.models()        # 16 ordinary MLPs
    """

    def __init__(self, layers, hidden_activation="relu", output_activation="linear", *, seeds, lr=None,
                 device="auto", dtype="float32", init="glorot", l1=0.0, l2=0.0, dropout=0.0):
        try:
            seeds = [checks.check_int("seed", s, low=0) for s in seeds]
        except TypeError:
            raise TypeError(f"seeds must be a sequence of non-negative integers, got {seeds!r}") from None
        if not seeds:
            raise ValueError("seeds must name at least one model")
        if lr is not None:
            if isinstance(lr, (int, float, str)) or not hasattr(lr, "__len__"):
                raise TypeError(f"lr must be a sequence with one learning rate per model, got {lr!r}; for one rate "
                                f"for every model pass it to the optimizer instead (optimizer=gn.Adam(lr=...))")
            lr = [checks.check_hyper("lr", v, low=0.0, low_open=True) for v in lr]
            if len(lr) != len(seeds):
                raise ValueError(f"lr has {len(lr)} values for {len(seeds)} seeds; give one per model")
        self._models = [MLP(layers, hidden_activation, output_activation, device=device, dtype=dtype, seed=s,
                            init=init, l1=l1, l2=l2, dropout=dropout) for s in seeds]
        m0 = self._models[0]
        self.seeds, self.lr = seeds, lr
        self.layer_sizes, self.dtype = m0.layer_sizes, m0.dtype
        self.hidden_activation, self.output_activation = m0.hidden_activation, m0.output_activation
        self.l1, self.l2, self.dropout = m0.l1, m0.l2, m0.dropout
        self.backend, self.xp, self.ops = m0.backend, m0.xp, m0.ops
        self.shapes = m0.shapes
        xp = self.xp
        with self.backend.activate():
            self.params = xp.stack([m.params for m in self._models])  # (K, n_params)
            self.grads = xp.zeros_like(self.params)
        self.optimizer, self.loss, self.epochs_trained = None, None, 0
        self.histories = [_callbacks.History() for _ in seeds]
        self._views = None
        #: set (to the reason) when the fused stacked CPU step failed to compile for this stack
        self.fused_failed = None
        #: how the last ``fit`` trained: ``{"fused_stack_step": {"live", "reason", "epochs"}}`` (also in every
        #: model's ``History.fast_paths``); ``live`` means every epoch of that fit ran in the fused step
        self.fast_paths = {}
        #: the fused stacked step's record: epochs trained in it, the thread count of the last one, and the
        #: latest seconds per model-step at each thread count it tried (:meth:`NumpyOps.stack_threads`)
        self.fused_epochs, self.threads, self.thread_timings = 0, None, {}
        self._said = set()

    # ---------------------------------------------------------------- preprocessing shared by every model
    def set_preprocessing(self, input_mean=None, input_scale=None, classes=None, models=None):
        """Give every model (or the models at the indices ``models``) the input standardisation and class labels
        of :class:`gpunet.MLP` (its attributes ``input_mean``, ``input_scale``, ``classes``): applied by ``fit``
        and :meth:`predict`, kept by :meth:`models`. Models trained on their own data (k-fold cross-validation)
        each get the standardisation fitted on their own training rows. Every model must keep the same classes."""
        if models is not None:
            if isinstance(models, (str, bytes)) or not hasattr(models, "__iter__"):
                raise TypeError(f"models must be a sequence of model indices (e.g. models=[0, 1]), got {models!r}")
            models = list(models)
        chosen = range(len(self)) if models is None else [checks.check_int("models", k, low=0) for k in models]
        if any(k >= len(self) for k in chosen):
            raise ValueError(f"models must be indices below {len(self)} (the stack's models), got {models}")
        for k in chosen:
            m = self._models[k]
            m.input_mean, m.input_scale, m.classes = input_mean, input_scale, classes

    @property
    def classes(self):
        return self._models[0].classes

    def encode_labels(self, y, name="y"):
        """As :meth:`gpunet.MLP.encode_labels` (the models share their classes)."""
        return self._models[0].encode_labels(y, name)

    def resolve_loss(self, loss):
        """The loss ``fit`` would use (as :meth:`gpunet.MLP.resolve_loss`)."""
        return self._models[0].resolve_loss(loss)

    def __len__(self):
        return len(self._models)

    @property
    def device(self) -> str:
        return self.backend.name

    # ------------------------------------------------------------------ layout
    def _blocks(self):
        """(offset, shape) of every parameter block in the flat layout (W1, b1, W2, b2, ...)."""
        for offset, shape in zip(self._models[0].offsets, self.shapes):  # the models' (aligned on CUDA) layout
            yield offset, math.prod(shape), shape

    def _layer_params(self):
        """Per layer ``(W (K, n_in, n_out), b (K, 1, n_out), dW, db)``: views of the flat buffers (NumPy and
        CuPy reshape a column block of a C-contiguous 2-D array without copying), made once and reused."""
        if self._views is not None:
            return self._views
        xp, K = self.xp, len(self)
        blocks = list(self._blocks())
        out = []
        for (ow, sw, shw), (ob, sb, _) in zip(blocks[0::2], blocks[1::2]):
            out.append(tuple(xp.reshape(buf[:, o:o + size], (K,) + shape) for buf in (self.params, self.grads)
                             for o, size, shape in ((ow, sw, shw), (ob, sb, (1, sb)))))
        out = [(W, b, dW, db) for W, b, dW, db in out]
        if self.backend.kind in ("numpy", "cupy") and all(_is_view(v, buf) for W, b, dW, db in out
                                                           for v, buf in ((W, self.params), (dW, self.grads))):
            self._views = out
        return out

    # ------------------------------------------------------------------ one step
    def _step(self, x, y, loss, masks):
        """Forward + backward of batches ``x`` (K, r, n_0), ``y`` (K, r, n_L) into ``self.grads``;
        returns (per-model loss (K,), output activations)."""
        xp, K, mm = self.xp, len(self), self.ops.batched_matmul  # (on CUDA: strided-batched cuBLAS on the views)
        layers = self._layer_params()
        inputs, acts = [x], []
        for l, (W, b, _, _) in enumerate(layers[:-1]):
            a = activations.ACTIVATIONS[self.hidden_activation](mm(inputs[-1], W) + b)
            acts.append(a)
            inputs.append(a * masks[l] if masks else a)
        W, b = layers[-1][:2]
        z = mm(inputs[-1], W) + b
        a_out = activations.ACTIVATIONS[self.output_activation](z)
        value, delta = losses.value(loss, z, a_out, y), losses.delta(loss, self.output_activation, z, a_out, y)
        for l in range(len(layers) - 1, -1, -1):
            _, _, dW, db = layers[l]
            mm(inputs[l], delta, dW, ta=True)
            db[...] = xp.sum(delta, axis=1, keepdims=True)
            if l:
                prev = mm(delta, layers[l][0], tb=True)
                if masks:
                    prev = prev * masks[l - 1]
                delta = activations.backward(self.hidden_activation, acts[l - 1], prev)
        if self.l1 or self.l2:
            for W, _, dW, _ in layers:
                if self.l2:
                    dW[...] = dW + (2.0 * self.l2) * W
                    value = value + self.l2 * xp.sum(xp.reshape(W * W, (K, -1)), axis=1)
                if self.l1:
                    dW[...] = dW + self.l1 * xp.sign(W)
                    value = value + self.l1 * xp.sum(xp.reshape(xp.abs(W), (K, -1)), axis=1)
        if self._views is None:  # this namespace's reshapes were copies: write the gradients back
            for (o, size, _), g in zip(self._blocks(), (g for layer in layers for g in layer[2:])):
                self.grads[:, o:o + size] = xp.reshape(g, (K, size))
        return value, a_out

    def _masks(self, r):
        """Each model's dropout masks for one batch, drawn from its own generator in the order its
        training alone draws them (layer by layer), through the same ``ops.dropout_mask``."""
        if not self.dropout:
            return None
        ops = self.ops
        masks = []
        for n in self.layer_sizes[1:-1]:
            buf = self.zeros((len(self), r, n))
            for k, m in enumerate(self._models):
                buf[k, ...] = ops.dropout_mask(self.zeros((r, n)), self.dropout, m.dropout_rng)
            masks.append(buf)
        return masks

    def zeros(self, shape):
        return self._models[0].zeros(shape)

    # ------------------------------------------------------------------ training
    def _stacked_optimizer(self, optimizer):
        if optimizer is None:
            if self.optimizer is not None:
                return self.optimizer
            optimizer = optim.Adam()
        opt = optim.get(optimizer)
        stacked = optim.from_config(opt.name, opt.get_config())
        stacked.bind(self.params)  # state (K, n_params): the update is elementwise, row k is model k's
        if self.lr is not None:
            with self.backend.activate():
                stacked.lr = self.backend.to_device(np.asarray(self.lr, dtype=np.float64)[:, None], self.dtype)
        return stacked

    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, loss=None, shuffle=True, verbose=0,
            validation_data=None):
        """Train all K models on ``(X, y)``; returns the list of K :class:`History` objects.

        Arguments as in :meth:`gpunet.MLP.fit`. ``optimizer=None`` continues with the stack's
        previous optimizer (state included), else ``Adam()``. A non-finite loss in any model rolls
        every model back to the start of the epoch and raises :class:`DivergenceError` naming it.

        Each model may have its own data (k-fold cross-validation: every fold x seed one model): ``X`` and ``y``
        are then lists of K arrays, model ``k`` training on ``(X[k], y[k])`` with its own standardisation
        (:meth:`set_preprocessing` with ``models=``), and ``validation_data`` a list of K pairs. The training sets
        must have the same number of rows (the models share their batch boundaries); models given the same
        arrays share one uploaded copy. ``validation_data`` (one pair for all models, or one per model) is
        evaluated after every epoch as :meth:`gpunet.MLP.fit` does (``val_loss``, ``val_accuracy``).
        """
        epochs = checks.check_int("epochs", epochs, low=0)
        batch_size = checks.check_int("batch_size", batch_size, low=1)
        verbose = checks.check_int("verbose", verbose, low=0)
        m0 = self._models[0]
        loss = m0.resolve_loss(loss)
        for k, m in enumerate(self._models):
            if (m.classes is None) != (m0.classes is None) or (m.classes is not None and not (
                    len(m.classes) == len(m0.classes) and np.array_equal(m.classes, m0.classes))):
                raise ValueError(f"model {k}'s classes differ from model 0's: the models of a stack share their "
                                 f"classes (set_preprocessing)")
        Xd, Yd, base = per_model.upload_training(self._models, self.backend, X, y, loss)
        val = per_model.upload_validation(self._models, validation_data, loss)
        opt = self._stacked_optimizer(optimizer)
        # ---- nothing above changed any state ----
        self.optimizer, self.loss = opt, loss
        self.histories = [_callbacks.History() for _ in self._models]  # this fit's, as MLP.fit's own History
        be, K = self.backend, len(self)
        n = int(Xd.shape[0]) // len(set(base.tolist()))  # every model's training rows (one block per data set)
        B, sizes = batch_sizes(n, batch_size)
        n_batches = sizes.shape[0]
        classification = loss in losses.CLASSIFICATION
        lrs = self.lr if self.lr is not None else [opt.lr] * K
        reason = self.ops.fused_stack_reason(self, opt)
        fused_epochs = 0
        with be.activate(), np.errstate(all="ignore"):
            snapshot = EpochSnapshot(self.zeros, self.params, opt, self._models)
            for _ in range(epochs):
                epoch = self.epochs_trained
                snapshot.take()
                orders = np.stack([m.shuffle_rng.permutation(n) if shuffle else np.arange(n) for m in self._models])
                idx = be.to_device(orders.astype(np.int64) + base[:, None])  # model k's rows of its own block
                batch_loss = self.zeros((n_batches, K))
                batch_correct = self.zeros((n_batches, K)) if classification else None
                t0 = time.perf_counter()
                if reason is None:  # the whole epoch in one compiled call (gpunet.ops.numba_kernels.stack_epoch)
                    scratch = batch_correct if classification else self.zeros((n_batches, K))
                    if self.ops.fused_stack_epoch(self, Xd, Yd, idx, B, opt, lrs, loss, batch_loss, scratch):
                        fused_epochs += 1
                        self._say(f"fused stacked step on {self.threads} thread(s)", info=False)
                    else:
                        reason = self.ops.fused_stack_reason(self, opt)
                if reason is not None:
                    self._say(reason)
                    self._batched_epoch(Xd, Yd, idx, B, sizes, opt, loss, batch_loss, batch_correct)
                host_loss = be.to_host(batch_loss)
                seconds = time.perf_counter() - t0
                bad = ~np.isfinite(host_loss).all(axis=0)
                if bad.any():
                    snapshot.restore()
                    which = [self.seeds[k] for k in np.flatnonzero(bad)]
                    raise DivergenceError(
                        f"training diverged at epoch {epoch + 1} for the models with seeds {which}; every model "
                        f"was restored to the end of epoch {epoch}. The learning rate is probably too high.")
                epoch_loss = sizes @ host_loss / n
                acc = (be.to_host(batch_correct).sum(axis=0) / losses.accuracy_count(loss, n, self.layer_sizes[-1])
                       if classification else None)
                val_logs = self._validate(val, loss) if val is not None else None
                for k, h in enumerate(self.histories):
                    logs = {"loss": float(epoch_loss[k])}
                    if classification:
                        logs["accuracy"] = float(acc[k])
                    if val_logs is not None:
                        logs.update({f"val_{key}": v for key, v in val_logs[k].items()})
                    logs["lr"] = float(lrs[k])
                    h.on_epoch_end(epoch, logs)
                    h.seconds.append(seconds / K)
                self.epochs_trained += 1
        status = {"live": reason is None, "reason": reason, "epochs": fused_epochs}
        if fused_epochs:
            status.update(threads=self.threads, us_per_model_step={n: round(s * 1e6, 2) for n, s in
                                                                   sorted(self.thread_timings.items())})
        self.fast_paths = dict(self.ops.status(), fused_stack_step=status)
        for h in self.histories:
            h.fast_paths = dict(self.fast_paths)
        return self.histories

    def _validate(self, val, loss):
        """Every model's validation metrics, computed as :meth:`gpunet.MLP.evaluate_device` computes them for a
        model trained alone (the same code, on an evaluation model given each row of the stack's weights)."""
        ev = self._evaluator()
        out = [None] * len(self)
        for Xv, Yv, ks in val:
            for k in ks:
                ev.params[...] = self.params[k, ...]
                out[k] = ev.evaluate_device(Xv, Yv, loss)
        return out

    def _evaluator(self):
        if getattr(self, "_eval_model", None) is None:
            self._eval_model = MLP(self.layer_sizes, self.hidden_activation, self.output_activation,
                                   device=self.backend, dtype=self.dtype, seed=0, l1=self.l1, l2=self.l2)
        return self._eval_model

    def _say(self, reason, info=True):
        """Log once per stack and reason that it trains with batched GEMMs instead of the fused step (or, at
        debug level, the thread count the fused step chose)."""
        if reason not in self._said:
            self._said.add(reason)
            if info:
                log.info("gpunet: MLPStack trains with batched %s GEMMs, not the fused stacked step: %s",
                         self.backend.kind, reason)
            else:
                log.debug("gpunet: MLPStack: %s", reason)

    def _batched_epoch(self, Xd, Yd, idx, B, sizes, opt, loss, batch_loss, batch_correct):
        """One epoch of every model with batched GEMMs over ``(K, rows, n)`` stacks (any namespace)."""
        xp, K = self.xp, len(self)
        for i in range(sizes.shape[0]):
            s, r = i * B, int(sizes[i])
            rows = xp.reshape(idx[:, s:s + r], (-1,))
            x = xp.reshape(xp.take(Xd, rows, axis=0), (K, r, Xd.shape[1]))
            yb = xp.reshape(xp.take(Yd, rows, axis=0), (K, r, Yd.shape[1]))
            value, a_out = self._step(x, yb, loss, self._masks(r))
            opt.step(self.params, self.grads)
            batch_loss[i, ...] = value
            if batch_correct is not None:
                batch_correct[i, ...] = losses.correct(loss, a_out, yb)

    # ------------------------------------------------------------------ results
    def models(self):
        """The K models as new, independent :class:`gpunet.MLP` objects: each holds a copy of the stack's
        current weights, its own optimizer (its learning rate and its row of the state), the loss, epoch
        count, generator states and history. Training, saving or changing one never touches the stack, and
        the stack never rewrites a model it handed out."""
        opt = self.optimizer
        out = []
        for k, template in enumerate(self._models):
            m = MLP(self.layer_sizes, self.hidden_activation, self.output_activation, device=self.backend,
                    dtype=self.dtype, seed=template.seed, init=template.init, l1=self.l1, l2=self.l2,
                    dropout=self.dropout)
            m.params[...] = self.params[k, ...]
            m.shuffle_rng.bit_generator.state = template.shuffle_rng.bit_generator.state
            m.dropout_rng.bit_generator.state = template.dropout_rng.bit_generator.state
            m.loss, m.epochs_trained = self.loss, self.epochs_trained
            m.input_mean, m.input_scale, m.classes = template.input_mean, template.input_scale, template.classes
            m.history = copy.deepcopy(self.histories[k])
            if opt is not None:
                config = dict(opt.get_config(), lr=float(self.lr[k]) if self.lr is not None else opt.lr)
                own = optim.from_config(opt.name, config)
                own.bind(m.params)
                for name, v in opt.state.items():
                    own.state[name][...] = v[k, ...]
                own.step_count = opt.step_count
                m.optimizer = own
            out.append(m)
        return out

    def predict(self, X):
        """Outputs of every model for ``X``: a host array (K, n_samples, n_outputs). Changes nothing."""
        xp = self.xp
        groups = per_model.groups([(X,)] * len(self), self._models)  # one upload per standardisation (folds)
        inputs = [(self._models[ks[0]].upload(X, None, None, targets=False, sparse=False)[0], ks) for _, ks in groups]
        out = None
        with self.backend.activate():
            layers = self._layer_params()
            for Xd, ks in inputs:
                a = xp.reshape(Xd, (1,) + tuple(Xd.shape))
                chosen = None if len(groups) == 1 else self.backend.to_device(np.asarray(ks, dtype=np.int64))
                weights = [(W, b) if chosen is None else (xp.take(W, chosen, axis=0), xp.take(b, chosen, axis=0))
                           for W, b, _, _ in layers]  # the models of this standardisation
                for W, b in weights[:-1]:
                    a = activations.ACTIVATIONS[self.hidden_activation](self.ops.batched_matmul(a, W) + b)
                W, b = weights[-1]
                a = self.backend.to_host(activations.ACTIVATIONS[self.output_activation](
                    self.ops.batched_matmul(a, W) + b))
                if len(groups) == 1:
                    return a
                if out is None:
                    out = np.empty((len(self),) + a.shape[1:], dtype=a.dtype)
                out[ks] = a
        return out

    def __repr__(self):
        return (f"MLPStack({list(self.layer_sizes)}, K={len(self)}, hidden_activation={self.hidden_activation!r}, "
                f"output_activation={self.output_activation!r}, device={self.device!r}, dtype={self.dtype!r})")


def _is_view(v, base):
    """Whether ``v`` shares ``base``'s memory (NumPy and CuPy)."""
    owner = getattr(v, "base", None)
    return owner is base or (owner is not None and getattr(owner, "base", None) is base)
