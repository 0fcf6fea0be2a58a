import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from gpunet import backend, datasets

ROOT = Path(__file__).resolve().parents[1]


def gpunet_cli(*args, timeout=240, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("GPUNET_DEVICE", None)
    env.pop("GPUNET_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "gpunet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def write_small_mnist(folder, n_train=600, n_test=200, seed=0):
    """Synthetic digits in the real IDX format: class k lights up a k-dependent block of pixels."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.uniform(0, 60, (n, 28, 28))).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = 2 + 2 * k, 4 + (k % 5) * 4
            images[i, r:r + 6, c:c + 6] = 250
        datasets.write_idx_gz(folder / f"{split}-images-idx3-ubyte.gz", images)
        datasets.write_idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def assert_png(path, min_bytes=2000):
    path = Path(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.01, f"{path} is blank"


def assert_graph_training_equals_eager(device, layers, make_opt, X, y, steps, rtol, atol, schedule=True,
                                      require_replay=False):
    """Train 3 epochs of batch 16 eagerly and with CUDA graphs on ``device``; the step counts, loss
    histories and weights must agree. ``schedule``: halve lr every epoch (the graph is recaptured);
    without it one graph serves all epochs, across the eager partial batches. No replay is an expected
    failure (never a pass), or a failure with ``require_replay``."""
    import gpunet as gn

    runs = {}
    for graph in (False, True):
        net = gn.MLP(layers, "relu", "softmax", device=device, dtype="float64", seed=3)
        callbacks = [gn.StepDecay(1, gamma=0.5)] if schedule else []
        hist = net.fit(X, y, epochs=3, batch_size=16, optimizer=make_opt(), callbacks=callbacks,
                       verbose=0, cuda_graph=graph)
        runs[graph] = (net, hist)
    (eager, he), (graphed, hg) = runs[False], runs[True]
    report = hg.cuda_graph
    if report["replays"] == 0:  # never a silent pass: eager equals eager
        import pytest

        assert not require_replay, f"no CUDA graph was replayed: {report['fallback']}"
        pytest.xfail(f"no CUDA graph was replayed: {report['fallback']}")
    assert he.cuda_graph == {"requested": False, "replays": 0, "captures": 0, "fallback": None}
    assert eager.optimizer.step_count == graphed.optimizer.step_count == steps
    np.testing.assert_allclose(hg.history["loss"], he.history["loss"], rtol=rtol)
    for a, b in zip(eager.get_weights(), graphed.get_weights()):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


def strict_backend() :
    """Test-only backend on ``array_api_strict``'s non-default device.

    That namespace refuses what CuPy refuses (mixing with NumPy arrays or scalars, ``np.asarray`` on
    device data, NumPy-only methods), so code that runs under it has no hidden host round-trips.
    """
    import array_api_strict as xps  # noqa: PLC0415  (test dependency)

    return backend.Backend("array_api_strict", xps, "generic", device=xps.Device("device1"))
