"""The layer contract: core modules (schedules, predictions, field, grids, solvers, kernels, loop, sampler) never
import adapters, bench, the built-in models or the command line. import-linter checks it from pyproject.toml."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path | None = None) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: install the dev extra (import-linter)")
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)      # this copy of the package shadows the installed one
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_core_imports_no_adapter_bench_or_models():
    res = _lint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_the_contract_catches_a_core_module_importing_the_bench(tmp_path):
    copy = tmp_path / "diffsolve"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "build", "*.egg-info",
                                                               "__pycache__", "diffsolve-bench", "bench-out"))
    loop = copy / "loop.py"
    loop.write_text(loop.read_text() + "\n\ndef _planted():\n    from .bench import problems  # noqa: F401\n")
    res = _lint(tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout + res.stderr
    assert "diffsolve.loop -> diffsolve.bench" in res.stdout
