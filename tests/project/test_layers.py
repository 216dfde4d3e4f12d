"""The layers contract (pyproject.toml, checked by import-linter): each package imports only the packages below
it, every module of the tree belongs to a layer, and the contract catches a planted upward import."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from project.source_graph import ROOT, package_modules

LINT = Path(sys.executable).with_name("lint-imports")
# Modules kept for one release at their old path: they warn and re-export the module that replaced them.
DEPRECATED_ALIASES = {"diffsolve.skip_tuning", "diffsolve.diagnostics", "diffsolve.reflow"}


def _layers() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [name.strip() for layer in layers for name in layer.split("|")]


def _lint(package_parent: Path | None = None) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: install the dev extra (import-linter)")
    env = dict(os.environ)
    if package_parent is not None:
        env["PYTHONPATH"] = str(package_parent)      # this copy of the package shadows the installed one
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_every_module_belongs_to_a_layer():
    layers = _layers()
    stray = [m for m in package_modules() if m not in ("diffsolve", "diffsolve.__main__")
             and m not in DEPRECATED_ALIASES and not any(m == la or m.startswith(la + ".") for la in layers)]
    assert not stray, f"modules outside every layer of the contract: {stray}"


def test_the_layers_contract_is_kept():
    res = _lint()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


@pytest.mark.slow
def test_the_contract_catches_a_planted_upward_import(tmp_path):
    copy = tmp_path / "diffsolve"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "build", "*.egg-info", "site",
                                                               "__pycache__", "diffsolve-bench", "bench-out"))
    loop = copy / "loop.py"
    loop.write_text(loop.read_text() + "\nfrom diffsolve.problems import GaussianProblem  # noqa: E402,F401\n")
    res = _lint(tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout + res.stderr
    assert "diffsolve.loop is not allowed to import diffsolve.problems" in res.stdout, res.stdout
