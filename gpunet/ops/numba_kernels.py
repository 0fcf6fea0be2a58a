"""Fused single-pass optimizer steps for the CPU, compiled with Numba when it is installed.

A NumPy Adam step makes a dozen passes over the flat parameter buffer; once the GEMMs have evicted
the caches that costs ~1.8 ms at 536k parameters, about a third of a batch-128 step. One fused loop
costs ~0.26 ms (``../shared/notes/cpu.md``). The maths is the same as the reference in
:mod:`gpunet.optim` (torch.optim semantics) and tests compare the two.

Hyper-parameters arrive cast to the parameters' dtype so float32 arithmetic stays float32, as in the
reference. ``adam_step``/``sgd_step`` are ``None`` when Numba is missing or disabled with
``GPUNET_NUMBA=0``; the optimizers then use the reference.

``mlp_step`` goes further for the CPU training loop: the gather, forward pass, loss and backward
pass of one batch in two compiled calls over the flat buffers, instead of ~80 NumPy calls. For small
networks the step is bound by per-call overhead (the seed's [1, 50 x 9, 1] at batch 20 spends most of
its ~190 us in Python and NumPy dispatch), so this is what makes them fast; large ones spend their
time in the same BLAS GEMMs either way (``np.dot`` inside Numba calls SciPy's BLAS). Tested against the
reference in ``tests/contracts/test_portability.py``.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from gpunet.ops.codes import ACT_CODES, LOSS_CODES
from gpunet.ops.numba_cache import cache_dir

log = logging.getLogger("gpunet")

adam_step = None
sgd_step = None


if os.environ.get("GPUNET_NUMBA", "1") != "0":
    try:
        import numba
    except Exception as exc:  # not installed, or an incompatible NumPy
        log.debug("gpunet: Numba unavailable (%s); using the NumPy optimizer path", exc)
        numba = None
else:
    numba = None

CACHE_DIR = cache_dir() if numba is not None else None


def _redirect_cache():
    """Numba chooses a function's cache locator when ``njit(cache=True)`` decorates it
    (``numba/core/decorators.py`` calls ``Dispatcher.enable_caching``, which builds ``FunctionCache``;
    ``numba/core/caching.py``: ``UserProvidedCacheLocator`` comes first and reads ``config.CACHE_DIR`` at
    that moment). So ``config.CACHE_DIR`` points at gpunet's folder while gpunet's kernels are decorated
    and the user's setting is put back at the end of this module: other Numba code is not affected.
    Returns the previous value."""
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = CACHE_DIR or ""
    return previous


def _njit(**kwargs):
    return numba.njit(cache=CACHE_DIR is not None, **kwargs)


def _stop_caching(exc):
    """A call of a gpunet kernel failed to read or write its cache (the folder was removed, replaced or
    filled up after import): from now on every gpunet kernel compiles without a cache, said once. Numba's
    ``Dispatcher`` starts with a ``NullCache`` that ``enable_caching`` replaces (``numba/core/dispatcher.py``);
    this puts it back. The failed call compiled but ran nothing (jitted code does no file I/O, and Numba
    reads and writes the cache before it runs the code), so the caller runs it again. Returns False when
    caching was already off: the error is not the cache's."""
    global CACHE_DIR
    if CACHE_DIR is None:
        return False
    log.warning("gpunet: cannot use the Numba cache folder %s any more (%s: %s); compiling gpunet's CPU kernels "
                "without a cache (once per process)", CACHE_DIR, type(exc).__name__, exc.strerror or exc)
    CACHE_DIR = None
    for kernel in _KERNELS:
        kernel._cache = NullCache()
    return True



mlp_step = None
stack_epoch = None

if numba is not None:
    import math

    from numba.core.caching import NullCache

    _previous_cache_dir = _redirect_cache()

    @_njit(error_model="numpy", nogil=True)
    def _adam(p, g, m, v, vmax, lr, beta1, beta2, eps, wd, step_size, bc2_sqrt, amsgrad, decoupled, tiny):
        one = p.dtype.type(1.0)
        zero = p.dtype.type(0.0)
        # First moments below the smallest normal number are flushed to zero (a select: the loop still
        # vectorises; NaN passes through). The first moments of parameters whose gradient is zero (dead
        # ReLUs) decay by beta1 per step into the subnormal range, where every operation on them costs ~100
        # cycles: without the flush the seed's sinc net slows from 72 to 340 us per step once it has
        # converged. A flushed m moves its parameter by less than lr * tiny / sqrt(smallest subnormal v)
        # (lr * 3e-16 in float32, lr * 1e-146 in float64), below any normal parameter's rounding. The second
        # moment is not flushed: it decays 100x slower, and zeroing it would turn m / sqrt(v) into m / eps.
        # Branch-free loop (it vectorises: ~2x faster than testing the flags per element): Adam's
        # coupled decay is g + wd*p with decay 1; AdamW's is p*(1 - lr*wd) with a coupled wd of 0.
        # Multiplying by exactly 1 or adding exactly 0 leaves finite values unchanged.
        decay = one - lr * wd if decoupled else one
        coupled = p.dtype.type(0.0) if decoupled else wd
        # m / (sqrt(v) / bc2 + eps) = bc2 * m / (sqrt(v) + bc2 * eps): one division per element instead of two
        # (the loop is bound by the divider and the square root)
        scaled_step = step_size * bc2_sqrt
        scaled_eps = eps * bc2_sqrt
        if amsgrad:
            for i in range(p.size):
                pi = p[i] * decay
                gi = g[i] + coupled * pi
                mi = m[i] + (one - beta1) * (gi - m[i])
                mi = zero if abs(mi) < tiny else mi
                vi = v[i] * beta2 + (one - beta2) * gi * gi
                vm = vmax[i] if vmax[i] > vi else vi
                m[i], v[i], vmax[i] = mi, vi, vm
                p[i] = pi - scaled_step * (mi / (math.sqrt(vm) + scaled_eps))
            return
        for i in range(p.size):
            pi = p[i] * decay
            gi = g[i] + coupled * pi
            mi = m[i] + (one - beta1) * (gi - m[i])
            mi = zero if abs(mi) < tiny else mi
            vi = v[i] * beta2 + (one - beta2) * gi * gi
            m[i], v[i] = mi, vi
            p[i] = pi - scaled_step * (mi / (math.sqrt(vi) + scaled_eps))

    @_njit(error_model="numpy", nogil=True)
    def _sgd(p, g, buf, lr, momentum, dampening, wd, nesterov, first):
        one = p.dtype.type(1.0)
        if momentum == 0:
            for i in range(p.size):
                p[i] -= lr * (g[i] + wd * p[i])
            return
        for i in range(p.size):
            gi = g[i] + wd * p[i]
            b = gi if first else momentum * buf[i] + (one - dampening) * gi
            buf[i] = b
            p[i] -= lr * (gi + momentum * b if nesterov else b)

    def adam_step(p, g, m, v, vmax, *, lr, beta1, beta2, eps, weight_decay, step_size, bc2_sqrt, amsgrad, decoupled):
        """Fused Adam/AdamW update of the flat buffers ``p, g, m, v`` (and ``vmax``), in place; the bias
        corrections come from :meth:`gpunet.optim.Adam.step`."""
        t = p.dtype.type
        args = (p, g, m, v, vmax if amsgrad else m, t(lr), t(beta1), t(beta2), t(eps), t(weight_decay),
                t(step_size), t(bc2_sqrt), bool(amsgrad), bool(decoupled), t(np.finfo(t).tiny))
        try:
            _adam(*args)
        except OSError as exc:  # the cache, at the compiling call (see _stop_caching)
            if not _stop_caching(exc):
                raise
            _adam(*args)

    def sgd_step(p, g, buf, *, lr, momentum, dampening, weight_decay, nesterov, first):
        """Fused SGD (momentum, Nesterov, coupled weight decay) update, in place."""
        t = p.dtype.type
        args = (p, g, buf if buf is not None else p, t(lr), t(momentum), t(dampening), t(weight_decay),
                bool(nesterov), bool(first))
        try:
            _sgd(*args)
        except OSError as exc:  # the cache, at the compiling call (see _stop_caching)
            if not _stop_caching(exc):
                raise
            _sgd(*args)

    # ------------------------------------------------------------------ the whole training step
    @numba.njit(inline="always")
    def _tanh32(z):
        """float32 tanh as Eigen computes it for XLA on the CPU (``generic_fast_tanh_float``): a 13/6 rational
        approximation on [-7.905, 7.905], odd numerator and even denominator, within 3.5e-7 of tanh (6 float32
        ulps at the clamp, NaN passes through, +-Inf gives +-(1 - 3e-7)). Pure arithmetic, so the loops that
        call it vectorise: ~0.6 ns per value against ~19 ns for libm's tanhf, the largest cost of a small tanh
        network's step. float64 keeps libm's tanh (:func:`_tanh`)."""
        c = np.float32(7.90531110763549805)
        x = c if z > c else z
        x = -c if x < -c else x
        x2 = x * x
        p = x2 * np.float32(-2.76076847742355e-16) + np.float32(2.00018790482477e-13)
        p = x2 * p + np.float32(-8.60467152213735e-11)
        p = x2 * p + np.float32(5.12229709037114e-08)
        p = x2 * p + np.float32(1.48572235717979e-05)
        p = x2 * p + np.float32(6.37261928875436e-04)
        p = x2 * p + np.float32(4.89352455891786e-03)
        p = x * p
        q = x2 * np.float32(1.19825839466702e-06) + np.float32(1.18534705686654e-04)
        q = x2 * q + np.float32(2.26843463243900e-03)
        q = x2 * q + np.float32(4.89352518554385e-03)
        return x if abs(z) < np.float32(0.0004) else p / q

    def _tanh(z):
        """tanh in the fused steps: :func:`_tanh32` for float32, libm's for float64 (chosen at compile time)."""
        return math.tanh(z)

    @numba.extending.overload(_tanh)  # LLVM inlines it; numba-level inlining warns (NumbaIRAssumptionWarning)
    def _tanh_overload(z):
        if z == numba.types.float32:
            return lambda z: _tanh32(z)
        return lambda z: math.tanh(z)

    @numba.njit(inline="always")
    def _act(z, code):
        if code == 1:
            return z if z > 0 else z * 0
        if code == 2:
            e = math.exp(-z if z >= 0 else z)
            return 1 / (1 + e) if z >= 0 else e / (1 + e)
        if code == 3:
            return _tanh(z)
        return z

    @numba.njit(inline="always")
    def _act_grad(a, code):
        if code == 1:
            return a * 0 + (1 if a > 0 else 0)
        if code == 2:
            return a * (1 - a)
        if code == 3:
            return 1 - a * a
        return a * 0 + 1

    # The elementwise passes of the fused step with the activation chosen outside the loop (one loop per
    # activation, which LLVM vectorises; a code tested per element is not), same expressions as _act/_act_grad.
    @numba.njit(inline="always")
    def _bias_act(A, b, code):
        """In place: A[i, j] <- act(A[i, j] + b[j])."""
        r, n = A.shape
        if code == 1:
            for i in range(r):
                for j in range(n):
                    z = A[i, j] + b[j]
                    A[i, j] = z if z > 0 else z * 0
        elif code == 3:
            for i in range(r):
                row = A[i]
                for j in range(n):
                    row[j] = _tanh(row[j] + b[j])
        else:
            for i in range(r):
                for j in range(n):
                    A[i, j] = _act(A[i, j] + b[j], code)

    @numba.njit(inline="always")
    def _scale_by_act_grad(P, A, code):
        """In place over flat blocks: P <- P * act'(A) (NaN and Inf in A pass through, as in _act_grad)."""
        if code == 1:
            for t in range(P.size):
                a = A[t]
                P[t] *= a * 0 + (1 if a > 0 else 0)
        elif code == 3:
            for t in range(P.size):
                a = A[t]
                P[t] *= 1 - a * a
        else:
            for t in range(P.size):
                P[t] *= _act_grad(A[t], code)

    @numba.njit(inline="always")
    def _block(flat, offset, rows, cols):
        return flat[offset:offset + rows * cols].reshape((rows, cols))

    @_njit(nogil=True)
    def _offsets(sizes, rows):
        """Start of W_l in the flat parameters (b_l follows it), and of layer l's block of ``rows``
        samples in the flat activation/delta buffers."""
        L = sizes.size - 1
        woff = np.empty(L, np.int64)
        aoff = np.empty(L + 1, np.int64)
        o = 0
        for l in range(L):
            woff[l] = o
            o += sizes[l] * sizes[l + 1] + sizes[l + 1]
        o = 0
        for l in range(L + 1):
            aoff[l] = o
            o += rows * sizes[l]
        return woff, aoff

    @_njit(error_model="numpy", nogil=True)
    def _mlp_step(X, Y, idx, sizes, rows, params, grads, acts, deltas, z, yb, hidden, out_act, loss_code):
        """Gather, forward, loss and backward for the batch ``X[idx]`` in one call.

        Same maths as :mod:`gpunet.model` (see there for notation) on the same flat layouts: ``params``
        and ``grads`` hold W1, b1, W2, b2, ...; ``acts``/``deltas`` hold per-layer blocks of ``rows``
        (the workspace's batch size) by n_l. Returns (loss, number correct).
        """
        L = sizes.size - 1
        r = idx.size
        k = sizes[L]
        woff, aoff = _offsets(sizes, rows)
        A0 = _block(acts, 0, r, sizes[0])
        Yb = _block(yb, 0, r, k)
        for i in range(r):
            A0[i, :] = X[idx[i], :]
            Yb[i, :] = Y[idx[i], :]
        # forward
        Z = _block(z, 0, r, k)
        for l in range(L):
            n_in, n_out = sizes[l], sizes[l + 1]
            W = _block(params, woff[l], n_in, n_out)
            b = params[woff[l] + n_in * n_out:woff[l] + n_in * n_out + n_out]
            A_in = _block(acts, aoff[l], r, n_in)
            A_out = _block(acts, aoff[l + 1], r, n_out)
            if l < L - 1:
                np.dot(A_in, W, A_out)
                _bias_act(A_out, b, hidden)
            else:
                np.dot(A_in, W, Z)
                for i in range(r):
                    for j in range(n_out):
                        Z[i, j] += b[j]
        # output activation, loss, dL/dz
        A = _block(acts, aoff[L], r, k)
        D = _block(deltas, aoff[L], r, k)
        loss = 0.0
        correct = 0.0
        inv_n = 1.0 / (r * k)
        if loss_code == 2 or out_act == 4:  # softmax rows
            for i in range(r):
                zmax = Z[i, 0]
                for j in range(1, k):
                    zmax = max(zmax, Z[i, j])
                s = 0.0
                for j in range(k):
                    A[i, j] = math.exp(Z[i, j] - zmax)
                    s += A[i, j]
                for j in range(k):
                    A[i, j] /= s
                if loss_code == 2:
                    log_s = math.log(s)
                    best_a = 0
                    best_y = 0
                    for j in range(k):
                        D[i, j] = (A[i, j] - Yb[i, j]) / r
                        loss -= Yb[i, j] * (Z[i, j] - zmax - log_s)
                        if A[i, j] > A[i, best_a]:
                            best_a = j
                        if Yb[i, j] > Yb[i, best_y]:
                            best_y = j
                    correct += 1.0 if best_a == best_y else 0.0
            if loss_code == 2:
                return loss / r, correct
        if loss_code == 3:  # sigmoid + binary cross-entropy from the logits
            for i in range(r):
                for j in range(k):
                    zz = Z[i, j]
                    a = _act(zz, 2)
                    A[i, j] = a
                    D[i, j] = (a - Yb[i, j]) * inv_n
                    loss += max(zz, 0.0) - zz * Yb[i, j] + math.log1p(math.exp(-abs(zz)))
                    correct += 1.0 if (a > 0.5) == (Yb[i, j] > 0.5) else 0.0
            return loss * inv_n, correct
        # mse / mae with any output activation
        for i in range(r):
            for j in range(k):
                if out_act != 4:
                    A[i, j] = _act(Z[i, j], out_act)
                d = A[i, j] - Yb[i, j]
                if loss_code == 0:
                    loss += d * d
                    D[i, j] = 2 * d * inv_n
                else:
                    loss += abs(d)
                    D[i, j] = (1 if d > 0 else (-1 if d < 0 else 0)) * inv_n
            if out_act == 4:
                s = 0.0
                for j in range(k):
                    s += A[i, j] * D[i, j]
                for j in range(k):
                    D[i, j] = A[i, j] * (D[i, j] - s)
            else:
                for j in range(k):
                    D[i, j] *= _act_grad(A[i, j], out_act)
        return loss * inv_n, correct

    @_njit(error_model="numpy", nogil=True)
    def _mlp_backward(sizes, rows, r, params, grads, acts, deltas, hidden):
        """dW_l = a_{l-1}.T @ delta_l, db_l = column sums, delta_{l-1} = (delta_l @ W_l.T) * f'(a_{l-1})."""
        L = sizes.size - 1
        woff, aoff = _offsets(sizes, rows)
        for l in range(L - 1, -1, -1):
            n_in, n_out = sizes[l], sizes[l + 1]
            D = _block(deltas, aoff[l + 1], r, n_out)
            np.dot(_block(acts, aoff[l], r, n_in).T, D, _block(grads, woff[l], n_in, n_out))
            db = grads[woff[l] + n_in * n_out:woff[l] + n_in * n_out + n_out]
            db[:] = 0
            for i in range(r):
                for j in range(n_out):
                    db[j] += D[i, j]
            if l:
                P = _block(deltas, aoff[l], r, n_in)
                np.dot(D, _block(params, woff[l], n_in, n_out).T, P)
                _scale_by_act_grad(deltas[aoff[l]:aoff[l] + r * n_in], acts[aoff[l]:aoff[l] + r * n_in], hidden)

    def mlp_step(X, Y, idx, sizes, rows, params, grads, buffers, hidden, out_act, loss):
        """Fused gather + forward + loss + backward of one batch; fills ``grads``; returns (loss, correct).

        ``buffers``: (acts, deltas, z, yb) flat arrays for batches of up to ``rows`` samples.
        """
        acts, deltas, z, yb = buffers
        forward = (X, Y, idx, sizes, rows, params, grads, acts, deltas, z, yb, ACT_CODES[hidden], ACT_CODES[out_act],
                   LOSS_CODES[loss])
        backward = (sizes, rows, idx.size, params, grads, acts, deltas, ACT_CODES[hidden])
        try:
            value, correct = _mlp_step(*forward)
            _mlp_backward(*backward)
        except OSError as exc:  # the cache, at a compiling call (see _stop_caching): both calls again
            if not _stop_caching(exc):
                raise
            value, correct = _mlp_step(*forward)
            _mlp_backward(*backward)
        return value, correct

    # ------------------------------------------------------------------ K models, one epoch per call
    @_njit(error_model="numpy", nogil=True, parallel=True)
    def _stack_epoch(X, Y, idx, B, sizes, params, grads, s0, s1, s2, opt_code, lr, hyper, step_size, bc2_sqrt,
                     first, flags, batch_loss, batch_correct, hidden, out_act, loss_code):
        """A whole epoch of K models (``prange`` over the models): per batch, the single-model fused step
        (:func:`_mlp_step`, :func:`_mlp_backward`) and optimizer (:func:`_adam`, :func:`_sgd`) on row k of
        the ``(K, n_params)`` buffers, in the order model k alone takes them. ``idx`` (K, n): each model's
        epoch order; ``step_size`` (n_batches, K) and ``bc2_sqrt`` (n_batches,) Adam's bias corrections of
        each step, computed on the host as :meth:`gpunet.optim.Adam.step` computes them; ``flags``: amsgrad,
        decoupled (Adam) or nesterov (SGD). Writes ``batch_loss``/``batch_correct`` (n_batches, K)."""
        K = params.shape[0]
        n = idx.shape[1]
        n_batches = batch_loss.shape[0]
        total = 0
        for l in range(sizes.size):
            total += sizes[l]
        k_out = sizes[sizes.size - 1]
        tiny = hyper[4]
        for k in numba.prange(K):
            acts = np.empty(total * B, params.dtype)
            deltas = np.empty(total * B, params.dtype)
            z = np.empty(k_out * B, params.dtype)
            yb = np.empty(k_out * B, params.dtype)
            p, g, m0, m1, m2 = params[k], grads[k], s0[k], s1[k], s2[k]
            for i in range(n_batches):
                s = i * B
                e = min(s + B, n)
                rows = idx[k, s:e]
                value, correct = _mlp_step(X, Y, rows, sizes, B, p, g, acts, deltas, z, yb, hidden, out_act,
                                           loss_code)
                _mlp_backward(sizes, B, e - s, p, g, acts, deltas, hidden)
                if opt_code == 0:
                    _adam(p, g, m0, m1, m2, lr[k], hyper[0], hyper[1], hyper[2], hyper[3], step_size[i, k],
                          bc2_sqrt[i], flags[0], flags[1], tiny)
                else:
                    _sgd(p, g, m0, lr[k], hyper[0], hyper[1], hyper[3], flags[0], first and i == 0)
                batch_loss[i, k] = value
                batch_correct[i, k] = correct

    def stack_epoch(X, Y, idx, B, sizes, params, grads, opt, lr, hidden, out_act, loss, batch_loss, batch_correct,
                    threads=None):
        """One epoch of K stacked models in one compiled call: gather, forward, loss, backward and the
        optimizer step of every batch (:func:`_stack_epoch`). ``opt`` is the stack's SGD, Adam or AdamW
        (state (K, n_params), updated in place; its step count is advanced here); ``lr`` the K learning rates
        (host). The per-step scalars are those :meth:`gpunet.optim.Adam.step` and :meth:`~gpunet.optim.SGD.step`
        give :func:`adam_step`/:func:`sgd_step` for one model alone, so model k's numbers are the ones it gets
        alone (the same compiled step and optimizer, in the same order). ``threads``: how many of Numba's
        threads share the models (default all); the numbers do not depend on it."""
        t = params.dtype.type
        n_batches = batch_loss.shape[0]
        t0 = opt.step_count
        lr_d = np.asarray(lr, dtype=t)
        state = opt.state
        codes = (ACT_CODES[hidden], ACT_CODES[out_act], LOSS_CODES[loss])
        if opt.name in ("adam", "adamw"):
            beta1, beta2 = opt.betas
            steps = range(t0 + 1, t0 + n_batches + 1)
            step_size = np.array([[lr_k / (1.0 - beta1 ** s) for lr_k in lr] for s in steps], dtype=t)
            bc2 = np.array([math.sqrt(1.0 - beta2 ** s) for s in steps], dtype=t)
            hyper = np.array([beta1, beta2, opt.eps, opt.weight_decay, np.finfo(t).tiny], dtype=t)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            args = (m, v, state.get("max_exp_avg_sq", m), 0, lr_d, hyper, step_size, bc2, False,
                    np.array([bool(opt.amsgrad), bool(opt.decoupled)]))
        else:
            buf = state.get("momentum_buffer", params)
            hyper = np.array([opt.momentum, opt.dampening, 0.0, opt.weight_decay, 0.0], dtype=t)
            unused = np.zeros((1, 1), dtype=t)
            args = (buf, buf, buf, 1, lr_d, hyper, unused, unused[0], t0 == 0, np.array([bool(opt.nesterov), False]))
        # models go to the threads one at a time, not in equal shares fixed up front: on a shared machine a
        # thread that loses its core then holds up one model, not half of them
        chunk = numba.set_parallel_chunksize(1)
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads or before, numba.config.NUMBA_NUM_THREADS))
        try:
            _stack_epoch(X, Y, idx, B, sizes, params, grads, *args, batch_loss, batch_correct, *codes)
        finally:
            numba.set_num_threads(before)
            numba.set_parallel_chunksize(chunk)
        opt.step_count = t0 + n_batches

    _KERNELS = (_adam, _sgd, _offsets, _mlp_step, _mlp_backward, _stack_epoch)

    numba.config.CACHE_DIR = _previous_cache_dir  # gpunet's kernels are decorated: the user's setting back
