"""The README's two commands in order: a regular install, a training run (which compiles the fused CPU
step), then the editable dev install. Numba's cache must not land in the installed package (it used to,
survived the reinstall and shadowed the package: ``cannot import name '__version__'``)."""
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from helpers import ROOT

pytest.importorskip("numba")
pytestmark = pytest.mark.slow


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_install_train_then_editable_install(tmp_path):
    env_dir = tmp_path / "venv"
    try:
        venv.create(env_dir, system_site_packages=True, with_pip=False)  # pip, setuptools from the system
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot create a virtualenv here: {exc}")
    py = str(env_dir / "bin" / "python")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH="")
    env.pop("NUMBA_CACHE_DIR", None)
    pip = [py, "-m", "pip", "install", "-q", "--no-deps"]  # build isolation, as the README commands
    run(pip + [str(ROOT)], env=env, cwd=tmp_path)
    site = Path(run([py, "-c", "import gpunet, os; print(os.path.dirname(gpunet.__file__))"], env=env, cwd=tmp_path).strip())
    assert site != ROOT / "gpunet" and "venv" in str(site)
    code = ("import numpy as np, gpunet as gn, gpunet.ops.numba_kernels as ck; assert ck.mlp_step is not None; "
            "gn.MLP([1, 8, 1], 'tanh', seed=0).fit(np.ones((40, 1)), np.ones(40), epochs=1, verbose=0); print(ck.CACHE_DIR)")
    cache = run([py, "-c", code], env=env, cwd=tmp_path).strip()
    assert cache.startswith(str(tmp_path / "cache"))
    assert list(Path(cache).rglob("*.nbi")), "the fused step's compiled code is cached in the user cache"
    assert not [p for p in site.rglob("*") if p.suffix in (".nbi", ".nbc")], "Numba cache inside the package"
    run(pip + ["-e", str(ROOT)], env=env, cwd=tmp_path)
    out = run([py, "-c", "import gpunet; print(gpunet.__version__, gpunet.__file__)"], env=env, cwd=tmp_path)
    assert str(ROOT / "gpunet") in out
    run([str(env_dir / "bin" / "gpunet"), "--help"], env=env, cwd=tmp_path)


def test_unwritable_cache_still_trains(tmp_path):
    """A read-only home (a container running as nobody): no cache, the fused step still compiles and runs."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    env = dict(os.environ, XDG_CACHE_HOME=str(ro / "cache"), PYTHONPATH=str(ROOT))
    env.pop("NUMBA_CACHE_DIR", None)
    code = ("import numpy as np, gpunet as gn, gpunet.ops.numba_kernels as ck; "
            "h = gn.MLP([1, 8, 1], 'tanh', seed=0).fit(np.ones((40, 1)), np.ones(40), epochs=1, verbose=0); "
            "print(ck.CACHE_DIR, ck.mlp_step is not None)")
    if os.geteuid() == 0:  # root writes anywhere: simulate the unwritable folder with a file in its place
        (ro / "cache").write_text("not a folder")
    out = run([sys.executable, "-c", code], env=env, cwd=tmp_path).split()
    assert out == ["None", "True"]


@pytest.mark.parametrize("when", ["at import", "after import"])
def test_an_unwritable_numba_cache_dir_still_trains_and_says_so_once(tmp_path, when):
    """$NUMBA_CACHE_DIR cannot be written (at import: a path under a file, so even root cannot; after import:
    the folder replaced by a file), and the package folder is read-only (its __pycache__ a file): training
    still compiles the fused step and optimizer and runs, one warning says the kernels are not cached, and
    nothing is written into the package."""
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "gpunet", pkg / "gpunet", ignore=shutil.ignore_patterns("__pycache__", "data"))
    for folder in [pkg / "gpunet", *(p for p in (pkg / "gpunet").rglob("*") if p.is_dir())]:
        (folder / "__pycache__").write_text("a read-only package")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cache = blocker / "numba" if when == "at import" else tmp_path / "numba"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), XDG_CACHE_HOME=str(blocker), HOME=str(blocker),
               PYTHONPATH=str(pkg), PYTHONDONTWRITEBYTECODE="1")
    replace = ("import shutil; shutil.rmtree(ck.CACHE_DIR); open(ck.CACHE_DIR, 'w').write('x'); "
               if when == "after import" else "")
    code = ("import numpy as np, gpunet as gn, gpunet.ops.numba_kernels as ck; " + replace +
            "X = np.linspace(-1, 1, 40).reshape(-1, 1); "
            "h = gn.MLP([1, 8, 1], 'tanh', seed=0).fit(X, X, epochs=2, verbose=0); "
            "h2 = gn.MLP([1, 8, 1], 'tanh', seed=0).fit(X, X, epochs=1, optimizer=gn.SGD(momentum=0.9), verbose=0); "
            "print(ck.CACHE_DIR, h.fast_paths['fused_step']['live'], h.fast_paths['fused_optimizer']['live'], "
            "np.isfinite(h.history['loss']).all())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["None", "True", "True", "True"], proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Numba cache folder" in lines[0] and str(cache) in lines[0], proc.stderr
    assert "without a cache" in lines[0] and "fused CPU step unavailable" not in proc.stderr
    assert not [p for p in pkg.rglob("*") if p.suffix in (".nbi", ".nbc")], "Numba cache inside the package"
