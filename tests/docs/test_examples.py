"""Every example the documentation shows runs: the Python snippets of the pages and the README (and print what
their comments say), the shell commands of their fenced blocks, and the commands they quote inline (each parses;
the cheap ones run with small settings, the scripts answer --help with the flags the page uses).
"""
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from diffsolve.cli import build_parser

from .conftest import docs_env

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
TEXT = {p: p.read_text() for p in SOURCES}
# Snippets that build a diffusers pipeline: over 5 s on the 2-core CPU.
SLOW_SNIPPET = re.compile(r"import diffusers")


def fenced(lang: str) -> list:
    out = []
    for path, text in TEXT.items():
        for i, block in enumerate(re.findall(rf"```{lang}\n(.*?)```", text, re.S)):
            name = f"{path.relative_to(ROOT)}#{lang}{i}"
            marks = [pytest.mark.slow] if lang == "python" and SLOW_SNIPPET.search(block) else []
            out.append(pytest.param(block, id=name, marks=marks))
    return out


def expected_lines(block: str) -> list:
    """What each `print(...)  # output` line says it prints: the comment up to two spaces (an explanation may
    follow), '...' ending a prefix; comments that are prose (start with a lowercase word) are not outputs."""
    out = []
    for m in re.finditer(r"^\s*print\(.*\)\s+# (.*)$", block, re.M):
        text = m.group(1).split("  ")[0].strip()
        prose = text[:1].islower() and not text.startswith("torch.")
        out.append(None if prose else text)
    return out


def matches(printed: str, expected: str) -> bool:
    if "..." in expected:
        return all(printed.split()[i] == tok for i, tok in enumerate(expected.split()) if tok != "...")
    return printed.strip() == expected


@pytest.mark.slow
@pytest.mark.parametrize("block", fenced("python"))
def test_python_snippet_runs_and_prints_what_it_says(block, tmp_path, monkeypatch):
    if "diffusers" in block:
        pytest.importorskip("diffusers")
    if "jax" in block:
        pytest.importorskip("jax")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "snippet", "exec"), {"__name__": "__snippet__"})
    printed = out.getvalue().splitlines()
    wanted = expected_lines(block)
    assert len(printed) == len(wanted), (printed, wanted)
    for got, want in zip(printed, wanted):
        assert want is None or matches(got, want), (got, want)


def run_diffsolve(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffsolve", *args], cwd=cwd, capture_output=True, text=True,
                          env=docs_env(), timeout=300)


def makefile_targets() -> set:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.slow
@pytest.mark.parametrize("block", fenced("bash"))
def test_shell_block_runs(block, tmp_path):
    for line in block.splitlines():
        command, _, comment = line.partition("  #")
        words = shlex.split(command)
        if not words:
            continue
        if words[0] == "make":              # the set-up commands: run by CI themselves; here, the target exists
            assert words[1] in makefile_targets(), line
        elif words[:3] == ["pip", "install", "-e"]:
            extras = re.fullmatch(r"\.\[(.*)\]", words[3]).group(1).split(",")
            declared = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
            assert all(re.search(rf"^{e} = \[", declared, re.M) for e in extras), line
        else:
            assert words[0] == "diffsolve", f"no rule to run: {line}"
            status = re.search(r"exit status (\d+)", comment)
            proc = run_diffsolve(words[1:], tmp_path)
            assert proc.returncode == (int(status.group(1)) if status else 0), (line, proc.stderr[-2000:])
            if status:                      # argparse's usage, then one error line; never a traceback
                assert proc.stderr.strip().splitlines()[-1].startswith("diffsolve") and "Traceback" not in proc.stderr


def inline(prefix: str) -> list:
    found = set()
    for text in TEXT.values():
        for span in re.findall(rf"`({prefix}\s[^`]*|{prefix})`", text):
            found.add(" ".join(span.split()))
    return sorted(found)


def _args_of(words: list) -> list:
    if words[0] == "torchrun":
        words = words[words.index("diffsolve") + 1:]
    elif words[:3] == ["python", "-m", "diffsolve"]:
        words = words[3:]
    else:
        words = words[1:]
    return [str(8) if w == "N" else w for w in words]


def diffsolve_args(command: str) -> list | None:
    """The diffsolve arguments of each command a quoted one stands for: a word with alternatives (`a|b|c`) gives one
    command per alternative; None for a pattern with a placeholder ('...', `<command>`)."""
    if "..." in command or "<" in command:
        return None
    words = shlex.split(command)
    choices = [w.split("|") for w in words]
    width = max(len(c) for c in choices)
    return [_args_of([c[min(i, len(c) - 1)] for c in choices]) for i in range(width)]


INLINE = inline("diffsolve") + inline("python -m diffsolve") + inline("torchrun")


@pytest.mark.parametrize("command", INLINE)
def test_quoted_command_parses(command):
    variants = diffsolve_args(command)
    if variants is None:
        pytest.skip("a pattern with a placeholder ('...', <command>), not a command")
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for args in variants:
        if "--version" in args or "--help" in args:
            continue
        if len(args) == 1 and any(a.dest == "command" or a.required for a in commands[args[0]]._actions
                                  if a.dest != "help"):
            continue                        # the command's name in a sentence ("`diffsolve tune` trains ...")
        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            pytest.fail(f"{' '.join(args)!r} (from {command!r}) does not parse (exit {e.code})")


# The quoted commands that are cheap to run, each with the settings that keep it short.
SHORT = {
    "diffsolve --version": [],
    "diffsolve solvers": [],
    "diffsolve solvers --verbose": [],
    "diffsolve bench": ["--solvers", "euler,dpmpp_2m", "--nfe", "4,8", "--batch-size", "16", "--no-plots",
                        "--no-cache", "--out", "bench-out"],
    "diffsolve sample --model gmm --solver dpmpp_2m --nfe 10 --seeds 0-15 --out DIR": [],
    "diffsolve tune grid --model moons-otcfm --solver ipndm_v --nfe 4 --reference-rtol 1e-7":
        ["--samples", "16", "--epochs", "1", "--batch-size", "8", "--out", "grid.safetensors"],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(SHORT))
def test_quoted_command_runs_with_small_settings(command, tmp_path):
    assert command in INLINE, f"{command!r} is no longer quoted by the docs: update SHORT"
    args = [w.replace("DIR", "out") for w in diffsolve_args(command)[0]] + SHORT[command]
    proc = run_diffsolve(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


SCRIPTS = inline("python scripts/[\\w]+\\.py")


@pytest.mark.slow
@pytest.mark.parametrize("command", SCRIPTS)
def test_quoted_script_takes_the_flags_shown(command):
    words = shlex.split(command)
    script = ROOT / words[1]
    assert script.is_file(), command
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, env=docs_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for flag in (w for w in words[2:] if w.startswith("--")):
        assert flag in proc.stdout, (command, flag)
