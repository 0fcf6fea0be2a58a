"""The benchmark report: one row per workload and implementation, JSON and Markdown written atomically."""
from __future__ import annotations

import json
import statistics

from gpunet._files import atomic_write
from gpunet.bench.peers import TorchRunner
from gpunet.bench.workloads import flops_per_sample


#: column order of the tables: gpunet first, the GEMM-only bound last
IMPL_ORDER = ("gpunet", "gpunet-graph", "numpy", "torch", "torch-compile", "jax", "sklearn", "gemm-only")

def _impl_key(name):
    return (IMPL_ORDER.index(name) if name in IMPL_ORDER else len(IMPL_ORDER), name)

def workload_rows(w, steps, runners, rates, errors, ceiling):
    """One row per implementation of workload ``w``: the median samples/s, gpunet's ratio to it and
    its fraction of the GEMM-only bound (the ``gemm-only`` runner's samples/s on the same workload: the
    same GEMM shapes per step); or the error that stopped it."""
    med = {name: statistics.median(r) for name, r in rates.items() if r}
    ours, bound = med.get("gpunet"), med.get("gemm-only")
    extra = {r.name: r for r in runners}
    rows = []
    for name in sorted({*med, *errors}, key=_impl_key):
        row = {"workload": w.name, "layers": w.layers, "batch_size": w.batch_size, "impl": name, "steps": steps}
        if name not in med:
            rows.append({**row, "samples_per_s": None, "error": errors[name]})
            continue
        m = med[name]
        row.update(samples_per_s=m, runs=rates[name], us_per_step=1e6 * w.batch_size / m,
                   gpunet_ratio=None if ours is None else ours / m,
                   fraction_of_gemm_bound=None if bound is None else m / bound)
        if name == "gpunet":
            row["fraction_of_gemm_ceiling"] = m * flops_per_sample(w.layers) / (ceiling * 1e9)
        r = extra.get(name)
        if r is not None:
            if r.compile_seconds is not None:
                row["compile_seconds"] = r.compile_seconds
            if isinstance(r, TorchRunner):
                row["torch_adam"] = r.fused
            row.update(getattr(r, "extra", {}))
        rows.append(row)
    return rows

def write_report(report, out, tag):
    """``bench-<tag>.json`` and ``.md``, each replaced atomically (a reader never sees half a file)."""

    with atomic_write(out / f"bench-{tag}.json", "w") as f:
        f.write(json.dumps(report, indent=2, default=float) + "\n")
    with atomic_write(out / f"bench-{tag}.md", "w") as f:
        f.write(markdown(report) + "\n")

def format_rows(rows):
    lines = []
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['workload']:>12} {r['impl']:>14}: error ({r['error']})")
            continue
        ratio = ("" if r["impl"] == "gpunet" or r["gpunet_ratio"] is None
                 else f"  gpunet/{r['impl']} = {r['gpunet_ratio']:.2f}x")
        bound = "" if r["fraction_of_gemm_bound"] is None else f", {r['fraction_of_gemm_bound']:.0%} of GEMM-only"
        lines.append(f"{r['workload']:>12} {r['impl']:>14}: {r['samples_per_s']:>10.0f} samples/s "
                     f"({r['us_per_step']:.0f} us/step{bound}){ratio}")
    return "\n".join(lines)

def _percent(value):
    return "—" if value is None else f"{value:.0%}"

def markdown(report):
    m = report["machine"]
    tf = m.get("tf32") or {}
    mode = "full float32" if tf.get("full_fp32", True) else "TF32"
    head = (f"Device: {report['device']} ({m.get('gpu') or m.get('cpu')}, {m.get('cpu_count')} cores, "
            f"{report['threads']} threads), {report['dtype']} ({mode} matmuls), GEMM ceiling "
            f"{report['gemm_gflops']:.0f} GFLOP/s; numpy {m['numpy']}, torch {m.get('torch')}, jax {m.get('jax')}, "
            f"scikit-learn {m.get('sklearn')}, numba {m.get('numba')}. {report['protocol']}.")
    if not report.get("complete", True):
        head += " Partial: the run had not finished when this was written."
    results = report["results"]
    if not results:
        return head + "\n\nNo workload has finished yet."
    impls = sorted({r["impl"] for r in results}, key=_impl_key)
    peers = [i for i in impls if i not in ("gpunet", "gemm-only")]  # gemm-only has its own column
    lines = [head, "", "| workload | " + " | ".join(f"{i} (samples/s)" for i in impls)
             + "".join(f" | gpunet / {i}" for i in peers)
             + " | gpunet % of GEMM-only bound | gpunet % of GEMM ceiling |",
             "|---" * (len(impls) + len(peers) + 3) + "|"]
    for wl in dict.fromkeys(r["workload"] for r in results):
        rs = {r["impl"]: r for r in results if r["workload"] == wl}
        ours = rs.get("gpunet", {})

        def cell(i, rs=rs):
            r = rs.get(i)
            return "—" if r is None else "error" if r.get("error") else f"{r['samples_per_s']:,.0f}"

        def ratio(i, rs=rs, ours=ours):
            r = rs.get(i)
            if r is None or not ours:
                return "—"
            return "error" if r.get("error") or ours.get("error") else f"{r['gpunet_ratio']:.2f}x"

        fracs = ["error", "error"] if ours.get("error") else [_percent(ours.get("fraction_of_gemm_bound")),
                                                             _percent(ours.get("fraction_of_gemm_ceiling"))]
        lines.append(f"| {wl} | " + " | ".join(cell(i) for i in impls)
                     + "".join(f" | {ratio(i)}" for i in peers) + " | " + " | ".join(fracs) + " |")
    failed = [r for r in results if r.get("error")]
    if failed:
        # the first line of each message (XLA's run long); the JSON has them whole
        lines += ["", "Errors: " + "; ".join(f"{r['workload']} {r['impl']}: {r['error'].splitlines()[0][:300]}"
                                             for r in failed) + "."]
    return "\n".join(lines)
