"""The peers gpunet is measured against: a textbook NumPy MLP, PyTorch (eager, compiled), JAX (jit) and
scikit-learn. Each imports its library lazily and is skipped with a note when it is missing."""
from __future__ import annotations

import time

import numpy as np

from gpunet.bench.runners import Runner
from gpunet.nn.initializers import initial_weights


class NumpyRunner(Runner):
    """The textbook NumPy MLP: what gpunet replaces."""

    def __init__(self, w, dtype):
        self.name = "numpy"
        self.w, self.dtype = w, np.dtype(dtype)
        self.params = [p.astype(dtype) for p in initial_weights(w.layers, rng=0)]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0
        self.X = w.X.astype(dtype)
        self.Y = np.eye(w.layers[-1], dtype=dtype)[w.y] if w.classification else w.y.astype(dtype)

    def step(self, x, y):
        Ws, bs = self.params[0::2], self.params[1::2]
        acts = [x]
        for i, (W, b) in enumerate(zip(Ws, bs)):
            z = acts[-1] @ W + b
            acts.append(np.maximum(z, 0) if i < len(Ws) - 1 else z)
        out = acts[-1]
        if self.w.classification:
            e = np.exp(out - out.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
            delta = (p - y) / len(x)
        else:
            delta = 2 * (out - y) / out.size
        grads = [None] * len(self.params)
        for i in range(len(Ws) - 1, -1, -1):
            grads[2 * i] = acts[i].T @ delta
            grads[2 * i + 1] = delta.sum(axis=0)
            if i:
                delta = (delta @ Ws[i].T) * (acts[i] > 0)
        self.t += 1
        b1, b2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr / (1 - b1 ** self.t)) * m / (np.sqrt(v / (1 - b2 ** self.t)) + eps)

    def run(self, steps):
        B = self.w.batch_size
        order = np.random.default_rng(self.t).permutation(steps * B)
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * B:(s + 1) * B]
            self.step(self.X[idx], self.Y[idx])
        return time.perf_counter() - t0

class TorchRunner(Runner):
    def __init__(self, w, device, dtype, compile_mode=None):
        import torch  # noqa: PLC0415

        self.torch = torch
        self.w = w
        self.dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
        tdtype = getattr(torch, dtype)
        layers = []
        for i, (a, b) in enumerate(zip(w.layers[:-1], w.layers[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(w.layers) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers).to(self.dev, tdtype)
        try:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
            self.fused = "fused"
        except (RuntimeError, TypeError):
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, foreach=True)
            self.fused = "foreach"
        self.X = torch.tensor(w.X, dtype=tdtype, device=self.dev)
        self.y = torch.tensor(w.y, device=self.dev) if w.classification else torch.tensor(w.y, dtype=tdtype, device=self.dev)
        self.loss_fn = torch.nn.CrossEntropyLoss() if w.classification else torch.nn.MSELoss()
        step = self._step
        self.name = "torch"
        if compile_mode:
            self.name = "torch-compile"
            step = torch.compile(step, mode=compile_mode)
        self.step = step
        self.gen = torch.Generator(device="cpu").manual_seed(0)

    def _step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def run(self, steps):
        B = self.w.batch_size
        order = self.torch.randperm(steps * B, generator=self.gen).to(self.dev)
        self.sync()
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * B:(s + 1) * B]
            self.step(self.X.index_select(0, idx), self.y.index_select(0, idx))
        self.sync()
        return time.perf_counter() - t0

class JaxRunner(Runner):
    def __init__(self, w, device, dtype):
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        self.name, self.w, self.jax = "jax", w, jax
        platform_ = "gpu" if device.startswith("cuda") else "cpu"
        self.dev = jax.devices(platform_)[0]
        flat = [p.astype(dtype) for p in initial_weights(w.layers, rng=0)]
        params = list(zip(flat[0::2], flat[1::2]))
        put = lambda t: jax.device_put(t, self.dev)  # noqa: E731
        self.params = put(params)
        self.m = put(jax.tree_util.tree_map(np.zeros_like, params))
        self.v = put(jax.tree_util.tree_map(np.zeros_like, params))
        self.t = 0
        self.X = put(w.X.astype(dtype))
        self.Y = put(np.eye(w.layers[-1], dtype=dtype)[w.y] if w.classification else w.y.astype(dtype))
        classification = w.classification

        def loss(params, x, y):
            a = x
            for W, b in params[:-1]:
                a = jax.nn.relu(a @ W + b)
            W, b = params[-1]
            z = a @ W + b
            if classification:
                return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(z), axis=1))
            return jnp.mean((z - y) ** 2)

        B = w.batch_size

        def step(params, m, v, t, X, Y, order, s):
            idx = jax.lax.dynamic_slice(order, (s * B,), (B,))  # the batch gather is inside the jit too
            x, y = jnp.take(X, idx, axis=0), jnp.take(Y, idx, axis=0)
            g = jax.grad(loss)(params, x, y)
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            ss = 1e-3 / (1 - 0.9 ** t)
            bc2 = jnp.sqrt(1 - 0.999 ** t)
            params = jax.tree_util.tree_map(lambda p, m, v: p - ss * m / (jnp.sqrt(v) / bc2 + 1e-8), params, m, v)
            return params, m, v

        self.step = jax.jit(step, donate_argnums=(0, 1, 2))
        order0 = jax.device_put(np.arange(len(w.X)), self.dev)
        t0 = time.perf_counter()
        out = self.step(self.params, self.m, self.v, 1.0, self.X, self.Y, order0, 0)
        jax.block_until_ready(out)
        self.compile_seconds = time.perf_counter() - t0
        self.params, self.m, self.v = out
        self.t = 1

    def run(self, steps):
        order = self.jax.device_put(np.random.default_rng(self.t).permutation(steps * self.w.batch_size), self.dev)
        self.jax.block_until_ready(order)  # the index upload is not timed (as for the other runners)
        t0 = time.perf_counter()
        for s in range(steps):
            self.t += 1
            self.params, self.m, self.v = self.step(self.params, self.m, self.v, float(self.t), self.X, self.Y, order, s)
        self.jax.block_until_ready(self.params)
        return time.perf_counter() - t0

class SklearnRunner(Runner):
    """scikit-learn on the host; ``partial_fit`` checks its input at every call (its only training API)."""

    def __init__(self, w, dtype):
        from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: PLC0415

        self.name, self.w = "sklearn", w
        cls = MLPClassifier if w.classification else MLPRegressor
        self.model = cls(hidden_layer_sizes=tuple(w.layers[1:-1]), activation="relu", solver="adam",
                         learning_rate_init=1e-3, batch_size=w.batch_size, alpha=0.0, shuffle=True, random_state=0)
        self.X = w.X.astype(dtype)
        self.y = w.y if w.classification else w.y.ravel()
        self.classes = np.arange(w.layers[-1]) if w.classification else None

    def run(self, steps):
        n = steps * self.w.batch_size
        t0 = time.perf_counter()
        if self.classes is not None:
            self.model.partial_fit(self.X[:n], self.y[:n], classes=self.classes)
        else:
            self.model.partial_fit(self.X[:n], self.y[:n])
        return time.perf_counter() - t0
