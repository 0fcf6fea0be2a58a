"""Full-batch L-BFGS over a model's flat parameter buffer: SciPy's L-BFGS-B drives, gpunet computes.

The loss and its gradient are computed on the model's device by the same forward/backward pass as every
training step (:meth:`gpunet.MLP.step_gradients`, per-sample weights included); only the flat parameter
vector and its gradient cross to the host, where ``scipy.optimize.minimize(method="L-BFGS-B")`` keeps its
state in float64. This is the solver of scikit-learn's ``MLPClassifier(solver="lbfgs")``
(``sklearn/neural_network/_multilayer_perceptron.py``, ``_fit_lbfgs``), with the same options: ``maxiter``,
``maxfun`` and ``gtol``.

SciPy's PyPI wheels bundle an OpenBLAS of their own beside NumPy's (``scipy.libs/`` and ``numpy.libs/``), each
with its own thread pool, and an idle OpenBLAS worker spins for a while before it sleeps. L-BFGS-B alternates
between the two every iteration (its level-1 BLAS on the parameter vector in SciPy's, the network's GEMMs in
NumPy's), so the two pools' spinning workers take each other's cores: on a 2-core machine the digits fit of
``benchmarks/sklearn_compare.py`` ran 4x slower than with SciPy's pool at one thread, scikit-learn's own
``solver="lbfgs"`` alike. :func:`minimize` therefore runs SciPy's pool at one thread (its vectors hold only the
parameters) where it is a library apart from NumPy's, through threadpoolctl; without threadpoolctl it warns once.
"""
from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from gpunet._optional import import_optional
from gpunet.backend import SparseRows


_warned = []


def scipy_blas_pools(optimize):
    """``(controller, paths)``: threadpoolctl's controller and the BLAS libraries loaded from SciPy's own folders
    that are not NumPy's (empty where the two share one BLAS, as with conda's MKL); ``(None, reason)`` without
    threadpoolctl."""
    try:
        import threadpoolctl  # noqa: PLC0415 - an optional extra (scikit-learn depends on it)
    except ImportError:
        return None, "threadpoolctl is not installed"
    site = os.path.dirname(os.path.dirname(os.path.abspath(optimize.__file__)))  # .../site-packages/scipy
    roots = (site + os.sep, site + ".libs" + os.sep)
    numpy_site = os.path.dirname(os.path.abspath(np.__file__))
    controller = threadpoolctl.ThreadpoolController()
    paths = [lib.filepath for lib in controller.lib_controllers
             if lib.user_api == "blas" and os.path.abspath(lib.filepath).startswith(roots)
             and not os.path.abspath(lib.filepath).startswith((numpy_site + os.sep, numpy_site + ".libs" + os.sep))]
    return controller, paths


def one_scipy_blas_thread(optimize):
    """A context in which SciPy's own BLAS pool runs one thread (a no-op where it shares NumPy's, or without
    threadpoolctl, which it warns of once)."""
    controller, paths = scipy_blas_pools(optimize)
    if controller is None:
        if not _warned:
            _warned.append(True)
            warnings.warn(f"L-BFGS: {paths}, so SciPy's BLAS threads are not limited to one and may compete with "
                          "NumPy's for the cores (several times slower on small machines): pip install threadpoolctl",
                          RuntimeWarning, stacklevel=3)
        return contextlib.nullcontext()
    if not paths:
        return contextlib.nullcontext()
    return controller.select(filepath=paths).limit(limits=1)


def minimize(model, X, y, *, loss=None, sample_weight=None, max_iter=200, max_fun=15000, tol=1e-5, scale=1.0,
             callback=None, value=None):
    """Minimise ``scale * (loss + penalty)`` of ``model`` on all of ``(X, y)``; the model ends at the solution.

    Returns SciPy's ``OptimizeResult`` (``nit``, ``nfev``, ``fun``, ``status``, ``message``). ``callback`` is
    called with the iteration count after each L-BFGS iteration. ``value``, if given, maps the scaled
    objective to the value SciPy sees (and ``fun`` reports), called with the model at the current point:
    scikit-learn's multi-output squared error averages its value over the outputs but not its gradient."""
    optimize = import_optional("scipy.optimize", "solver='lbfgs'")
    loss = model.resolve_loss(loss)
    Xd, Yd = model.upload(X, y, loss)
    if isinstance(Xd, SparseRows):  # full-batch: densified once (the network is dense)
        Xd = Xd[:]
    Wd = model.upload_weights(sample_weight, Xd.shape[0])
    be = model.backend
    calls = [0]

    def value_and_grad(theta):
        calls[0] += 1
        model.params[...] = be.to_device(model.padded(theta), model.dtype)
        objective, _, _ = model.step_gradients(Xd, Yd, ws, loss, train=False, weight=Wd)
        grad = model.dense(be.to_host(model.grads)).astype(np.float64)
        v = scale * float(be.item(objective))
        return (v if value is None else value(v)), scale * grad

    iterations = [0]

    def on_iteration(*_):
        iterations[0] += 1
        if callback is not None:
            callback(iterations[0])

    with be.activate():
        ws = model.workspace(Xd.shape[0])
        x0 = model.dense(be.to_host(model.params)).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"), one_scipy_blas_thread(optimize):
            result = optimize.minimize(value_and_grad, x0, method="L-BFGS-B", jac=True, callback=on_iteration,
                                       options={"maxiter": int(max_iter), "maxfun": int(max_fun), "gtol": float(tol)})
        model.params[...] = be.to_device(model.padded(result.x), model.dtype)
    return result
