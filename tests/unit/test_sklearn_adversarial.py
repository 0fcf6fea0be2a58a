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
