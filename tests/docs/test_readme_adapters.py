"""The README's adapter snippets run as written and print what their comments say (random weights, no downloads)."""
import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = (ROOT / "README.md").read_text().split("## Adapters\n", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)


def expected(block: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+# (.*)$", block, re.M)]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_adapter_snippet_runs(index):
    block = BLOCKS[index]
    if "diffusers" in block:
        pytest.importorskip("diffusers")
    if "jax" in block:
        pytest.importorskip("jax")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, f"README.md adapters block {index}", "exec"), {})
    assert out.getvalue().splitlines() == expected(block)


def test_there_are_four_snippets():
    assert len(BLOCKS) == 4
