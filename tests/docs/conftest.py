"""The documentation site, built once per test session in strict mode (as `make docs` builds it)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import diffsolve

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def docs_env() -> dict:
    """The environment of a child process that imports the diffsolve under test (the checkout, not an install)."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    package_parent = str(Path(diffsolve.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def built_site(tmp_path_factory):
    """(site folder, seconds, build log) of one strict build; skipped where the docs extra is not installed."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(out)], capture_output=True, text=True, env=docs_env(), cwd=ROOT)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, f"strict mkdocs build failed:\n{proc.stdout}\n{proc.stderr}"
    return out, seconds, proc.stderr
