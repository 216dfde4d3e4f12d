"""Small command-line surfaces: the deprecated `diffsolve-kernel-bench` (one command line with
scripts/kernel_bench.py) and the sample command's plot flag."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from diffsolve.cli import build_parser, kernel_bench

ROOT = Path(__file__).resolve().parents[2]


def test_console_script_points_at_the_cli_function():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'diffsolve-kernel-bench = "diffsolve.cli.kernel_bench:deprecated_main"' in text
    assert callable(kernel_bench.deprecated_main)


def test_help_works(capsys):
    with pytest.raises(SystemExit) as info:
        kernel_bench.main(["--help"], prog="diffsolve-kernel-bench")
    assert info.value.code == 0 and "--sizes" in capsys.readouterr().out


@pytest.mark.slow
def test_a_small_table_and_a_bad_size(capsys):
    assert kernel_bench.main(["--sizes", "toy", "--terms", "2", "--impls", "eager", "--device", "cpu",
                              "--min-time", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "copy bandwidth" in out and "toy" in out and "eager" in out
    with pytest.raises(SystemExit) as info:
        kernel_bench.main(["--sizes", "huge"])
    assert info.value.code == 2 and "--sizes" in capsys.readouterr().err


@pytest.mark.slow
def test_the_script_runs_its_help():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "kernel_bench.py"), "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--dtypes" in out.stdout


def test_sample_takes_no_plots_and_the_old_no_plot():
    from diffsolve.cli import build_parser
    for flag in ("--no-plots", "--no-plot"):
        assert build_parser().parse_args(["sample", flag]).no_plots is True


def _options(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_has_help_that_states_its_default():
    options = list(_options(build_parser()))
    assert len(options) > 100
    for path, action in options:
        where = f"diffsolve {' '.join(path)} {action.option_strings[0]}"
        assert action.help and action.help != argparse.SUPPRESS, f"{where} has no help text"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "default" in action.help, f"{where}: its help does not state the default {action.default!r}"
