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


# ---------------------------------------------------------------- scikit-learn's semantics, case by case
def _blobs(n=120, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    X = rng.normal(size=(n, 4)) + y[:, None]
    return X, y


def test_lbfgs_loss_is_scikit_learns_objective():
    """loss_ = mean log-loss + 0.5 * alpha * ||W||^2 / n, computed by hand from the fitted attributes."""
    X, y = _blobs()
    clf = MLPClassifier(hidden_layer_sizes=(6,), solver="lbfgs", alpha=0.5, max_iter=30, random_state=0,
                        device="cpu").fit(X, y)
    h = np.maximum(X @ clf.coefs_[0] + clf.intercepts_[0], 0)
    z = h @ clf.coefs_[1] + clf.intercepts_[1]
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    expected = -logp[np.arange(len(y)), y].mean() + 0.5 * 0.5 * sum((W ** 2).sum() for W in clf.coefs_) / len(y)
    assert clf.loss_ == pytest.approx(expected, rel=1e-9)
    assert 1 <= clf.n_iter_ <= 30 and not hasattr(clf, "loss_curve_")


def test_lbfgs_runs_scipys_own_blas_at_one_thread_and_leaves_numpys_alone(monkeypatch):
    """SciPy's wheel bundles its own OpenBLAS beside NumPy's; L-BFGS-B alternates between them every iteration,
    and their idle workers spin on each other's cores (4x slower on 2 cores). During the solve SciPy's pool runs
    at one thread, NumPy's (the network's GEMMs) keeps its own; both are as before afterwards."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.optimize

    from gpunet.training import lbfgs

    controller, paths = lbfgs.scipy_blas_pools(scipy.optimize)
    if not paths:
        pytest.skip("SciPy and NumPy share one BLAS here: nothing to limit")
    before = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}
    if max(before[p] for p in paths) < 2:
        pytest.skip("SciPy's BLAS already runs one thread here: the limit would not be visible")
    seen = []
    import gpunet

    step = gpunet.MLP.step_gradients

    def spy(self, *args, **kwargs):
        seen.append({p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"})
        return step(self, *args, **kwargs)

    monkeypatch.setattr(gpunet.MLP, "step_gradients", spy)
    X, y = _blobs()
    MLPClassifier(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=5, random_state=0, device="cpu").fit(X, y)
    assert seen
    for during in seen:
        assert all(during[p] == 1 for p in paths), during
        assert all(during[p] == n for p, n in before.items() if p not in paths), (during, before)
    after = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}
    assert after == before


def test_zero_weights_are_removed_rows_with_lbfgs():
    X, y = _blobs(90)
    w = np.ones(90)
    w[::3] = 0
    keep = w > 0
    a = MLPRegressor(hidden_layer_sizes=(5,), solver="lbfgs", random_state=1, max_iter=50, device="cpu")
    b = MLPRegressor(hidden_layer_sizes=(5,), solver="lbfgs", random_state=1, max_iter=50, device="cpu")
    a.fit(X, y.astype(float), sample_weight=w)
    b.fit(X[keep], y[keep].astype(float))
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6, atol=1e-8)


def test_a_failed_first_fit_leaves_no_state_and_a_failed_warm_fit_keeps_the_old_one():
    rng = np.random.RandomState(0)
    huge = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    reg = MLPRegressor(device="cpu")
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        reg.fit(huge, rng.standard_normal(10))
    for attr in ("coefs_", "model_", "n_features_in_", "n_iter_", "loss_curve_"):
        assert not hasattr(reg, attr), attr
    X, y = _blobs(60)
    reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0, warm_start=True, device="cpu")
    reg.fit(X[:, :2], y.astype(float))
    coefs, pred, t = [c.copy() for c in reg.coefs_], reg.predict(X[:, :2]), reg.t_
    with pytest.raises(ValueError, match="non-finite parameter weights"):
        reg.fit(huge, rng.standard_normal(10))
    for a, b in zip(coefs, reg.coefs_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pred, reg.predict(X[:, :2]))
    assert reg.t_ == t


def test_labels_keep_their_text_and_classes_order_does_not_matter():
    X = np.arange(8, dtype=float).reshape(-1, 1)
    y = np.array(["007", "7", "007", "7", "x", "x", "7", "007"])
    clf = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", random_state=0, device="cpu").fit(X, y)
    assert list(clf.classes_) == ["007", "7", "x"] and clf.n_outputs_ == 3
    inc = MLPClassifier(random_state=0, device="cpu")
    inc.partial_fit(X, np.arange(8) % 3, classes=[2, 0, 1])
    inc.partial_fit(X, np.arange(8) % 3, classes=[0, 1, 2])
    inc.partial_fit(X, np.arange(8) % 3)
    assert list(inc.classes_) == [0, 1, 2] and set(inc.predict(X)) <= {0, 1, 2}
    with pytest.raises(ValueError, match="is not the same as on last call"):
        inc.partial_fit(X, np.arange(8) % 3, classes=[0, 1, 3])
    with pytest.raises(ValueError, match="classes not in"):
        inc.partial_fit(X, np.arange(8) % 4)


def test_one_class_fits_as_in_scikit_learn():
    X = np.random.default_rng(0).normal(size=(20, 3))
    clf = MLPClassifier(max_iter=5, device="cpu").fit(X, ["only"] * 20)
    assert list(clf.predict(X)) == ["only"] * 20 and clf.predict_proba(X).shape == (20, 2)


def test_dtype_follows_X_and_float32_is_an_opt_in():
    X, y = _blobs(60)
    reg32 = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, device="cpu").fit(X.astype(np.float32), y)
    assert reg32.coefs_[0].dtype == np.float32 and reg32.predict(X.astype(np.float32)).dtype == np.float32
    reg64 = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, device="cpu").fit(X.astype(np.int64), y)
    assert reg64.coefs_[0].dtype == np.float64 and reg64.model_.dtype == "float64"
    forced = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, device="cpu", dtype="float32").fit(X, y)
    assert forced.model_.dtype == "float32" and forced.coefs_[0].dtype == np.float32


def test_single_output_predictions_are_1d():
    X, y = _blobs(40)
    from sklearn.exceptions import DataConversionWarning
    with pytest.warns(DataConversionWarning):
        reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=3, device="cpu").fit(X, y[:, None].astype(float))
    assert reg.predict(X).shape == (40,) and (y - reg.predict(X)).shape == (40,)


def test_sparse_input_gives_the_dense_result():
    scipy_sparse = pytest.importorskip("scipy.sparse")
    X, y = _blobs(80)
    X[X < 0.5] = 0
    a = MLPClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0, device="cpu").fit(X, y)
    for fmt in (scipy_sparse.csr_matrix, scipy_sparse.csc_array):
        b = MLPClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0, device="cpu").fit(fmt(X), y)
        # the same training to rounding (dense batches take the fused step, densified sparse ones the primitives)
        np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(fmt(X)), rtol=1e-10, atol=1e-13)
        assert "sparse X" in b.model_.history.fast_paths["fused_step"]["reason"]


def test_warm_start_and_partial_fit_refuse_what_they_cannot_do():
    X, y = _blobs(60)
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, warm_start=True, device="cpu").fit(X, y)
    clf.set_params(hidden_layer_sizes=(5,))
    with pytest.raises(ValueError, match="refit with warm_start=False"):
        clf.fit(X, y)
    es = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, early_stopping=True, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        es.partial_fit(X, y)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


def test_early_stopping_split_is_stratified_and_validation_attributes_follow_scikit_learn():
    X, y = _blobs(200, classes=3)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, early_stopping=True, validation_fraction=0.3,
                        random_state=0, device="cpu").fit(X, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    plain = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, device="cpu").fit(X, y)
    assert plain.validation_scores_ is None and plain.best_validation_score_ is None
    with pytest.raises(ValueError, match="least populated class"):
        MLPClassifier(early_stopping=True, device="cpu").fit(X[:8], [0, 0, 0, 0, 0, 0, 0, 1])


def test_pickled_for_a_missing_gpu_loads_on_the_cpu_with_a_warning():
    X, y = _blobs(50)
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, device="cpu").fit(X, y)
    clf.device = "cuda"  # as if fitted on a GPU machine (this one has none: CuPy is absent)
    pytest.importorskip("sklearn")
    import gpunet as gn
    if any(d.startswith("cuda") for d in gn.devices()):
        pytest.skip("this machine has a GPU")
    with pytest.warns(UserWarning, match="loaded on the CPU"):
        again = pickle.loads(pickle.dumps(clf))
    assert again.model_.device == "cpu"
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    again.partial_fit(X, y)  # and it keeps training
    assert again.t_ == clf.t_ + 50
    auto = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, device="auto").fit(X, y)
    state = auto.__getstate__()
    state["_model_device"] = "cuda:0"  # "auto" meant a GPU where it was pickled
    again = MLPClassifier.__new__(MLPClassifier)
    with pytest.warns(UserWarning, match="fitted on cuda:0; device='auto' is cpu here"):
        again.__setstate__(state)
    np.testing.assert_array_equal(again.predict(X), auto.predict(X))


def test_sgd_schedules_and_scikit_learns_private_views():
    X = [[3, 2], [1, 6], [5, 6], [-2, -4]]
    y = [1, 1, 1, 0]
    clf = MLPClassifier(solver="sgd", hidden_layer_sizes=4, learning_rate="invscaling", power_t=0.25, max_iter=1,
                        warm_start=True, device="cpu")
    import warnings as _w
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        clf.fit(X, y)
        clf.fit(X, y)
    assert clf._optimizer.learning_rate == 0.001 / 9 ** 0.25
    assert clf._optimizer.opt.lr == clf._optimizer.learning_rate  # binary log-loss: c = 1
    reg = MLPRegressor(solver="sgd", hidden_layer_sizes=4, max_iter=2, device="cpu")
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        reg.fit(np.asarray(X, float), np.c_[y, y, y].astype(float))
    assert reg._optimizer.opt.lr == pytest.approx(0.001 * 1.5)  # three outputs of half squared error: c = 3/2


def test_same_numbers_as_scikit_learn_where_the_batches_are_the_same():
    """Same random_state -> scikit-learn's initial weights; L-BFGS (full batch) and full-batch SGD without
    shuffling then follow scikit-learn's own estimator to rounding: the objective, its scale and the solvers."""
    import warnings as _w

    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier as SkC, MLPRegressor as SkR

    X, y = load_digits(n_class=3, return_X_y=True)
    X = X / 16.0
    with _w.catch_warnings():
        _w.simplefilter("ignore")
        ours = MLPClassifier(solver="lbfgs", hidden_layer_sizes=(20,), max_iter=10, random_state=0, device="cpu")
        theirs = SkC(solver="lbfgs", hidden_layer_sizes=(20,), max_iter=10, random_state=0)
        ours.fit(X, y), theirs.fit(X, y)
        assert ours.n_iter_ == theirs.n_iter_ and ours.loss_ == pytest.approx(theirs.loss_, rel=1e-9)
        for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
        rng = np.random.default_rng(0)
        Xr = rng.normal(size=(100, 4))
        Y = np.c_[Xr.sum(axis=1), Xr[:, 0]]
        kw = dict(solver="sgd", hidden_layer_sizes=(8,), max_iter=3, random_state=0, shuffle=False, batch_size=100)
        ours = MLPRegressor(device="cpu", **kw).fit(Xr, Y)
        theirs = SkR(**kw).fit(Xr, Y)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-7)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
