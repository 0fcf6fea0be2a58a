"""scikit-learn estimators backed by gpunet: swap one import, keep the code, run on a GPU.

    from gpunet.sklearn import MLPClassifier      # instead of sklearn.neural_network.MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=30, random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test); clf.model_  # a gpunet.MLP

Parameters keep scikit-learn's names and meanings where gpunet has the same thing
(``sklearn/neural_network/_multilayer_perceptron.py`` in scikit-learn 1.9 is the reference):

- ``alpha``: scikit-learn adds ``0.5 * alpha * ||W||^2 / batch_rows`` to each batch's loss. gpunet's L2
  penalty is ``l2 * ||W||^2`` beside the mean loss, so ``l2 = alpha / (2 * batch_size)`` for the
  classifier (same log-loss) and ``alpha / batch_size`` for the regressor (scikit-learn's squared loss
  is half the mean squared error, gpunet's ``mse`` the whole of it). The last, smaller batch of an
  epoch gets scikit-learn's full-batch weight here.
- ``max_iter`` epochs, ``tol`` and ``n_iter_no_change``: training stops when the training loss (or,
  with ``early_stopping``, the validation score) has not improved by ``tol`` for ``n_iter_no_change``
  epochs; with ``early_stopping`` the best weights are restored, as scikit-learn does.
- ``batch_size="auto"`` is ``min(200, n_samples)``; ``learning_rate_init``, ``beta_1``, ``beta_2``,
  ``epsilon``, ``shuffle``, ``random_state`` (an int is gpunet's ``seed``), ``verbose``, ``warm_start``,
  ``validation_fraction`` as in scikit-learn.
- gpunet's own: ``device`` ("auto": a usable CUDA GPU, else the CPU), ``dtype``, ``optimizer``
  ("adam", "adamw" or "sgd" — scikit-learn's ``solver``; L-BFGS is not offered), ``dropout``.

Not supported: ``sample_weight`` (gpunet's losses have no per-sample weights), ``solver="lbfgs"``,
``learning_rate`` schedules other than constant, ``momentum``/``nesterovs_momentum`` beyond the
optimizer instance. Pickling a fitted estimator stores the network as gpunet's ``.npz`` bytes (the
model format itself never uses pickle; the user chose pickle by pickling the estimator).
"""
from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("gpunet.sklearn needs scikit-learn: pip install 'gpunet[sklearn]'") from exc

from gpunet import callbacks as _callbacks, metrics, optim
from gpunet.model import MLP, load

_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


class _Monitor(_callbacks.Callback):
    """scikit-learn's stopping rule inside one ``fit``: no improvement by ``tol`` for
    ``n_iter_no_change`` epochs of the training loss, or of the validation score with early stopping."""

    def __init__(self, est, validation):
        self.est, self.validation = est, validation
        self.loss_curve, self.scores = [], []
        self.best_loss, self.best_score, self.best_weights, self.no_improvement = np.inf, -np.inf, None, 0

    def on_epoch_end(self, epoch, logs=None):
        est = self.est
        loss = float(logs["loss"])
        self.loss_curve.append(loss)
        if self.validation is not None:
            score = est._score_net(self.model, *self.validation)
            self.scores.append(score)
            if score > self.best_score:
                self.best_weights = self.model.get_weights()
            improved = score > self.best_score + est.tol
            self.best_score = max(self.best_score, score)
        else:
            improved = loss < self.best_loss - est.tol
            self.best_loss = min(self.best_loss, loss)
        self.no_improvement = 0 if improved else self.no_improvement + 1
        if est.verbose:
            print(f"Iteration {len(self.loss_curve)}, loss = {loss:.8f}")  # noqa: T201  (scikit-learn's verbose output)
        if self.no_improvement > est.n_iter_no_change:
            self.model.stop_training = True


class _BaseMLP(BaseEstimator):
    _output_activation = "linear"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, alpha=0.0001, batch_size="auto",
                 learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, device="auto", dtype="float32", optimizer="adam", dropout=0.0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.device = device
        self.dtype = dtype
        self.optimizer = optimizer
        self.dropout = dropout

    # ------------------------------------------------------------------ parameters
    def _check_params(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if np.isscalar(sizes) else list(sizes)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        for name in ("alpha", "tol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("max_iter", "n_iter_no_change"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate_init, (int, float, np.floating)) and self.learning_rate_init > 0):
            raise ValueError(f"learning_rate_init must be > 0, got {self.learning_rate_init!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.batch_size != "auto" and not (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        return sizes

    def _seed(self):
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    def _make_optimizer(self):
        if isinstance(self.optimizer, optim.Optimizer):
            return optim.from_config(self.optimizer.name, self.optimizer.get_config())  # never share state
        name = str(self.optimizer).lower()
        if name in ("adam", "adamw"):
            return optim.get(name, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        if name == "sgd":
            return optim.SGD(lr=self.learning_rate_init)
        raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or a gpunet optimizer, got {self.optimizer!r}")

    def _batch(self, n):
        return min(200, n) if self.batch_size == "auto" else min(int(self.batch_size), n)

    # ------------------------------------------------------------------ training
    def _fit(self, X, y, *, incremental=False, classes=None):
        sizes = self._check_params()
        first = not (hasattr(self, "model_") and (self.warm_start or incremental))
        X, Y = self._validate_fit(X, y, reset=first, classes=classes)
        n = X.shape[0]
        batch = self._batch(n)
        validation = None
        if self.early_stopping and not incremental:
            stratify = self._stratify(Y)
            X, Xv, Y, Yv = train_test_split(X, Y, test_size=self.validation_fraction, stratify=stratify,
                                            random_state=self._seed() if first else None)
            validation = (Xv, Yv)
            batch = self._batch(X.shape[0])
        if first:
            l2 = self.alpha / (self._alpha_divisor * batch)
            self.model_ = MLP([X.shape[1], *sizes, self._n_outputs], _ACTIVATIONS[self.activation],
                              self._output_activation, device=self.device, dtype=self.dtype, seed=self._seed(),
                              l2=l2, dropout=self.dropout)
            self.loss_curve_, self.n_iter_, self.t_ = [], 0, 0
            self.best_loss_ = np.inf
            if self.early_stopping:
                self.validation_scores_, self.best_validation_score_ = [], -np.inf
            optimizer = self._make_optimizer()
        else:
            optimizer = None  # continue with the network's optimizer and its state
        monitor = _Monitor(self, validation)
        epochs = 1 if incremental else self.max_iter
        self.model_.fit(X, Y, epochs=epochs, batch_size=batch, optimizer=optimizer, loss=self._loss,
                        shuffle=self.shuffle, callbacks=[monitor], verbose=0)
        done = len(monitor.loss_curve)
        self.loss_curve_ = list(self.loss_curve_) + monitor.loss_curve
        self.n_iter_ += done
        self.t_ += done * X.shape[0]
        self.best_loss_ = float(min([self.best_loss_, *monitor.loss_curve]))
        if validation is not None:
            self.validation_scores_ = list(self.validation_scores_) + monitor.scores
            self.best_validation_score_ = max(self.best_validation_score_, monitor.best_score)
            self.best_loss_ = None  # as scikit-learn: with early stopping the loss is not the criterion
            if monitor.best_weights is not None:
                self.model_.set_weights(monitor.best_weights)
        if not incremental and done == self.max_iter and not self.model_.stop_training:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        return self

    def fit(self, X, y):
        """Train for up to ``max_iter`` epochs (scikit-learn's stopping rule); returns ``self``."""
        return self._fit(X, y)

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self.model_.predict(X)

    def to_onnx(self, path):
        """Export the fitted network as an ONNX graph (see :meth:`gpunet.MLP.to_onnx`)."""
        check_is_fitted(self, "model_")
        return self.model_.to_onnx(path)

    # ------------------------------------------------------------------ pickling (the npz bytes)
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        model = state.pop("model_", None)
        if model is not None:
            fd, tmp = tempfile.mkstemp(suffix=".npz")
            os.close(fd)
            try:
                model.save(tmp)
                with open(tmp, "rb") as f:
                    state["_model_npz"] = f.read()
            finally:
                os.unlink(tmp)
        return state

    def __setstate__(self, state):
        state = dict(state)
        blob = state.pop("_model_npz", None)
        if hasattr(super(), "__setstate__"):
            super().__setstate__(state)
        else:
            self.__dict__.update(state)
        if blob is not None:
            fd, tmp = tempfile.mkstemp(suffix=".npz")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                self.model_ = load(tmp, device=self.device)
            finally:
                os.unlink(tmp)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier with scikit-learn's interface, trained by gpunet.

    Softmax outputs and log-loss for several classes, one sigmoid output for two (as scikit-learn), and
    one sigmoid per label for a multi-label indicator ``y``. ``classes_`` holds the original labels.
    """

    _alpha_divisor = 2
    _loss = None

    def _validate_fit(self, X, y, reset, classes=None):
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32], multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)  # a column of labels, not a one-label indicator (DataConversionWarning)
        check_classification_targets(y)
        kind = type_of_target(y)
        if reset:
            if kind == "multilabel-indicator":
                self.classes_ = np.arange(y.shape[1])
                self._output_activation, self._n_outputs, self._multilabel = "sigmoid", y.shape[1], True
            else:
                self.classes_ = unique_labels(y) if classes is None else np.asarray(classes)
                if self.classes_.shape[0] < 2:
                    raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data; "
                                     f"got one class: {self.classes_[0]!r}")
                binary = self.classes_.shape[0] == 2
                self._output_activation = "sigmoid" if binary else "softmax"
                self._n_outputs, self._multilabel = (1 if binary else self.classes_.shape[0]), False
        if self._multilabel:
            return X, np.asarray(y, dtype=np.float64)
        y = np.ravel(y)
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels not in classes_ {list(self.classes_)}: {list(unknown)}")
        idx = np.searchsorted(self.classes_, y)
        if self._n_outputs == 1:
            return X, idx.astype(np.float64)[:, None]
        return X, idx

    def _stratify(self, Y):
        return None if self._multilabel or len(np.unique(Y, axis=0)) > len(Y) * self.validation_fraction else Y

    @staticmethod
    def _score_net(net, X, Y):
        P = net.predict(X)
        if P.shape[1] == 1 or Y.ndim == 2:
            return float(np.mean(np.all((P > 0.5) == (np.reshape(Y, P.shape) > 0.5), axis=1)))
        return float(np.mean(P.argmax(axis=1) == Y))

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes`` (all labels), as in scikit-learn."""
        if not hasattr(self, "model_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes); for multi-label, each label's probability."""
        P = self._predict_raw(X)
        if P.shape[1] == 1 and not self._multilabel:
            return np.hstack([1.0 - P, P])
        return P

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        P = self._predict_raw(X)
        if self._multilabel:
            return (P > 0.5).astype(int)
        idx = (P[:, 0] > 0.5).astype(int) if P.shape[1] == 1 else P.argmax(axis=1)
        return self.classes_[idx]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.input_tags.allow_nan = False
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor with scikit-learn's interface, trained by gpunet (linear outputs,
    squared error)."""

    _alpha_divisor = 1
    _loss = "mse"

    def _validate_fit(self, X, y, reset, classes=None):
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32], multi_output=True,
                             y_numeric=True)
        if reset:
            self._y_1d = y.ndim == 1
            self._n_outputs = 1 if y.ndim == 1 else y.shape[1]
        Y = np.reshape(y, (-1, 1)) if y.ndim == 1 else y
        if Y.shape[1] != self._n_outputs:
            raise ValueError(f"y has {Y.shape[1]} outputs; this regressor was fitted with {self._n_outputs}")
        return X, np.asarray(Y, dtype=np.float64)

    @staticmethod
    def _stratify(Y):
        return None

    @staticmethod
    def _score_net(net, X, Y):
        return metrics.r2_score(Y, net.predict(X))

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``."""
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        P = self._predict_raw(X)
        return P[:, 0] if self._y_1d else P

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.input_tags.allow_nan = False
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
