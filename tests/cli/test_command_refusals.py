"""Every command refuses bad input in one line naming the flag, before any work: a 'module:attr' that is not a
model or a metric says what it is; output paths are checked first; zero and negative counts are refused."""
from __future__ import annotations

import time

import pytest

from diffsolve.cli.main import main


def _refused(argv, capsys) -> str:
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if "error" in ln]) == 1, err
    assert time.perf_counter() - start < 5.0, "refused only after doing work"
    return err


@pytest.mark.parametrize("argv,text", [
    (["sample", "--model", "os:system", "--steps", "2"], "built-in function (posix.system), not a model"),
    (["sample", "--model", "os:sep", "--steps", "2"], "is a str"),
    (["sample", "--model", "os.path:join", "--steps", "2"], "needs arguments, not a model factory"),
    (["bench", "--model", "os:getcwd", "--nfe", "4", "--solvers", "euler"], "not a model"),
    (["tune", "skip", "--model", "gmm", "--nfe", "5", "--metric", "os:getcwd"], "does not take one samples argument"),
    (["tune", "skip", "--model", "gmm", "--nfe", "5", "--metric", "os:sep"], "not a metric"),
    (["tune", "skip", "--model", "gmm", "--nfe", "5", "--metric", "os:nosuch"], "--metric"),
])
def test_a_module_attr_that_is_not_a_model_or_metric_says_what_it_is(argv, text, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert text in _refused(argv, capsys)


@pytest.mark.parametrize("argv,flag", [
    (["tune", "amed", "--out", "x.txt"], "--out"), (["tune", "skip", "--nfe", "5", "--out", "x.txt"], "--out"),
    (["tune", "amed", "--out", "{file}/x.safetensors"], "--out"),
    (["sample", "--out", "{file}/x", "--steps", "2"], "--out"),
    (["bench", "--out", "{file}/x", "--nfe", "4", "--solvers", "euler"], "--out"),
    (["evaluate", "--grid-out", "{file}/x", "--samples", "4"], "--grid-out"),
    (["evaluate", "--cache", "{file}/x", "--samples", "4"], "--cache"),
    (["train", "--what", "moons", "--out", "{file}/x"], "--out"),
    (["train", "--what", "consistency", "--save-student", "{file}/s.safetensors"], "--save-student"),
    (["reflow", "--model", "moons-1rf", "--out", "{file}/x", "--samples", "4"], "out"),
])
def test_output_paths_are_checked_before_any_work(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("")
    argv = [a.replace("{file}", str(tmp_path / "file")) for a in argv]
    assert flag in _refused(argv, capsys)


@pytest.mark.parametrize("argv,flag", [
    (["tune", "amed", "--epochs", "0"], "--epochs"), (["tune", "amed", "--samples", "0"], "--samples"),
    (["tune", "amed", "--batch-size", "0"], "--batch-size"), (["tune", "gits", "--samples", "-1"], "--samples"),
    (["tune", "skip", "--nfe", "5", "--evaluations", "0"], "--evaluations"),
    (["tune", "skip", "--nfe", "5", "--eval-samples", "0"], "--eval-samples"),
    (["tune", "skip"], "--nfe"), (["sample", "--steps", "0"], "--steps"), (["sample", "--nfe", "-1"], "--nfe"),
    (["sample", "--batch-size", "0", "--steps", "2"], "--batch-size"), (["bench", "--batch-size", "0"], "--batch-size"),
    (["bench", "--repeats", "0"], "--repeats"), (["reflow", "--model", "moons-1rf", "--samples", "0"], "--samples"),
    (["evaluate", "--samples", "0"], "--samples"), (["train", "--what", "unet", "--iters", "0"], "--iters"),
    (["likelihood", "--samples", "0"], "--samples"), (["likelihood", "--probes", "-1"], "--probes"),
])
def test_zero_and_negative_counts_are_refused_naming_the_flag(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert flag in _refused(argv, capsys)


@pytest.mark.parametrize("argv,flag", [
    (["bench", "--preset", "overhead", "--nfe", "4"], "--nfe"),
    (["bench", "--preset", "diffusers", "--ref-rtol", "1e-5"], "--ref-rtol"),
])
def test_a_flag_a_preset_does_not_use_is_refused(argv, flag, capsys):
    assert flag in _refused(argv, capsys)
