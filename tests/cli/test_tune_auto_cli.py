"""`diffsolve tune auto` on the command line: refusals before any work (output place, budget, candidates), and a
tiny run on the built-in mixture that prints the table and writes one file."""
from __future__ import annotations

import time

import pytest

from diffsolve.cli.main import main
from diffsolve.corrections import load_correction


@pytest.mark.parametrize("argv,flag", [
    (["--out", "{tmp}/a-file/auto.safetensors"], "--out"), (["--out", "auto.txt"], "--out"),
    (["--budget", "0"], "--budget"), (["--budget", "soon"], "--budget"), (["--candidates", "gits"], "--candidates"),
    (["--nfe", "0"], "--nfe"), (["--val-samples", "0"], "--val-samples"),
])
def test_bad_options_are_refused_before_any_work(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    start = time.perf_counter()
    code = main(["tune", "auto", "--model", "gmm", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err
    assert time.perf_counter() - start < 5.0 and [p.name for p in tmp_path.iterdir()] == ["a-file"]


@pytest.mark.slow
def test_tune_auto_prints_the_table_and_writes_one_file(tmp_path, capsys):
    out = tmp_path / "auto.safetensors"
    code = main(["tune", "auto", "--model", "gmm", "--nfe", "3", "--budget", "1", "--samples", "8",
                 "--val-samples", "8", "--ref-rtol", "1e-6", "--candidates", "grid,weights", "--out", str(out)])
    text = "".join(capsys.readouterr())
    assert code == 0
    assert "NFE  candidate" in text and "grid[deis]" in text and "weights[deis]" in text
    assert "teacher: reference (dopri5, rtol 1e-06, float64), own RMSE" in text
    assert "model evaluations (teacher" in text
    assert sorted(load_correction(out).entries) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto.safetensors", "auto.safetensors.json"]
