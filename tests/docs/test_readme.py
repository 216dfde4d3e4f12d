"""README.md's runnable examples run and print what their comments say; CI runs the README's test command."""
import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_first_python_block_runs_and_prints_what_it_says():
    block = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "torch.Size([64, 16]) 10"
    assert lines[1] == "5 9"
    assert float(lines[2]) < 0


def test_builtin_model_block_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    block = next(b for b in blocks if "load_mnist_unet" in b)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    images = scope["images"]
    assert images.shape == (16, 1, 28, 28) and bool(images.isfinite().all())


def test_ci_runs_the_test_command_the_readme_gives():
    assert "make test" in README and "make bench" in README and "make docs" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: setup\n\t.*pytest", makefile, re.M)
    assert re.search(r"^bench: setup\n\t.*diffsolve bench", makefile, re.M)
    assert re.search(r"^docs: setup\n\t.*mkdocs build --strict", makefile, re.M)
    extras = re.search(r"^EXTRAS \?= (.*)$", makefile, re.M).group(1).split(",")
    assert "docs" in extras            # the suite builds the site, so `make test` installs the docs extra


def test_few_step_block_runs_and_prints_what_it_says():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    block = next(b for b in blocks if "load_mnist_consistency" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    assert out.getvalue().split() == ["1", "2", "4"]


def test_readme_is_short_and_points_into_the_site():
    assert len(README.splitlines()) <= 200
    for target in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / target).is_file(), target
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", README))
    assert {"docs/solvers.md", "docs/learned-corrections.md", "docs/api/index.md", "docs/errors.md"} <= linked
    assert linked <= pages
