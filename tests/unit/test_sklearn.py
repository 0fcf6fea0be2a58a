"""gpunet.sklearn: scikit-learn's own estimator checks, and use in Pipeline / GridSearchCV / pickle."""
import pickle

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from gpunet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

#: The default estimators (dtype=None: X's float dtype) pass every check. Only two non-default settings have
#: expected failures, each failed the same way by scikit-learn's own estimator or forced by float32 arithmetic:
_FLOAT32 = ("dtype='float32' computes in float32 by the user's choice: {} compares float64 results at rtol 1e-7, "
            "below float32's resolution (6e-8 per rounding)")
EXPECTED_FAILURES = {
    ("MLPClassifier", "float32"): {
        "check_sample_weight_equivalence_on_dense_data": _FLOAT32.format("weights against repeated rows"),
        "check_sample_weight_equivalence_on_sparse_data": _FLOAT32.format("weights against repeated rows")},
    ("MLPRegressor", "float32"): {
        "check_sample_weight_equivalence_on_dense_data": _FLOAT32.format("weights against repeated rows"),
        "check_sample_weight_equivalence_on_sparse_data": _FLOAT32.format("weights against repeated rows"),
        "check_regressor_multioutput": _FLOAT32.format("it requires float64 predictions and")},
    ("MLPClassifier", "lbfgs"): {
        "check_classifiers_multilabel_output_format_predict_proba": "L-BFGS fits the check's data exactly, so a "
        "sigmoid output rounds to 1.0; scikit-learn's own MLPClassifier(solver='lbfgs') fails this check alike"},
}


def _expected(estimator):
    key = "float32" if estimator.dtype == "float32" else estimator.solver
    return EXPECTED_FAILURES.get((type(estimator).__name__, key), {})


@parametrize_with_checks([MLPClassifier(device="cpu"), MLPRegressor(device="cpu"),
                          MLPClassifier(device="cpu", dtype="float32"), MLPRegressor(device="cpu", dtype="float32"),
                          MLPClassifier(device="cpu", solver="lbfgs"), MLPRegressor(device="cpu", solver="sgd")],
                         expected_failed_checks=_expected)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_pipeline_and_grid_search_on_digits_in_parallel():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0, device="cpu"))
    grid = GridSearchCV(pipe, {"mlpclassifier__hidden_layer_sizes": [(32,), (64,)],
                               "mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2)
    grid.fit(Xtr, ytr)
    assert set(grid.cv_results_["params"][0]) == {"mlpclassifier__hidden_layer_sizes", "mlpclassifier__alpha"}
    assert grid.score(Xte, yte) > 0.93
    assert grid.best_estimator_[-1].model_.layer_sizes[1] in (32, 64)


def test_pickle_round_trip_uses_npz_and_predicts_the_same(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=1, device="cpu").fit(X, y)
    blob = pickle.dumps(clf)
    assert b"PK" in blob  # the network travels as gpunet's npz (zip) bytes
    again = pickle.loads(blob)
    assert list(again.classes_) == ["no", "yes"]
    np.testing.assert_array_equal(again.predict(X), clf.predict(X))
    np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=0, atol=0)
    assert again.predict_proba(X).shape == (120, 2)


def test_the_estimator_is_gpunets_core_on_scikit_learns_scale():
    """The regressor is a gn.MLP with scikit-learn's initial weights, trained by MLP.fit on c * (gpunet's mse +
    l2 ||W||^2) with c = 1/2 (half squared error), l2 = alpha / (2 c B), Adam's eps / c: bit for bit."""
    import gpunet as gn
    from sklearn.utils import check_random_state

    rng = np.random.default_rng(1)
    X = rng.normal(size=(90, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    reg = MLPRegressor(hidden_layer_sizes=(16, 8), activation="tanh", alpha=1e-3, max_iter=5, random_state=3,
                       batch_size=30, shuffle=True, tol=0.0, device="cpu").fit(X, y)
    rs = check_random_state(3)
    weights = []
    for fan_in, fan_out in [(3, 16), (16, 8), (8, 1)]:
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        weights += [rs.uniform(-bound, bound, (fan_in, fan_out)), rs.uniform(-bound, bound, fan_out)]
    net = gn.MLP([3, 16, 8, 1], "tanh", seed=int(rs.randint(0, 2**31 - 1)), dtype="float64", device="cpu",
                 l2=1e-3 / (2 * 0.5 * 30))
    net.set_weights(weights)
    hist = net.fit(X, y[:, None], epochs=5, batch_size=30, optimizer=gn.Adam(lr=1e-3, eps=1e-8 / 0.5), verbose=0)
    for a, b in zip(net.get_weights(), reg.model_.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(reg.coefs_[0], net.get_weights()[0])
    assert reg.loss_curve_ == [0.5 * v for v in hist.history["loss"]]
    assert reg.n_iter_ == 5 and reg.t_ == 450 and reg.predict(X).shape == (90,) and reg.n_features_in_ == 3
    assert reg.coefs_[0].dtype == np.float64 and reg.n_layers_ == 4 and reg.out_activation_ == "identity"


def test_multilabel_and_early_stopping_and_partial_fit():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 5))
    Y = np.stack([X[:, 0] > 0, X[:, 1] + X[:, 2] > 0], axis=1).astype(int)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=150, random_state=0, device="cpu",
                        early_stopping=True, n_iter_no_change=5, learning_rate_init=0.01).fit(X, Y)
    assert clf.model_.output_activation == "sigmoid" and clf.predict(X).shape == (300, 2)
    assert len(clf.validation_scores_) == clf.n_iter_ < 150 and clf.best_validation_score_ > 0.85
    inc = MLPClassifier(hidden_layer_sizes=(8,), random_state=0, device="cpu")
    with pytest.raises(ValueError, match="classes"):
        inc.partial_fit(X, Y[:, 0])
    for _ in range(3):
        inc.partial_fit(X, np.where(Y[:, 0], "a", "b"), classes=["a", "b"])
    # scikit-learn's counts: n_iter_ is the latest call's iterations, t_ every sample seen
    assert inc.n_iter_ == 1 and inc.t_ == 900 and list(inc.classes_) == ["a", "b"]
