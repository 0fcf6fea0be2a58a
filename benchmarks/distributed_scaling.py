"""Data-parallel scaling on one machine: the same MNIST training with 1 rank and with N ranks.

    python benchmarks/distributed_scaling.py [--ranks 2] [--samples 20000] [--batch-size 512]

Each configuration runs under ``mpirun``; 1 rank gets every core's BLAS threads, N ranks get
``cores / N`` each, so both use the whole machine. Reported: seconds per epoch (median of the timed
epochs after one warm-up epoch), speed-up, and the all-reduce's share of the step time on rank 0.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

WORKER = r'''
import json, sys, time
import numpy as np
import gpunet as gn, gpunet.distributed as dist
rank, size = dist.init()
samples, batch, epochs = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
(X, y), _ = gn.datasets.load_mnist()
X, y = X[:samples], y[:samples]
net = gn.MLP([784, 512, 256, 10], output_activation="softmax", seed=0)
net.fit(X, y, epochs=1, batch_size=batch, verbose=0, distributed=True)     # warm-up
times, red = [], 0.0
for _ in range(epochs):
    h = net.fit(X, y, epochs=1, batch_size=batch, verbose=0, distributed=True)
    times.append(h.seconds[-1]); red += h.distributed["allreduce_seconds"]
if rank == 0:
    print(json.dumps({"ranks": size, "epoch_s": float(np.median(times)), "allreduce_share": red / sum(times),
                      "transport": h.distributed["transport"]}))
'''


def run(n, threads, args, script):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [shutil.which("mpirun"), "-n", str(n), "--oversubscribe", "--bind-to", "none", sys.executable, script,
           str(args.samples), str(args.batch_size), str(args.epochs)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(WORKER)
    try:
        one = run(1, cores, args, f.name)
        many = run(args.ranks, max(1, cores // args.ranks), args, f.name)
    finally:
        os.unlink(f.name)
    print(json.dumps({"machine": f"{platform.machine()}, {cores} cores", "samples": args.samples,
                      "batch_size": args.batch_size, "one_rank": one, "n_ranks": many,
                      "speedup": one["epoch_s"] / many["epoch_s"]}, indent=1))


if __name__ == "__main__":
    main()
