"""The multilayer perceptron: parameters, forward pass and backpropagation.

Notation (rows are samples, ``B`` of them in a batch; layer ``l`` maps ``n_{l-1}`` to ``n_l`` units)::

    a_0 = x                                   (B, n_0)
    z_l = a_{l-1} @ W_l + b_l                 W_l (n_{l-1}, n_l), b_l (n_l,)
    a_l = f(z_l)  (hidden),  a_L = g(z_L)     (B, n_l)

    delta_L = dL/dz_L                         from :mod:`gpunet.losses`
    dW_l = a_{l-1}.T @ delta_l,  db_l = sum_rows(delta_l)
    delta_{l-1} = (delta_l @ W_l.T) * f'(a_{l-1})

All parameters live in one flat device buffer ``params`` (``W1, b1, W2, b2, ...`` in that order, each
row-major) and all gradients in a flat ``grads`` of the same layout; ``W``/``b``/``dW``/``db`` are
views into them, so an optimizer step is a few whole-buffer operations. Activations and deltas live
in preallocated per-batch-size workspaces.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from gpunet import backend as _backend, checks, describe, metrics, onnx, saving, training
from gpunet.nn import activations, initializers as _init, losses
from gpunet.nn.layout import Layout, flatten, split
from gpunet.ops import get_ops

DEFAULT_EVAL_BATCH = 4096


class _Workspace:
    """Preallocated buffers for batches of up to ``rows`` samples."""

    def __init__(self, model, rows):
        zeros = model.zeros
        sizes = model.layer_sizes
        self.rows = rows
        self.a = [zeros((rows, n)) for n in sizes]  # a[0]: the gathered batch; a[l]: layer l's output
        self.z = zeros((rows, sizes[-1]))  # output-layer logits (kept for stable cross-entropies)
        self.delta = [None] + [zeros((rows, n)) for n in sizes[1:]]
        self.y = zeros((rows, sizes[-1]))
        hidden = sizes[1:-1]
        self.mask = [zeros((rows, n)) for n in hidden] if model.dropout else []
        self.dropped = [zeros((rows, n)) for n in hidden] if model.dropout else []


class MLP:
    """A fully connected feed-forward network trained with mini-batch backpropagation.

    Parameters
    ----------
    layers : sequence of int
        Layer sizes ``[n_inputs, hidden..., n_outputs]``, e.g. ``[784, 512, 256, 10]``.
    hidden_activation : {"relu", "sigmoid", "tanh", "linear"}
    output_activation : {"linear", "sigmoid", "softmax", "tanh", "relu"}
    device : {"auto", "cpu", "cuda", "cuda:N"}
        Where the maths runs; ``"auto"`` picks a usable CUDA device, else the CPU.
    dtype : {"float32", "float64"}
    seed : int or None
        Seeds the host RNGs for initial weights, batch order and dropout masks: the same seed gives
        the same initial weights and batch order on every device.
    init : {"glorot", "he"}
        Glorot uniform everywhere (default), or He normal for the hidden layers.
    l1, l2 : float
        Penalties ``l1 * sum|W| + l2 * sum W^2`` over the weight matrices (not biases), part of the
        objective that ``fit`` minimises and ``evaluate`` reports.
    dropout : float
        Inverted-dropout rate on hidden-layer outputs during ``fit`` only.
    """

    def __init__(self, layers, hidden_activation="relu", output_activation="linear", *, device="auto",
                 dtype="float32", seed=0, init="glorot", l1=0.0, l2=0.0, dropout=0.0):
        self.layer_sizes = checks.check_layers(layers)
        self.hidden_activation = activations.canonical(hidden_activation, activations.HIDDEN, "hidden activation")
        self.output_activation = activations.canonical(output_activation, activations.OUTPUT, "output activation")
        self.dtype = _backend.check_dtype(dtype)
        if seed is not None:
            seed = checks.check_int("seed", seed, low=0)
        if init not in _init.SCHEMES:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(_init.SCHEMES)}")
        self.init = init
        self.l1 = checks.check_nonnegative("l1", l1)
        self.l2 = checks.check_nonnegative("l2", l2)
        self.dropout = checks.check_fraction("dropout", dropout)
        if self.output_activation == "softmax" and self.layer_sizes[-1] == 1:
            raise ValueError("a softmax over one output unit is always 1 (nothing to learn): use "
                             "output_activation='sigmoid' for two classes, or one unit per class")
        self.backend = _backend.resolve(device)
        self.xp = self.backend.xp
        #: the primitives of this model's device (:func:`gpunet.ops.get_ops`)
        self.ops = get_ops(self.backend)
        #: set when the fused CPU step failed to compile for this model (it then uses the NumPy primitives)
        self.fused_failed = False
        self.seed = seed
        init_rng, self.shuffle_rng, self.dropout_rng = _init.rng_streams(seed)
        self.optimizer = None
        self.loss = None
        self.epochs_trained = 0
        self.stop_training = False
        #: per-feature standardisation applied to every input on the device: ``(X - input_mean) / input_scale``
        #: (None or host float64 arrays of shape (n_features,)); stored in the model file
        self.input_mean = None
        self.input_scale = None
        #: the original class labels (host 1-D array, strings or numbers) or None: targets given to
        #: fit/evaluate/score are mapped through it, predict_classes returns them
        self.classes = None
        #: the table schema (:class:`gpunet.tabular.Schema`) or None: with one, inputs are tables whose columns are
        #: selected by name, imputed and one-hot encoded on the device before the standardisation; stored in the file
        self.schema = None
        self._workspaces = {}
        #: held by fit: one training call at a time per model (predict/evaluate may run meanwhile)
        self.fit_lock = threading.Lock()
        self._allocate()
        self._write_flat(_init.initial_weights(self.layer_sizes, self.hidden_activation, self.init, init_rng))

    # ------------------------------------------------------------------ parameters
    @property
    def device(self) -> str:
        return self.backend.name

    @property
    def n_params(self) -> int:
        """The number of parameters (weights and biases; the flat buffer may hold alignment padding)."""
        return self.layout.n_params

    def zeros(self, shape):
        with self.backend.activate():
            if self.backend.kind == "generic":
                return self.xp.zeros(shape, dtype=self.backend.dtype(self.dtype), device=self.backend.device)
            return self.xp.zeros(shape, dtype=self.dtype)

    #: on CUDA devices every weight and bias view starts on a 16-byte boundary (cuBLAS picks its fastest
    #: kernels, and vectorised loads need it, only for aligned operands); the padding between blocks is zero
    #: and stays zero (its gradient is zero, so no optimizer moves it). The CPU layout is dense.
    ALIGN_BYTES = 16

    def _allocate(self):
        align = self.ALIGN_BYTES // np.dtype(self.dtype).itemsize if self.backend.is_gpu else 1
        self.layout = Layout(self.layer_sizes, align)
        self.shapes, self.offsets = self.layout.shapes, self.layout.offsets
        self.params = self.zeros((self.layout.size,))
        self.grads = self.zeros((self.layout.size,))
        views = self.layout.views(self.xp, self.params)
        gviews = self.layout.views(self.xp, self.grads)
        self.W, self.b = views[0::2], views[1::2]
        self.dW, self.db = gviews[0::2], gviews[1::2]

    def padded(self, dense):
        """Host: a dense parameter vector (the file layout) in this model's flat layout."""
        return self.layout.padded(dense)

    def dense(self, flat):
        """Host: this model's flat layout back to the dense vector (the file layout)."""
        return self.layout.dense(flat)

    def _write_flat(self, host_arrays):
        self.params[...] = self.backend.to_device(self.padded(flatten(host_arrays)), self.dtype)

    def get_weights(self):
        """Host copies ``[W1 (n0, n1), b1 (n1,), W2, b2, ...]``."""
        return split(self.dense(self.backend.to_host(self.params)), self.shapes)

    def set_weights(self, weights):
        """Replace all parameters from host arrays in :meth:`get_weights` order and shapes.

        Nothing changes unless every array has the right shape and finite real values.
        """
        if not isinstance(weights, (list, tuple)):
            raise TypeError("weights must be a list of arrays [W1, b1, W2, b2, ...]")
        if len(weights) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} arrays [W1, b1, ...], got {len(weights)}")
        host = []
        for i, (w, shape) in enumerate(zip(weights, self.shapes)):
            kind = "W" if i % 2 == 0 else "b"
            arr = checks.as_float_array(f"{kind}{i // 2 + 1}", w)
            if arr.shape != shape:
                raise ValueError(f"{kind}{i // 2 + 1} must have shape {shape}, got {arr.shape}")
            checks.check_finite(f"{kind}{i // 2 + 1}", arr)
            checks.check_fits(f"{kind}{i // 2 + 1}", arr, self.dtype)
            host.append(arr)
        self._write_flat(host)

    # ------------------------------------------------------------------ forward / backward
    def workspace(self, rows):
        """Buffers for batches of ``rows``, one set per thread: predict/evaluate may run in several
        threads at once (fit holds a lock). An evicted workspace stays alive while a call still uses it."""
        key = (rows, threading.get_ident())
        ws = self._workspaces.get(key)
        if ws is None:
            if len(self._workspaces) >= 8:  # a few sizes (train, eval, last call) per thread are plenty
                with contextlib.suppress(KeyError, StopIteration, RuntimeError):
                    self._workspaces.pop(next(iter(self._workspaces)))
            ws = self._workspaces[key] = _Workspace(self, rows)
        return ws

    def _forward(self, x, ws, train=False, output=True):
        """Forward pass of ``x`` (r, n_0), r <= ws.rows; returns the output activations (r, n_L)
        and the list of each layer's input (for backprop). ``output=False`` leaves the output activations
        unwritten (the logits are in ``ws.z``) for a loss kernel that computes them itself."""
        ops = self.ops
        r = x.shape[0]
        inputs = [x]
        for l in range(len(self.W) - 1):
            a = ops.bias_activation(ops.matmul(inputs[-1], self.W[l], ws.a[l + 1][:r, ...]), self.b[l], self.hidden_activation)
            if train and self.dropout:
                mask = ops.dropout_mask(ws.mask[l][:r, ...], self.dropout, self.dropout_rng)
                a = ops.scale_(_copy_into(ws.dropped[l][:r, ...], a), mask)
            inputs.append(a)
        z = ops.matmul(inputs[-1], self.W[-1], ws.z[:r, ...])
        z += self.b[-1]
        if not output:
            return ws.a[-1][:r, ...], inputs
        return ops.activation(self.output_activation, z, ws.a[-1][:r, ...]), inputs

    def _backward(self, ws, inputs, train=False):
        """Fill ``grads`` from ``ws.delta[L]`` (dL/dz of the output layer, already computed).
        ``train`` says the forward pass applied the dropout masks in ``ws.mask``."""
        ops = self.ops
        r = inputs[0].shape[0]
        delta = ws.delta[-1][:r, ...]
        for l in range(len(self.W) - 1, -1, -1):
            ops.matmul_tn(inputs[l], delta, self.dW[l])
            ops.sum_rows(delta, self.db[l])
            if l:
                prev = ops.matmul_nt(delta, self.W[l], ws.delta[l][:r, ...])
                if train and self.dropout:
                    ops.scale_(prev, ws.mask[l - 1][:r, ...])
                delta = ops.activation_backward(prev, ws.a[l][:r, ...], self.hidden_activation)

    def add_penalty(self):
        """Add the penalty's gradient to ``dW``; return its value (see :meth:`_penalty_value`)."""
        for W, dW in zip(self.W, self.dW):
            if self.l2:
                dW += (2.0 * self.l2) * W
            if self.l1:
                dW += self.l1 * self.xp.sign(W)
        return self._penalty_value()

    def _penalty_value(self):
        """``l1 * sum|W| + l2 * sum W^2`` over the weight matrices, as a 0-d device array."""
        xp = self.xp
        value = 0.0
        for W in self.W:
            if self.l2:
                value = value + self.l2 * xp.sum(W * W)
            if self.l1:
                value = value + self.l1 * xp.sum(xp.abs(W))
        return value

    def step_gradients(self, x, y, ws, loss, train, count=False, weight=None):
        """Forward + backward on one batch; returns (loss 0-d array, output activations, number correct as a
        0-d array when ``count``, else None). ``weight`` (r, 1): per-sample weights of the batch rows; the
        loss is then their weighted mean (:func:`gpunet.nn.losses.weighted_value`)."""
        ops, r, act = self.ops, x.shape[0], self.output_activation
        # the fused CUDA cross-entropy kernels write the softmax/sigmoid outputs themselves: not twice
        a_out, inputs = self._forward(x, ws, train=train, output=weight is not None or not ops.loss_writes_output(loss, act))
        if weight is None:
            value, correct = ops.loss_delta_correct(loss, act, ws.z[:r, ...], a_out, y, ws.delta[-1][:r, ...], count)
        else:
            value = ops.loss_delta_weighted(loss, act, ws.z[:r, ...], a_out, y, losses.row_factors(weight),
                                            ws.delta[-1][:r, ...])
            correct = ops.correct(loss, a_out, y) if count else None
        self._backward(ws, inputs, train)
        if self.l1 or self.l2:
            value = value + self.add_penalty()
        return value, a_out, correct

    # ------------------------------------------------------------------ public API
    def resolve_loss(self, loss):
        if loss is None:
            loss = self.loss or {"softmax": "cross_entropy", "sigmoid": "binary_cross_entropy"}.get(self.output_activation, "mse")
        loss = losses.canonical(loss)
        need = losses.REQUIRED_OUTPUT.get(loss)
        if need and self.output_activation != need:
            raise ValueError(f"loss {loss!r} needs output_activation={need!r}, but this network's output is "
                             f"{self.output_activation!r}")
        return loss

    def upload(self, X, y, loss, name="X", targets=True, sparse=True):
        """Validate on the host, then upload ``X`` (standardised on the device when the model has
        ``input_mean``/``input_scale``) and float targets ``Y`` (n, n_L) once: the one door every fit,
        evaluation and prediction of MLP, MLPStack and the estimators goes through. ``targets=False``
        (prediction) uploads ``X`` alone; otherwise ``y`` is required. Sparse ``X`` becomes
        :class:`gpunet.backend.SparseRows` unless ``sparse=False`` (then it is refused, saying so)."""
        if targets and y is None:
            what = "y" if name == "X" else f"the {name.rpartition(' X')[0] or name} targets"
            raise ValueError(f"{what} is required: pass the targets as well as the inputs (got None)")
        if self.schema is not None:
            Xh, Xd = self._upload_table(X, name)
        elif checks.is_sparse(X) and sparse:  # kept sparse on the device, densified per batch (SparseRows)
            standardised = self.input_mean is not None or self.input_scale is not None
            Xd = Xh = self.backend.sparse_rows(checks.check_sparse_X(X, self.layer_sizes[0], name, standardised),
                                               self.dtype, name)
        elif self.backend.kind == "cupy" and checks.is_device_array(X):
            Xd = self.backend.adopt(X, self.layer_sizes[0], self.dtype, name)  # stays on the device
            Xh = Xd  # only its shape is read below
        else:
            Xh = checks.check_fits(name, checks.check_X(X, self.layer_sizes[0], name), self.dtype)
            Xd = self.backend.to_device(Xh, self.dtype)
        if (self.input_mean is not None or self.input_scale is not None) and not isinstance(Xd, _backend.SparseRows):
            Xd = self._standardise(Xd)
        if not targets:
            return Xd, None
        yname = "y" if name == "X" else f"{name} targets"
        if self.backend.kind == "cupy" and checks.is_device_array(y):  # labels are checked on the host
            y = self.backend.to_host(y if isinstance(y, self.xp.ndarray) else self.xp.from_dlpack(y))
        Yh = checks.check_targets(self.encode_labels(y, yname), Xh.shape[0], self.layer_sizes[-1], loss, yname)
        checks.check_fits(yname, Yh, self.dtype)
        return Xd, self.backend.to_device(Yh, self.dtype)

    def _upload_table(self, X, name):
        """A table through the schema: columns by name to codes on the host, imputation and one-hot on the device."""
        if self.schema.width() != self.layer_sizes[0]:
            raise ValueError(f"the schema gives {self.schema.width()} inputs but the network takes {self.layer_sizes[0]}")
        R = self.schema.codes(X, name, self.dtype)
        Rd = self.backend.to_device(R, self.dtype)
        with self.backend.activate():
            return R, self.schema.expand(Rd, self.backend.to_device, self.dtype)

    def _standardise(self, Xd):
        """``(Xd - input_mean) / input_scale`` on the device (a new array: the upload may share the
        caller's host memory on the CPU)."""
        n = self.layer_sizes[0]
        mean, scale = checks.check_standardisation(self.input_mean, self.input_scale, n, dtype=self.dtype)
        with self.backend.activate():
            return (Xd - self.backend.to_device(mean.reshape(1, n), self.dtype)) / \
                self.backend.to_device(scale.reshape(1, n), self.dtype)

    def encode_labels(self, y, name="y"):
        """Original labels -> class indices when the model has ``classes``; anything else unchanged."""
        return checks.encode_labels(self.classes, y, name)

    def loss_and_gradients(self, X, y, loss=None, sample_weight=None):
        """Objective value and its exact gradient on the full set ``(X, y)`` (dropout off).

        Returns ``(value, grads)`` with ``grads`` host arrays in :meth:`get_weights` order/shapes.
        The value is what :meth:`evaluate` reports as ``"loss"`` (with ``sample_weight``, the weighted
        mean loss plus the penalty).
        """
        loss = self.resolve_loss(loss)
        Xd, Yd = self.upload(X, y, loss)
        Xd, Wd = Xd[:] if checks.is_sparse(X) else Xd, self.upload_weights(sample_weight, Xd.shape[0])  # full batch
        with self.backend.activate():
            ws = self.workspace(Xd.shape[0])
            value, _, _ = self.step_gradients(Xd, Yd, ws, loss, train=False, weight=Wd)
            return self.backend.item(value), split(self.dense(self.backend.to_host(self.grads)), self.shapes)

    def upload_weights(self, sample_weight, n):
        """Checked per-sample weights on the device, (n, 1) in the model's dtype, or None (absent or all equal)."""
        w = checks.check_sample_weight(sample_weight, n)
        return None if w is None else self.backend.to_device(w, self.dtype)

    def _predict_device(self, Xd, batch_size):
        rows = min(batch_size, Xd.shape[0])
        ws = self.workspace(rows)
        out = self.zeros((Xd.shape[0], self.layer_sizes[-1]))
        for s in range(0, Xd.shape[0], rows):
            a, _ = self._forward(Xd[s:s + rows, ...], ws)
            out[s:s + rows, ...] = a
        return out

    def predict(self, X, batch_size=DEFAULT_EVAL_BATCH):
        """Output activations for ``X`` (n, n_0) as a host array (n, n_L)."""
        batch_size = checks.check_int("batch_size", batch_size, low=1)
        Xd, _ = self.upload(X, None, None, targets=False)
        with self.backend.activate():
            return self.backend.to_host(self._predict_device(Xd, batch_size))

    def predict_classes(self, X, batch_size=DEFAULT_EVAL_BATCH):
        """Class indices (argmax for several outputs, threshold 0.5 for one sigmoid output), or the
        original labels when the model has ``classes``."""
        p = self.predict(X, batch_size)
        idx = p.argmax(axis=1) if p.shape[1] > 1 else (p[:, 0] > 0.5).astype("int64")
        return idx if self.classes is None else self.classes[idx]

    def predict_proba(self, X, batch_size=DEFAULT_EVAL_BATCH):
        """Class probabilities (n, n_classes), as in scikit-learn: the softmax outputs, or
        ``[1 - p, p]`` for a one-unit sigmoid output (several sigmoid units: one probability each)."""
        if self.output_activation not in ("softmax", "sigmoid"):
            raise ValueError(f"predict_proba needs a softmax or sigmoid output, but this network's output is "
                             f"{self.output_activation!r} (use predict for regression)")
        p = self.predict(X, batch_size)
        if p.shape[1] == 1 and self.output_activation == "sigmoid":
            return np.hstack([1.0 - p, p])
        return p

    def score(self, X, y, batch_size=DEFAULT_EVAL_BATCH):
        """scikit-learn's ``score``: accuracy for classifiers (cross-entropy losses, or a softmax /
        sigmoid output before any training), the coefficient of determination R^2 otherwise
        (averaged uniformly over outputs, as ``sklearn.metrics.r2_score``)."""
        loss = self.resolve_loss(None)
        p = self.predict(X, batch_size)  # validates X (host or device arrays)
        n = p.shape[0]
        if loss in losses.CLASSIFICATION:
            Y = checks.check_targets(self.encode_labels(y), n, self.layer_sizes[-1], loss)
            if loss == "cross_entropy":
                return float(np.mean(p.argmax(axis=1) == Y.argmax(axis=1)))
            return float(np.mean((p > 0.5) == (Y > 0.5)))
        return metrics.r2_score(checks.check_targets(y, n, self.layer_sizes[-1], loss), p)

    def evaluate_device(self, Xd, Yd, loss, batch_size=DEFAULT_EVAL_BATCH, penalty=True):
        """Loss (plus penalty) and accuracy of device data; one host read at the end."""
        n = Xd.shape[0]
        rows = min(batch_size, n)
        ws = self.workspace(rows)
        total = correct = 0.0
        for s in range(0, n, rows):
            x, y = Xd[s:s + rows, ...], Yd[s:s + rows, ...]
            a, _ = self._forward(x, ws)
            r = x.shape[0]
            total = total + r * losses.value(loss, ws.z[:r, ...], a, y)
            if loss in losses.CLASSIFICATION:
                correct = correct + self.ops.correct(loss, a, y)
        if penalty and (self.l1 or self.l2):
            total = total + n * self._penalty_value()
        result = {"loss": self.backend.item(total) / n}
        if loss in losses.CLASSIFICATION:
            result["accuracy"] = self.backend.item(correct) / losses.accuracy_count(loss, n, self.layer_sizes[-1])
        return result

    def evaluate(self, X, y, loss=None, batch_size=DEFAULT_EVAL_BATCH, penalty=True):
        """``{"loss": float, "accuracy": float}`` (accuracy for cross-entropy losses only).

        The loss is the training objective: the data loss plus the L1/L2 penalty; ``penalty=False``
        reports the data loss alone (to compare models with different penalties).
        """
        loss = self.resolve_loss(loss)
        batch_size = checks.check_int("batch_size", batch_size, low=1)
        Xd, Yd = self.upload(X, y, loss)
        with self.backend.activate():
            return self.evaluate_device(Xd, Yd, loss, batch_size, penalty=bool(penalty))

    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, loss=None, validation_data=None,
            shuffle=True, callbacks=None, verbose=1, cuda_graph=None, distributed=False, shard=False,
            validation_split=0.0, record="epoch", sample_weight=None):
        """Train with mini-batch gradient descent; returns a :class:`gpunet.callbacks.History`.

        ``optimizer=None`` continues with the model's previous optimizer (state included; after
        :func:`gpunet.load` the saved one), or starts ``Adam()``. See :func:`gpunet.training.fit`.
        """
        if self.schema is not None and validation_split:  # Keras' last rows of a table, its columns by name
            X = self.schema.ordered(X)
        return training.fit(self, X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, loss=loss,
                         validation_data=validation_data, shuffle=shuffle, callbacks=callbacks, verbose=verbose,
                         cuda_graph=cuda_graph, distributed=distributed, shard=shard,
                         validation_split=validation_split, record=record, sample_weight=sample_weight)

    def save(self, path, **kwargs):
        """Write ``path`` (.npz: weights, optimizer state, JSON metadata; atomic, no pickle)."""
        return saving.save(self, path, **kwargs)

    def to_onnx(self, path):
        """Write the network as an ONNX graph (Gemm + activation nodes) that onnxruntime and other ONNX
        runtimes execute; needs ``pip install 'gpunet[onnx]'``. See :mod:`gpunet.onnx`."""
        return onnx.export(self, path)

    def summary(self) -> str:
        """A table of layers with shapes and parameter counts."""
        return describe.summary(self)

    def __repr__(self):
        return (f"MLP({list(self.layer_sizes)}, hidden_activation={self.hidden_activation!r}, "
                f"output_activation={self.output_activation!r}, device={self.device!r}, dtype={self.dtype!r})")

    def __str__(self):
        return self.summary()


def _copy_into(out, a):
    out[...] = a
    return out


def load(path, device="auto", dtype=None):
    """Rebuild a model saved with :meth:`MLP.save` on ``device`` (optimizer and RNG state included, so ``fit``
    continues where it stopped). ``dtype`` overrides the saved one (``"float32"``/``"float64"``).

    Raises ``ValueError`` naming the file when it is not a valid gpunet model; a bad ``device`` or ``dtype``
    argument is reported as the caller's error, not the file's."""
    be = _backend.resolve(device)  # a bad device is the caller's error, not the file's
    if dtype is not None:
        dtype = _backend.check_dtype(dtype)
    meta, arrays = saving.read(path)
    try:
        model = MLP(meta["layers"], meta["hidden_activation"], meta["output_activation"], device=be,
                    dtype=dtype or meta["dtype"], seed=meta["seed"], init=meta["init"], l1=meta["l1"], l2=meta["l2"],
                    dropout=meta["dropout"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid architecture in metadata ({exc})") from None
    saving.restore_into(model, path, meta, arrays)
    return model
