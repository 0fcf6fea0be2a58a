"""16 seeds of the seed's sinc network trained together (MLPStack) vs 16 sequential MLP.fit calls.

    python benchmarks/stack_vs_sequential.py [--seeds 16] [--epochs 3] [--dtype float32]

The sequential baseline is gpunet's own fastest single-model path (the fused Numba step when Numba is
installed). Rounds alternate (sequential, stack) and the median of each is reported, with the machine.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

import gpunet as gn
from gpunet import datasets


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--net", choices=("sinc", "sincos"), default="sinc",
                   help="sinc: the seed's [1, 50 x 9, 1] ReLU net, SGD lr 0.01, batch 20; "
                        "sincos: seed 003's [1, 16, 2] net, SGD lr 0.01, batch 20")
    a = p.parse_args()
    X, y = datasets.sinc() if a.net == "sinc" else datasets.sincos()
    layers = [1] + [50] * 9 + [1] if a.net == "sinc" else [1, 16, 2]
    kw = dict(hidden_activation="relu" if a.net == "sinc" else "tanh", output_activation="linear", dtype=a.dtype,
              device=a.device)
    seeds = list(range(a.seeds))

    def sequential():
        for s in seeds:
            gn.MLP(layers, seed=s, **kw).fit(X, y, epochs=a.epochs, batch_size=20, optimizer=gn.SGD(lr=0.01), verbose=0)

    def stacked():
        gn.MLPStack(layers, seeds=seeds, **kw).fit(X, y, epochs=a.epochs, batch_size=20, optimizer=gn.SGD(lr=0.01))

    sequential(), stacked()  # warm-up: JIT compilation, allocator
    times = {"sequential": [], "stack": []}
    for _ in range(a.rounds):
        for name, fn in (("sequential", sequential), ("stack", stacked)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    steps = a.epochs * int(np.ceil(X.shape[0] / 20))
    result = {"net": a.net, "layers": layers, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "device": a.device,
              "dtype": a.dtype, "models": a.seeds, "epochs": a.epochs, "steps_per_model": steps,
              "sequential_s": med["sequential"], "stack_s": med["stack"], "speedup": med["sequential"] / med["stack"],
              "sequential_us_per_model_step": med["sequential"] / (a.seeds * steps) * 1e6,
              "stack_us_per_step": med["stack"] / steps * 1e6}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
