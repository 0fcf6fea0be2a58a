"""What gpunet.sklearn's two estimators share: the parameters, the network and its scale, the three solvers
(Adam and SGD through :meth:`gpunet.MLP.fit`, L-BFGS through :mod:`gpunet.training.lbfgs`) and pickling. The
semantics are described in :mod:`gpunet.sklearn`."""
from __future__ import annotations

import copy
import io
import os
import tempfile
import warnings
from numbers import Real

import numpy as np

try:
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("gpunet.sklearn needs scikit-learn: pip install 'gpunet[sklearn]'") from exc

from gpunet import backend as _backend, callbacks as _callbacks, optim, training
from gpunet.errors import DeviceUnavailableError, DivergenceError
from gpunet.model import MLP, load

HIDDEN = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
OUTPUT = {"identity": "linear", "logistic": "sigmoid", "softmax": "softmax", "exp": "exp"}
LOSS = {"identity": "mse", "logistic": "binary_cross_entropy", "softmax": "cross_entropy", "exp": "poisson"}
NONFINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and need to "
              "be preprocessed.")
EXTRA_CONSTRAINTS = {
    "device": [str],
    "dtype": [None, StrOptions({"float32", "float64"}), type],
    "dropout": [Interval(Real, 0, 1, closed="left")],
    "optimizer": [None, StrOptions({"adam", "adamw", "sgd"}), optim.Optimizer],
}


class Solver:
    """scikit-learn's optimizer object (``est._optimizer``): the current ``learning_rate`` and its schedule
    (``constant``/``invscaling``/``adaptive``), over the gpunet optimizer that takes the steps."""

    def __init__(self, est, opt, scale, resumed=False):
        self.opt, self.scale, self.sgd = opt, scale, isinstance(opt, optim.SGD)
        self.schedule = est.learning_rate if self.sgd and est.optimizer is None else "constant"
        self.learning_rate_init = float(est.learning_rate_init)
        self.power_t = est.power_t
        # over the optimizer of an unpickled or copied network: its current rate (an adaptive schedule's
        # divisions by 5 included), not learning_rate_init
        self.learning_rate = float(opt.lr) / scale if resumed and self.sgd else self.learning_rate_init

    def _set(self, eta):
        self.learning_rate = eta
        if self.sgd:
            self.opt.lr = eta * self.scale

    def iteration_ends(self, t):
        if self.schedule == "invscaling":
            self._set(self.learning_rate_init / (t + 1) ** self.power_t)

    def trigger_stopping(self, msg, verbose):
        if self.schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")  # noqa: T201 (scikit-learn's verbose output)
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")  # noqa: T201
            return True
        self._set(self.learning_rate / 5.0)
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)  # noqa: T201
        return False


def reported(net, out_activation, value, scale):
    """scikit-learn's value of its objective from gpunet's scaled one (``value``, the network at the point):
    the same but for the multi-output squared error, whose value scikit-learn averages over the outputs (its
    gradient sums them; so does its L-BFGS, which sees this value with that gradient)."""
    k = net.layer_sizes[-1]
    if out_activation != "identity" or k == 1:
        return value
    penalty = scale * net.l2 * sum(float((W * W).sum()) for W in net.get_weights()[0::2])
    return (value - penalty) / k + penalty


class Epochs(_callbacks.Callback):
    """scikit-learn's per-iteration bookkeeping inside one gpunet ``fit``: ``loss_curve_``, ``t_``, the
    no-improvement count (training loss, or validation score with early stopping), the learning-rate
    schedule, and the best weights under early stopping."""

    def __init__(self, est, state, validation, n_train, score):
        self.est, self.s, self.validation, self.n_train, self.score_net = est, state, validation, n_train, score

    def on_epoch_end(self, epoch, logs=None):
        est, s = self.est, self.s
        loss = reported(self.model, s["out_activation_"], s["scale"] * float(logs["loss"]), s["scale"])
        s["n_iter_"] += 1
        s["t_"] += self.n_train
        s["loss_"] = loss
        s["loss_curve_"].append(loss)
        if est.verbose:
            print("Iteration %d, loss = %.8f" % (s["n_iter_"], loss))  # noqa: T201
        self.update_no_improvement(score=self.score() if self.validation is not None else None)
        s["solver"].iteration_ends(s["t_"])
        if s["_no_improvement_count"] > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            msg = f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs."
            if s["solver"].trigger_stopping(msg, est.verbose):
                self.model.stop_training = True
            else:
                s["_no_improvement_count"] = 0

    def score(self):
        Xv, yv, wv = self.validation
        return self.score_net(self.model, Xv, yv, wv)

    def update_no_improvement(self, score=None):
        est, s = self.est, self.s
        if self.validation is not None:
            s["validation_scores_"].append(score)
            if est.verbose:
                print("Validation score: %f" % score)  # noqa: T201
            s["_no_improvement_count"] = 0 if score >= s["best_validation_score_"] + est.tol \
                else s["_no_improvement_count"] + 1
            if score > s["best_validation_score_"]:
                s["best_validation_score_"] = score
                s["best_weights"] = self.model.get_weights()
        else:
            loss = s["loss_curve_"][-1]
            s["_no_improvement_count"] = s["_no_improvement_count"] + 1 if loss > s["best_loss_"] - est.tol else 0
            s["best_loss_"] = min(s["best_loss_"], loss)


class BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network, the three solvers, pickling."""

    # ------------------------------------------------------------------ the network and its scale
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError("hidden_layer_sizes must be > 0, got %s." % sizes)
        if any(int(s) != s for s in sizes):
            raise ValueError("hidden_layer_sizes must be whole numbers of units, got %s." % sizes)
        return [int(s) for s in sizes]

    def _scale(self, out_activation, n_outputs):
        """``c``: scikit-learn's objective over gpunet's (means over entries): see the module docstring."""
        if out_activation == "softmax":
            return 1.0
        return n_outputs / 2.0 if out_activation == "identity" else float(n_outputs)

    def _init_weights(self, rs, layer_units, dtype):
        """scikit-learn's ``_init_coef``: uniform in +-sqrt(factor / (fan_in + fan_out)) for weights and biases."""
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights = []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False))
            weights.append(rs.uniform(-bound, bound, fan_out).astype(dtype, copy=False))
        return weights

    def _device(self):
        return self.device

    def _build_net(self, layer_units, out_activation, dtype, weights, seed):
        net = MLP(layer_units, HIDDEN[self.activation], OUTPUT[out_activation], device=self._device(),
                  dtype=np.dtype(dtype).name, seed=seed, dropout=self.dropout)
        net.set_weights(weights)
        return net

    def _net(self):
        """The fitted network, rebuilt from ``coefs_``/``intercepts_`` when those were replaced or edited."""
        weights = [w for pair in zip(self.coefs_, self.intercepts_) for w in pair]
        net = getattr(self, "_model", None)
        if net is not None and net.output_activation != OUTPUT[self.out_activation_]:
            net = None
        elif net is not None and net.hidden_activation != HIDDEN[self.activation]:
            # ``activation`` set after the fit: scikit-learn's forward pass reads it, so does ours; the network
            # (and its optimizer's state, which a partial_fit or warm start continues, as scikit-learn's does)
            # stays, with the new activation
            net.hidden_activation = HIDDEN[self.activation]
        exported = getattr(self, "_exported", None)
        flat = np.concatenate([np.ravel(np.asarray(w, dtype=np.float64)) for w in weights])
        if net is not None and exported is not None and exported.shape == flat.shape and np.array_equal(exported, flat):
            return net
        units = [np.shape(self.coefs_[0])[0]] + [np.shape(c)[1] for c in self.coefs_]
        dtype = np.asarray(self.coefs_[0]).dtype
        dtype = dtype if dtype in (np.float32, np.float64) else np.float64
        if net is not None and list(net.layer_sizes) == units and net.dtype == np.dtype(dtype).name:
            net.set_weights([np.asarray(w, dtype=dtype) for w in weights])
        else:
            net = self._build_net(units, self.out_activation_, dtype, [np.asarray(w, dtype=dtype) for w in weights], 0)
        self._model, self._exported = net, flat
        return net

    @property
    def model_(self):
        """The fitted :class:`gpunet.MLP`, in step with ``coefs_``/``intercepts_`` (edited or replaced ones too:
        saving or exporting it never gives the weights of before the edit)."""
        if "_model" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'model_'")
        return self._net()

    def _export(self, s, net):
        ws = net.get_weights()
        s["coefs_"], s["intercepts_"] = ws[0::2], ws[1::2]
        s["_model"] = net
        s["_exported"] = np.concatenate([np.ravel(w.astype(np.float64)) for w in ws])

    # ------------------------------------------------------------------ input
    def _dtype_option(self):
        if self.dtype is None:
            return (np.float64, np.float32)
        return np.dtype(_backend.check_dtype(np.dtype(self.dtype).name)).type

    def _validate_X(self, X, reset):
        return validate_data(self, X, accept_sparse=["csr", "csc"], reset=reset, dtype=self._dtype_option())

    def _validate_Xy(self, X, y, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=self._y_numeric,
                             dtype=self._dtype_option(), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y  # sparse X stays sparse: gpunet densifies it a batch at a time

    # ------------------------------------------------------------------ fitting
    def _fit(self, X, y, sample_weight=None, incremental=False, classes=None):
        self._validate_params()
        if self.solver == "lbfgs":  # refused, not ignored: L-BFGS minimises the deterministic full-batch objective
            unused = [f"{name}={value!r}" for name, value, used in (
                ("dropout", self.dropout, float(self.dropout) > 0), ("optimizer", self.optimizer,
                                                                      self.optimizer is not None)) if used]
            if unused:
                raise ValueError(f"{' and '.join(unused)} need{'s' if len(unused) == 1 else ''} solver='adam' or "
                                 "'sgd': solver='lbfgs' minimises the "
                                 "full-batch objective with SciPy's L-BFGS-B (no dropout, no gpunet optimizer)")
        before = dict(self.__dict__)
        net = getattr(self, "_model", None)
        rollback = net.get_weights() if net is not None else None
        try:
            state = self._fit_state(X, y, sample_weight, incremental, classes)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)  # n_features_in_ etc. as they were
            if net is not None and rollback is not None:
                net.set_weights(rollback)
            raise
        self.__dict__.update(state)
        return self

    def _fit_state(self, X, y, sample_weight, incremental, classes):
        hidden = self._hidden_sizes()
        first = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_Xy(X, y, reset=first)
        Y, s = self._targets(X, y, incremental, first, classes)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        n_outputs = Y.shape[1]
        units = [X.shape[1], *hidden, n_outputs]
        rs = check_random_state(self.random_state)
        dtype = X.dtype
        if first:
            out = s["out_activation_"]
            weights = self._init_weights(rs, units, dtype)
            # the network's own seed (batch order, dropout) from a copy: random_state then draws the validation
            # split right after the initial weights, as scikit-learn's does (the same split for the same seed)
            net = self._build_net(units, out, dtype, weights, int(copy.deepcopy(rs).randint(0, 2**31 - 1)))
            s.update(n_iter_=0, t_=0, n_outputs_=n_outputs, n_layers_=len(units), out_activation_=out)
            if self.solver != "lbfgs":
                self._fresh_bookkeeping(s)
        else:
            if list(units) != [np.shape(self.coefs_[0])[0]] + [np.shape(c)[1] for c in self.coefs_]:
                raise ValueError(f"warm_start / partial_fit continue the fitted network {self.n_features_in_} -> "
                                 f"{[np.shape(c)[1] for c in self.coefs_]}; these data and hidden_layer_sizes need "
                                 f"{units}: refit with warm_start=False")
            net = self._net()
            net.dropout = float(self.dropout)
            s.update(n_outputs_=self.n_outputs_, n_layers_=self.n_layers_, out_activation_=self.out_activation_)
            for key in ("n_iter_", "t_", "loss_curve_", "_no_improvement_count", "validation_scores_",
                        "best_validation_score_", "best_loss_"):
                if hasattr(self, key):
                    value = getattr(self, key)
                    s[key] = list(value) if isinstance(value, list) else value
            s.setdefault("t_", 0)
            if self.solver != "lbfgs" and "loss_curve_" not in s:  # stochastic training after an L-BFGS fit
                self._fresh_bookkeeping(s)
            elif self.early_stopping and s.get("validation_scores_") is None:  # early_stopping switched on
                s.update(validation_scores_=[], best_validation_score_=-np.inf)
            elif not self.early_stopping and s.get("best_loss_") is None:  # switched off (or a partial_fit)
                s["best_loss_"] = np.inf
        s["scale"] = self._scale(s["out_activation_"], n_outputs)
        loss = LOSS[s["out_activation_"]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow of a diverging network is reported below
            if self.solver == "lbfgs":
                self._fit_lbfgs(net, X, Y, sample_weight, loss, s)
            else:
                self._fit_stochastic(net, X, Y, sample_weight, loss, s, incremental, rs)
        if s.get("best_weights") is not None:  # early stopping: the best epoch's weights
            net.set_weights(s.pop("best_weights"))
        s.pop("best_weights", None)
        weights = net.get_weights()
        if not all(np.isfinite(w).all() for w in weights):
            raise ValueError(NONFINITE)
        self._export(s, net)
        s["_optimizer"] = s.pop("solver", None) or getattr(self, "_optimizer", None)
        s.pop("scale", None)
        return s

    def _fresh_bookkeeping(self, s):
        s.update(loss_curve_=[], _no_improvement_count=0)
        if self.early_stopping:
            s.update(validation_scores_=[], best_validation_score_=-np.inf, best_loss_=None)
        else:
            s.update(best_loss_=np.inf, validation_scores_=None, best_validation_score_=None)

    def _fit_lbfgs(self, net, X, Y, sample_weight, loss, s):
        total = float(np.sum(sample_weight)) if sample_weight is not None else float(X.shape[0])
        net.l2 = self.alpha / (2.0 * s["scale"] * total)
        result = training.lbfgs.minimize(net, X, Y, loss=loss, sample_weight=sample_weight, max_iter=self.max_iter,
                                         max_fun=self.max_fun, tol=self.tol, scale=s["scale"],
                                         value=lambda v: reported(net, s["out_activation_"], v, s["scale"]))
        if result.status != 0:
            warnings.warn("lbfgs failed to converge after %d iteration(s) (status=%d):\n%s\n\nIncrease the number of "
                          "iterations to improve the convergence (max_iter=%d).\nYou might also want to scale the "
                          "data as shown in:\n    https://scikit-learn.org/stable/modules/preprocessing.html"
                          % (result.nit, result.status, result.message, self.max_iter), ConvergenceWarning,
                          stacklevel=4)
        s["n_iter_"] = min(int(result.nit), self.max_iter)
        s["loss_"] = float(result.fun)

    def _make_optimizer(self, scale):
        if self.optimizer is not None:
            if isinstance(self.optimizer, optim.Optimizer):
                return optim.from_config(self.optimizer.name, self.optimizer.get_config())  # never share state
            return optim.get(self.optimizer, lr=self.learning_rate_init)
        if self.solver == "sgd":
            nesterov = bool(self.nesterovs_momentum and self.momentum > 0)
            return optim.SGD(lr=self.learning_rate_init * scale, momentum=self.momentum, nesterov=nesterov)
        return optim.Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon / scale)

    def _fit_stochastic(self, net, X, Y, sample_weight, loss, s, incremental, rs):
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        validation = None
        if self.early_stopping:
            X, Y, sample_weight, validation = self._split(X, Y, sample_weight, rs)
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                              stacklevel=4)
            batch = int(np.clip(self.batch_size, 1, n))
        mean_weight = float(np.mean(sample_weight)) if sample_weight is not None else 1.0
        net.l2 = self.alpha / (2.0 * s["scale"] * batch * mean_weight)
        solver, optimizer = getattr(self, "_optimizer", None) if incremental else None, None
        if incremental and not (isinstance(solver, Solver) and solver.opt is net.optimizer):
            # a partial_fit after unpickling or after set coefs_: the network's own optimizer, if it has one
            solver = Solver(self, net.optimizer, s["scale"], resumed=True) if net.optimizer is not None else None
        if solver is None:
            solver = Solver(self, self._make_optimizer(s["scale"]), s["scale"])
            optimizer = solver.opt  # else partial_fit continues with the network's optimizer and its state
        s["solver"] = solver
        s["n_iter_"] = 0
        epochs = Epochs(self, s, validation, n, self._score_net)
        try:
            net.fit(X, Y, epochs=1 if incremental else self.max_iter, batch_size=batch, optimizer=optimizer,
                    loss=loss, shuffle=self.shuffle, callbacks=[epochs], verbose=0, sample_weight=sample_weight)
        except DivergenceError:
            if validation is None:
                raise ValueError(NONFINITE) from None
            # as scikit-learn: a diverged epoch scores NaN and the best weights are restored
            s["n_iter_"] += 1
            s["loss_curve_"].append(np.nan)
            epochs.update_no_improvement(score=np.nan)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if not incremental and s["n_iter_"] == self.max_iter and not net.stop_training:
            warnings.warn("Stochastic Optimizer: Maximum iterations (%d) reached and the optimization hasn't "
                          "converged yet." % self.max_iter, ConvergenceWarning, stacklevel=4)

    def _split(self, X, Y, sample_weight, rs):
        stratify = self._stratify(Y)
        arrays = (X, Y) if sample_weight is None else (X, Y, sample_weight)
        parts = train_test_split(*arrays, random_state=rs, test_size=self.validation_fraction, stratify=stratify)
        if sample_weight is None:
            X, Xv, Y, Yv = parts
            w = wv = None
        else:
            X, Xv, Y, Yv, w, wv = parts
        if Xv.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your "
                             "dataset.")
        return X, Y, w, (Xv, Yv, wv)

    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y (scikit-learn's ``fit``); returns ``self``."""
        return self._fit(X, y, sample_weight=sample_weight)

    # ------------------------------------------------------------------ scikit-learn's lbfgs callback
    def _loss_grad_lbfgs(self, packed_coef_inter, X, y, sample_weight, activations=None, deltas=None,
                         coef_grads=None, intercept_grads=None):
        """scikit-learn's ``_loss_grad_lbfgs``: the objective and its gradient at ``packed_coef_inter``
        (coefficients then intercepts, scikit-learn's packing), computed by the network on its device."""
        net = self._net()
        shapes = [np.shape(c) for c in self.coefs_] + [np.shape(b) for b in self.intercepts_]
        sizes = [int(np.prod(sh)) for sh in shapes]
        parts = np.split(np.asarray(packed_coef_inter, dtype=np.float64), np.cumsum(sizes)[:-1])
        arrays = [p.reshape(sh) for p, sh in zip(parts, shapes)]
        L = len(self.coefs_)
        self.coefs_, self.intercepts_ = arrays[:L], arrays[L:]
        net.set_weights([w for pair in zip(self.coefs_, self.intercepts_) for w in pair])
        self._exported = np.concatenate([np.ravel(w) for pair in zip(self.coefs_, self.intercepts_) for w in pair])
        Y = np.asarray(y, dtype=np.float64)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        scale = self._scale(self.out_activation_, Y.shape[1])
        total = float(np.sum(sample_weight)) if sample_weight is not None else float(np.shape(X)[0])
        net.l2 = self.alpha / (2.0 * scale * total)
        value, grads = net.loss_and_gradients(X, Y, loss=LOSS[self.out_activation_], sample_weight=sample_weight)
        packed = np.concatenate([np.ravel(g) for g in grads[0::2] + grads[1::2]])
        return reported(net, self.out_activation_, scale * value, scale), scale * packed

    # ------------------------------------------------------------------ prediction
    def _forward(self, X):
        check_is_fitted(self, "coefs_")
        X = self._validate_X(X, reset=False)
        net = self._net()
        with np.errstate(over="ignore", invalid="ignore"):
            return net.predict(X)

    def to_onnx(self, path):
        """Export the fitted network as an ONNX graph (see :meth:`gpunet.MLP.to_onnx`)."""
        check_is_fitted(self, "coefs_")
        return self._net().to_onnx(path)

    # ------------------------------------------------------------------ pickling (the npz bytes)
    def __getstate__(self):
        state = dict(super().__getstate__())
        model = state.pop("_model", None)
        state.pop("_optimizer", None)
        if model is not None:
            state["_model_npz"], state["_model_device"] = npz_bytes(model), model.device
        return state

    def __setstate__(self, state):
        state = dict(state)
        blob, fitted_on = state.pop("_model_npz", None), state.pop("_model_device", None)
        super().__setstate__(state)
        if blob is not None:
            self._model = npz_load(blob, self.device, fitted_on)
            self._optimizer = None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def npz_bytes(model):
    buffer = io.BytesIO()
    fd, tmp = tempfile.mkstemp(suffix=".npz")
    os.close(fd)
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            buffer.write(f.read())
    finally:
        os.unlink(tmp)
    return buffer.getvalue()


def npz_load(blob, device, fitted_on=None):
    """The network of a pickled estimator on ``device`` resolved here: the CPU, with a warning, where that
    device is not usable; a warning too when ``"auto"`` now means another device than the one it was fitted on."""
    fd, tmp = tempfile.mkstemp(suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        try:
            net = load(tmp, device=device)
        except DeviceUnavailableError as exc:
            warnings.warn(f"gpunet.sklearn: this estimator was fitted for device={device!r}, which is not usable "
                          f"here ({exc}); its network is loaded on the CPU", UserWarning, stacklevel=3)
            return load(tmp, device="cpu")
        if fitted_on is not None and net.device != fitted_on:
            warnings.warn(f"gpunet.sklearn: this estimator was fitted on {fitted_on}; device={device!r} is "
                          f"{net.device} here, where its network is loaded", UserWarning, stacklevel=3)
        return net
    finally:
        os.unlink(tmp)


