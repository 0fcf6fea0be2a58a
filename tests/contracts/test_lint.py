"""The linter configured in pyproject.toml ([tool.ruff]) passes on the package, the tests, the scripts and the
benchmarks: CI runs it as part of the test suite (ruff is in the dev extra)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_passes():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.importorskip("ruff")
        cmd = [sys.executable, "-m", "ruff"]
    else:
        cmd = [ruff]
    targets = ["gpunet", "tests", "benchmarks", "scripts/gpu-check"]
    proc = subprocess.run(cmd + ["check", "--output-format", "concise", *targets], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
