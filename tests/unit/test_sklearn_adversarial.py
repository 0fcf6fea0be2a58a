"""gpunet.sklearn against scikit-learn's own estimators on the inputs and call sequences users get wrong:
each test pins a defect found by attacking the layer (scikit-learn's estimator is the oracle)."""
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkRegressor  # noqa: E402

from gpunet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402


def _data(n=60, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.randn(n, 4)
    return X, (X[:, 0] > 0).astype(int), X[:, 0] * 2 + 1, rng


@pytest.mark.parametrize("weighted", [False, True])
def test_lbfgs_multi_output_regression_is_scikit_learns(weighted):
    """scikit-learn's multi-output squared error averages its value over the outputs (not its gradient), and its
    L-BFGS line search sees that value: loss_ and the path must be its, not the sum over outputs."""
    X, _, yr, rng = _data()
    Y = np.c_[yr, -yr]
    w = rng.randint(0, 4, len(X)).astype(float) if weighted else None
    kw = dict(solver="lbfgs", hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPRegressor(device="cpu", **kw).fit(X, Y, sample_weight=w)
        theirs = SkRegressor(**kw).fit(X, Y, sample_weight=w)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    packed = np.concatenate([c.ravel() for c in theirs.coefs_] + [b.ravel() for b in theirs.intercepts_])
    value, _ = ours._loss_grad_lbfgs(packed, X, Y, w)
    acts = [X] + [None] * (theirs.n_layers_ - 1)
    expected, _ = theirs._loss_grad_lbfgs(packed, X, Y, w, acts, [None] * (theirs.n_layers_ - 1),
                                          [np.empty_like(c) for c in theirs.coefs_],
                                          [np.empty_like(b) for b in theirs.intercepts_])
    assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("continue_with", ["warm_start", "partial_fit"])
def test_stochastic_training_continues_an_lbfgs_fit(continue_with):
    """fit(solver='lbfgs') then warm fit / partial_fit with adam: a KeyError from the missing loss curve before."""
    X, y, _, _ = _data()
    clf = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(5,), max_iter=5, random_state=0, device="cpu",
                        warm_start=continue_with == "warm_start")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        start = [c.copy() for c in clf.coefs_]
        clf.set_params(solver="adam", early_stopping=continue_with == "warm_start")
        clf.fit(X, y) if continue_with == "warm_start" else clf.partial_fit(X, y)
    assert len(clf.loss_curve_) == clf.n_iter_ >= 1
    assert np.abs(clf.coefs_[0] - start[0]).max() < 0.05  # continued from the L-BFGS weights, not re-initialised


@pytest.mark.parametrize("how", ["predict", "warm_start", "partial_fit"])
def test_activation_set_after_fit_is_used(how):
    """scikit-learn's forward pass reads ``activation``: set_params(activation=...) after a fit changes the
    predictions (and a warm start trains with it); gpunet kept the fitted network's, silently. A partial_fit
    after the change continues Adam's moments, as scikit-learn's does (gpunet had restarted them)."""
    from sklearn.neural_network import MLPClassifier as SkClassifier
    X, y, _, _ = _data()
    kw = dict(hidden_layer_sizes=(5,), max_iter=5, random_state=0, warm_start=how == "warm_start")
    out = []
    for est in (MLPClassifier(device="cpu", **kw), SkClassifier(**kw)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
            est.set_params(activation="tanh")
            if how == "warm_start":
                est.fit(X, y)
            if how == "partial_fit":
                est.partial_fit(X, y)
        out.append(est.predict_proba(X))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_multiclass_early_stopping_with_a_validation_set_smaller_than_the_classes():
    """Stratifying several classes is gpunet's addition; where the split cannot hold every class it must fall
    back to scikit-learn's unstratified split, not raise train_test_split's error."""
    X, _, _, rng = _data()
    y = rng.randint(0, 5, len(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(early_stopping=True, validation_fraction=0.05, max_iter=3, random_state=0,
                            device="cpu").fit(X, y)
    assert clf.n_iter_ >= 1 and len(clf.validation_scores_) == clf.n_iter_


def test_fractional_hidden_layer_sizes_are_refused():
    X, y, _, _ = _data()
    with pytest.raises(ValueError, match="whole numbers"):
        MLPClassifier(hidden_layer_sizes=(5.5,), device="cpu").fit(X, y)


@pytest.mark.parametrize("copy_how", ["pickle", "deepcopy"])
def test_unpickled_adaptive_sgd_keeps_its_decayed_learning_rate(copy_how):
    """An adaptive schedule divides the rate by 5 on each plateau; a pickled or deep-copied estimator went back
    to learning_rate_init at its next plateau (and reported it), so its partial_fits diverged from the original's."""
    import copy
    import pickle
    X, y, _, _ = _data()
    clf = MLPClassifier(solver="sgd", learning_rate="adaptive", max_iter=30, tol=1e-1, n_iter_no_change=2,
                        hidden_layer_sizes=(5,), shuffle=False, random_state=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    assert clf._optimizer.learning_rate < clf.learning_rate_init
    twin = pickle.loads(pickle.dumps(clf)) if copy_how == "pickle" else copy.deepcopy(clf)
    assert twin._optimizer is None or twin._optimizer.learning_rate == clf._optimizer.learning_rate
    for _ in range(8):
        clf.partial_fit(X, y)
        twin.partial_fit(X, y)
    assert twin._optimizer.learning_rate == pytest.approx(clf._optimizer.learning_rate, rel=1e-12)
    for a, b in zip(twin.coefs_, clf.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_model_follows_edited_coefs():
    """``clf.model_`` is documented as the network to save or export; after an in-place edit of coefs_ it held
    the weights of before the edit until the next predict (a saved file silently lost the edit)."""
    X, y, _, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0, device="cpu").fit(X, y)
    clf.coefs_[0][:] = 0.0
    clf.intercepts_[-1] = clf.intercepts_[-1] + 1.0
    np.testing.assert_array_equal(clf.model_.get_weights()[0], 0.0)
    np.testing.assert_allclose(clf.model_.predict(X)[:, 0], clf.predict_proba(X)[:, 1])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_early_stopping_holds_out_scikit_learns_validation_set(kind, weighted):
    """The same random_state must hold out the same validation rows as scikit-learn (its split is drawn right
    after the initial weights); an extra draw for the network's seed gave another split, other scores."""
    from sklearn.neural_network import MLPClassifier as SkClassifier
    X, _, yr, rng = _data(100)
    y = (X[:, 0] + 0.5 * rng.randn(100) > 0).astype(int) if kind == "classifier" else yr
    w = rng.randint(0, 4, 100).astype(float) if weighted else None
    ours, theirs = (MLPClassifier, SkClassifier) if kind == "classifier" else (MLPRegressor, SkRegressor)
    kw = dict(early_stopping=True, shuffle=False, batch_size=90, solver="sgd", max_iter=8, random_state=0,
              hidden_layer_sizes=(5,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = ours(device="cpu", **kw).fit(X, y, sample_weight=w)
        b = theirs(**kw).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(a.validation_scores_, b.validation_scores_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.coefs_[1], b.coefs_[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sequence", ["switch_on", "switch_off", "partial_fit"])
def test_early_stopping_switched_between_fits(sequence):
    """set_params(early_stopping=...) between warm fits, or a partial_fit after an early-stopped fit, crashed on
    the other mode's None bookkeeping (AttributeError / TypeError; scikit-learn's own estimator crashes alike)."""
    X, y, _, _ = _data()
    on = sequence != "switch_on"
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=4, random_state=0, warm_start=True, early_stopping=on,
                        device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        clf.set_params(early_stopping=not on)
        clf.partial_fit(X, y) if sequence == "partial_fit" else clf.fit(X, y)
    assert len(clf.loss_curve_) > 4 and np.isfinite(clf.loss_)
    if sequence == "switch_on":
        assert len(clf.validation_scores_) >= 1 and clf.best_validation_score_ == max(clf.validation_scores_)
    else:
        assert clf.best_loss_ == min(clf.loss_curve_[4:])


@pytest.mark.parametrize("option", [{"dropout": 0.3}, {"optimizer": "adam"}])
def test_lbfgs_refuses_the_stochastic_only_options_instead_of_ignoring_them(option):
    """dropout and a gpunet optimizer have no meaning for full-batch L-BFGS: they were silently ignored."""
    X, y, _, _ = _data()
    clf = MLPClassifier(solver="lbfgs", device="cpu", max_iter=3, **option)
    with pytest.raises(ValueError, match=f"{next(iter(option))}=.* needs solver='adam' or 'sgd'"):
        clf.fit(X, y)
    assert not hasattr(clf, "coefs_")
