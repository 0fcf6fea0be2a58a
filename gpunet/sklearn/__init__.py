"""scikit-learn's ``MLPClassifier`` and ``MLPRegressor``, trained by gpunet: swap one import, keep the code.

    from gpunet.sklearn import MLPClassifier      # instead of sklearn.neural_network.MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=30, random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.coefs_; clf.loss_curve_; clf.model_  # a gpunet.MLP

The signature, the defaults, the parameter checks (scikit-learn's own ``_parameter_constraints``), the fitted
attributes and the training semantics are those of the installed scikit-learn's estimators
(``sklearn/neural_network/_multilayer_perceptron.py`` is the reference), computed by gpunet's core: the
network is a :class:`gpunet.MLP` on ``device``, trained by :meth:`gpunet.MLP.fit` (``solver="adam"``/``"sgd"``)
or by full-batch L-BFGS over its flat parameter buffer (:mod:`gpunet.training.lbfgs`, ``solver="lbfgs"``).

- The objective is scikit-learn's: the mean of the per-sample loss (log-loss summed over classes or labels;
  half the squared error summed over outputs; half the Poisson deviance), weighted by ``sample_weight``, plus
  ``0.5 * alpha * ||W||^2`` divided by the batch's weight sum. gpunet's losses are means over entries, so the
  estimator trains ``c * (gpunet loss + l2 ||W||^2)`` with ``c`` the number of outputs (one half of it for the
  squared error) and ``l2 = alpha / (2 c B)``: SGD's step is ``c`` times gpunet's, Adam's ``epsilon`` is divided
  by ``c``. ``loss_``, ``loss_curve_`` and ``tol`` are on that scale. The last, smaller batch of an epoch gets
  the full batch's L2 weight (scikit-learn divides by each batch's own size).
- Initial weights and biases are drawn as scikit-learn draws them (uniform, Glorot's bound, a factor 2 for
  ``logistic``) from ``random_state``; ``dtype=None`` follows ``X`` (float32 stays float32, anything else is
  float64), as scikit-learn does; ``dtype="float32"`` is an explicit opt-in.
- SGD momentum is PyTorch's form of the same update (equal for a constant learning rate); Adam's ``epsilon``
  is added to the bias-corrected second moment (PyTorch's form), scikit-learn adds it before the correction.
- Early stopping holds out a stratified ``validation_fraction`` (classification, except multi-label), scores it
  every epoch, and restores the best weights. ``partial_fit`` runs one epoch with the optimizer state kept.
- Sparse CSR/CSC input stays sparse and is densified a batch at a time by :meth:`gpunet.MLP.fit` (on the device
  for CUDA); L-BFGS densifies it once (its batch is the whole set).
- gpunet's own parameters: ``device`` ("auto": a usable CUDA GPU, else the CPU; a pickled estimator loads on
  the CPU, with a warning, where its device is missing), ``dtype``, ``dropout``, and ``optimizer`` (a gpunet
  optimizer or name that replaces ``solver``'s, e.g. ``gpunet.AdamW(weight_decay=0.01)``). ``dropout`` and
  ``optimizer`` apply to the stochastic solvers; ``solver="lbfgs"`` refuses them rather than ignore them.
  ``dtype="float32"`` computes, and returns predictions, in float32 whatever X's dtype (scikit-learn's own
  estimator follows X); the default ``dtype=None`` follows X as scikit-learn does.

Pickling stores the network as gpunet's ``.npz`` bytes (weights, optimizer state, generators; the model format
never uses pickle itself). Estimator state is assigned only when a fit succeeds.
"""
from __future__ import annotations

import numpy as np

try:
    from sklearn.base import ClassifierMixin, RegressorMixin
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.neural_network import MLPClassifier as SkClassifier, MLPRegressor as SkRegressor
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils.metaestimators import available_if
    from sklearn.utils.multiclass import type_of_target, unique_labels
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("gpunet.sklearn needs scikit-learn: pip install 'gpunet[sklearn]'") from exc

from gpunet.sklearn.base import EXTRA_CONSTRAINTS, BaseMLP


def _stochastic(est):
    """``partial_fit`` exists for the stochastic solvers only (scikit-learn's ``available_if``)."""
    if est.solver not in ("sgd", "adam"):
        raise AttributeError("partial_fit is only available for stochastic optimizers. %s is not stochastic."
                             % est.solver)
    return True


class MLPClassifier(ClassifierMixin, BaseMLP):
    """Multi-layer perceptron classifier: scikit-learn's ``MLPClassifier``, trained by gpunet.

    Softmax outputs and log-loss for several classes, one logistic output for two (or one) classes, one
    logistic output per label for a multi-label indicator ``y``. ``classes_`` holds the original labels
    (``unique_labels``: ``"007"`` and ``"7"`` are two classes). See the module docstring for the parameters;
    gpunet's own are ``device``, ``dtype``, ``dropout`` and ``optimizer``.
    """

    _parameter_constraints: dict = {**SkClassifier._parameter_constraints, **EXTRA_CONSTRAINTS}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, device="auto", dtype=None, dropout=0.0,
                 optimizer=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype
        self.dropout = dropout
        self.optimizer = optimizer

    _y_numeric = False

    def _targets(self, X, y, incremental, first, classes):
        """The label binarizer's targets (n, n_outputs) and the state it defines, checked against the fitted
        classes on warm starts and partial fits (scikit-learn's rules and messages)."""
        s = {}
        multilabel = type_of_target(y).startswith("multilabel")
        if incremental and not hasattr(self, "classes_"):  # the first partial_fit: classes name every label
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            binarizer = LabelBinarizer().fit(y if multilabel else classes)
            s["classes_"], s["_label_binarizer"] = binarizer.classes_, binarizer
        elif not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            binarizer = LabelBinarizer().fit(y)
            s["classes_"], s["_label_binarizer"] = binarizer.classes_, binarizer
        else:
            binarizer = self._label_binarizer
            if incremental and classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
                raise ValueError("`classes=%r` is not the same as on last call to partial_fit, was: %r"
                                 % (classes, self.classes_))
            if self.warm_start and not incremental:
                seen = unique_labels(y)
                if set(seen) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {seen}")
        if not binarizer.y_type_.startswith("multilabel"):
            seen = unique_labels(y)
            if len(np.setdiff1d(seen, binarizer.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {binarizer.classes_}. "
                                 f"'y' has {seen}.")
        Y = binarizer.transform(y).astype(X.dtype)
        if first:
            s["out_activation_"] = "softmax" if binarizer.y_type_ == "multiclass" else "logistic"
        return Y, s

    def _stratify(self, Y):
        """Stratify on the classes: binary targets as scikit-learn does (its errors name the classes True and
        False), several classes by class too where the split can hold every class (scikit-learn leaves those
        unstratified, and so do we where it cannot), multi-label not."""
        if Y.shape[1] == 1:
            return Y.astype(bool)
        if self._label_binarizer_type(Y).startswith("multilabel"):
            return None
        labels = Y.argmax(axis=1)
        counts = np.bincount(labels, minlength=Y.shape[1])
        n_val = int(np.ceil(self.validation_fraction * len(labels)))
        present = int(np.count_nonzero(counts))
        if counts[counts > 0].min() < 2 or min(n_val, len(labels) - n_val) < present:
            return None  # a split that cannot hold every class: scikit-learn's unstratified split, not an error
        return labels

    def _label_binarizer_type(self, Y):
        return "multiclass" if np.all(Y.sum(axis=1) == 1) else "multilabel-indicator"

    def _score_net(self, net, X, Y, sample_weight):
        P = net.predict(X)
        if not np.isfinite(P).all():
            return np.nan
        if P.shape[1] == 1:
            pred, true = (P[:, 0] > 0.5), (Y[:, 0] > 0.5)
        elif _is_softmax(net):
            pred, true = P.argmax(axis=1), Y.argmax(axis=1)
        else:
            pred, true = (P > 0.5), (Y > 0.5)
        return float(accuracy_score(true, pred, sample_weight=sample_weight))

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes`` (all labels), as in scikit-learn."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X):
        """Class probabilities (n_samples, n_classes); for multi-label, each label's probability."""
        P = self._forward(X)
        if self.n_outputs_ == 1:
            p = P.ravel()
            return np.vstack([1 - p, p]).T
        return P

    def predict_log_proba(self, X):
        P = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return np.log(P, out=P)

    def predict(self, X):
        P = self._forward(X)
        if self.n_outputs_ == 1:
            P = P.ravel()
        return self._label_binarizer.inverse_transform(P)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


def _is_softmax(net):
    return net.output_activation == "softmax"


class MLPRegressor(RegressorMixin, BaseMLP):
    """Multi-layer perceptron regressor: scikit-learn's ``MLPRegressor`` (``loss="squared_error"`` with an
    identity output, or ``"poisson"`` with an exp output), trained by gpunet. Single-output predictions are
    1-D, as in scikit-learn."""

    _parameter_constraints: dict = {**SkRegressor._parameter_constraints, **EXTRA_CONSTRAINTS}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, device="auto", dtype=None,
                 dropout=0.0, optimizer=None):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.device = device
        self.dtype = dtype
        self.dropout = dropout
        self.optimizer = optimizer

    _y_numeric = True

    def _targets(self, X, y, incremental, first, classes):
        Y = (y.reshape(-1, 1) if y.ndim == 1 else y).astype(X.dtype)
        if not first and Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} outputs; this regressor was fitted with {self.n_outputs_}")
        return Y, ({"out_activation_": "exp" if self.loss == "poisson" else "identity"} if first else {})

    @staticmethod
    def _stratify(Y):
        return None

    def _score_net(self, net, X, Y, sample_weight):
        P = net.predict(X)
        if not np.isfinite(P).all():
            return np.nan
        return float(r2_score(Y, P, sample_weight=sample_weight))

    @available_if(_stochastic)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``, the optimizer state kept."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        P = self._forward(X)
        return P.ravel() if self.n_outputs_ == 1 else P

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


__all__ = ["MLPClassifier", "MLPRegressor"]
