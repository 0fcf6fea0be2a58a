"""Reading a large CSV: gpunet's reader (gpunet.tabular.read, pyarrow's multi-threaded CSV reader) against
pandas.read_csv. Each reader runs in a fresh process; reported: wall time of the read and the peak resident memory
the read added (ru_maxrss after minus the resident size before it, so imports are not counted).

    python benchmarks/csv_read.py [--mb 177] [--repeat 3] [--out benchmarks/results/csv_read.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
path, which = sys.argv[1], sys.argv[2]
import numpy as np
if which == "pandas":
    import pandas as pd
    read = lambda: pd.read_csv(path)
else:
    import pyarrow.csv  # noqa: F401  (imported before the baseline, as pandas is)
    from gpunet import tabular
    read = lambda: tabular.read(path, text_columns=[-1])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
t0 = time.perf_counter()
table = read()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_added_bytes": peak - before}))
"""


def write_csv(path, mb, seed=0):
    """~``mb`` MB: 20 float columns (6 significant digits) and a text label, as a wide numeric table."""
    rng = np.random.default_rng(seed)
    names = [f"f{j}" for j in range(20)] + ["label"]
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        while f.tell() < mb * 1e6:
            X = rng.normal(size=(50_000, 20)) * 100
            labels = rng.choice(["alpha", "beta", "gamma"], 50_000)
            lines = [",".join(f"{v:.6g}" for v in row) + "," + lab for row, lab in zip(X, labels)]
            f.write("\n".join(lines) + "\n")
    return path


def measure(path, which, repeat):
    runs = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), which], capture_output=True, text=True, env=env,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds": best["seconds"], "seconds_all": [r["seconds"] for r in runs],
            "peak_added_mb": max(r["peak_added_bytes"] for r in runs) / 1e6}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=177.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "csv_read.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / "big.csv", args.mb)
        size = path.stat().st_size
        with open(path) as f:
            rows = sum(1 for _ in f) - 1
        result = {"file_mb": size / 1e6, "rows": rows, "columns": 21, "float64_matrix_mb": rows * 20 * 8 / 1e6,
                  "cpus": os.cpu_count()}
        os.sync()  # the new file's write-back would otherwise run beside the first reads
        runs = {"pandas": [], "gpunet": []}
        for _ in range(args.repeat):  # alternating, so a busy moment slows both readers, not one
            for which in runs:
                runs[which].append(measure(path, which, 1))
        for which, rs in runs.items():
            best = min(rs, key=lambda r: r["seconds"])
            result[which] = r = {"seconds": best["seconds"], "seconds_all": [x["seconds"] for x in rs],
                                 "peak_added_mb": max(x["peak_added_mb"] for x in rs)}
            print(f"{which:>7}: {r['seconds']:.2f} s (best of {args.repeat}), peak memory added "
                  f"{r['peak_added_mb']:.0f} MB = {r['peak_added_mb'] / (size / 1e6):.2f} x the file")
    result["speedup_vs_pandas"] = result["pandas"]["seconds"] / result["gpunet"]["seconds"]
    print(f"file {result['file_mb']:.0f} MB, {rows:,} rows; gpunet is {result['speedup_vs_pandas']:.2f}x pandas' speed")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
