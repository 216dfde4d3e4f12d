"""`diffsolve tune`: bad values and unusable output files fail first, in one line naming the flag, with exit status
2; the settings dataclasses refuse the same values from Python; subcommands come from the tuner registry."""
from __future__ import annotations

import pytest

from diffsolve.cli import main
from diffsolve.cli import tune as cli_tune
from diffsolve.corrections.skip_tuner import SkipTuneSettings
from diffsolve.corrections.tuners import AMEDTuneSettings, GridTuneSettings, WeightsTuneSettings
from diffsolve.corrections.tuning import TUNERS
from diffsolve.errors import InvalidArgument

BAD = [
    (["grid", "--epochs", "0"], "--epochs"),
    (["amed", "--samples", "0"], "--samples"),
    (["gits", "--n", "0"], "--samples"),
    (["weights", "--batch-size", "0"], "--batch-size"),
    (["grid", "--lr", "-1"], "--lr"),
    (["amed", "--lr", "nan"], "--lr"),
    (["weights", "--weight-lr", "0"], "--weight-lr"),
    (["amed", "--grid-epochs", "0"], "--grid-epochs"),
    (["grid", "--nfe", "0,3"], "--nfe"),
    (["grid", "--seed", "-1"], "--seed"),
    (["grid", "--threads", "0"], "--threads"),
    (["grid", "--ref-rtol", "0"], "--ref-rtol"),
    (["grid", "--teacher", "exact"], "--teacher"),
    (["amed", "--loss", "l1"], "--loss"),
    (["skip", "--eval-n", "0"], "--eval-samples"),
    (["skip", "--evaluations", "0"], "--evaluations"),
    (["skip", "--rho-range", "0.5"], "--rho-range"),
    (["grid", "--out", "grid.pt"], "--out"),
    (["skip", "--out", "skip.safetensors"], "--out"),
]


@pytest.mark.parametrize("argv,flag", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_fail_before_any_work(monkeypatch, capsys, argv, flag):
    monkeypatch.setattr(cli_tune, "build_model", lambda *a: pytest.fail("the model was built before the checks"))
    assert main(["tune", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(err) and "error:" in err[-1] and flag in err[-1], err


def test_unwritable_out_fails_before_any_work(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setattr(cli_tune, "build_model", lambda *a: pytest.fail("the model was built before the checks"))
    assert main(["tune", "grid", "--out", str(blocker / "g.safetensors")]) == 2
    assert "--out" in capsys.readouterr().err


def test_settings_refuse_what_the_command_line_refuses():
    for cls, bad in ((GridTuneSettings, {"epochs": 0}), (GridTuneSettings, {"batch_size": 0}),
                     (AMEDTuneSettings, {"samples": 0}), (AMEDTuneSettings, {"lr": float("nan")}),
                     (WeightsTuneSettings, {"lr": -1.0}), (SkipTuneSettings, {"out": "x.safetensors"}),
                     (GridTuneSettings, {"starts": ("karras", "nope")})):
        with pytest.raises(InvalidArgument):
            cls(**bad)
    assert GridTuneSettings(epochs=1).epochs == 1          # a given value is kept, never replaced by a default


def test_subcommands_come_from_the_registry(capsys):
    assert {"amed", "gits", "grid", "weights", "skip"} <= set(TUNERS)
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in TUNERS)
