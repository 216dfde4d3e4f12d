"""`diffsolve tune --conditions/--guidance-scale/--uncond`: bad values fail in one line naming the flag, before any
training; a callable draws exactly --samples conditions and the guided field is what gets tuned."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from diffsolve.cli import main
from diffsolve.cli.model_options import ModelOptions, load_conditions
from diffsolve.errors import InvalidArgument
from diffsolve.models.cond_mixture import draw_labels

DRAW = "diffsolve.models.cond_mixture:draw_labels"
NULL = "diffsolve.models.cond_mixture:NULL"


def _fails(capsys, *args: str) -> str:
    assert main(["tune", "grid", "--model", "cond-mixture", "--nfe", "3", "--samples", "4", "--epochs", "1",
                 *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("args, flag", [
    (("--conditions", "missing.safetensors"), "--conditions"),
    (("--conditions", "diffsolve.models.cond_mixture:nothing"), "--conditions"),
    (("--conditions", DRAW, "--guidance-scale", "two", "--uncond", NULL), "--guidance-scale"),
    (("--conditions", DRAW, "--guidance-scale", "nan", "--uncond", NULL), "--guidance-scale"),
    (("--conditions", DRAW, "--guidance-scale", "-1", "--uncond", NULL), "--guidance-scale"),
    (("--conditions", DRAW, "--guidance-scale", "2"), "--uncond"),
    (("--conditions", DRAW, "--uncond", NULL), "--uncond"),
    (("--guidance-scale", "2", "--uncond", NULL), "--conditions"),
    (("--conditions", DRAW, "--guidance-scale", "2", "--uncond", "diffsolve.models.cond_mixture:CLASSES"),
     "--uncond"),
])
def test_bad_conditioning_is_refused_naming_the_flag(capsys, monkeypatch, args, flag):
    monkeypatch.setattr("diffsolve.cli.model_options.resolve_model", lambda *a: pytest.fail("model built first"))
    assert flag in _fails(capsys, *args)


def test_a_file_must_give_one_condition_per_training_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("diffsolve.cli.model_options.resolve_model", lambda *a: pytest.fail("model built first"))
    conds = tmp_path / "c.safetensors"
    save_file({"class_labels": torch.arange(3)}, str(conds))
    err = _fails(capsys, "--conditions", str(conds))
    assert "--conditions" in err and "--samples is 4" in err
    save_file({"class_labels": torch.tensor(3)}, str(conds))          # no sample dimension
    assert "leading sample dimension" in _fails(capsys, "--conditions", str(conds))


def test_a_function_draws_exactly_n_seeded_conditions():
    a = load_conditions(DRAW, 6, seed=3)
    assert a["class_labels"].shape == (6,)
    torch.testing.assert_close(a["class_labels"], draw_labels(6, torch.Generator().manual_seed(3))["class_labels"])
    with pytest.raises(InvalidArgument, match="--samples"):
        load_conditions("mine:draw", 6, seed=0, importer=lambda spec, flag: _draws_too_few)
    with pytest.raises(InvalidArgument, match="--guidance-scale"):
        ModelOptions(conditions=DRAW, guidance_scale=True, uncond=NULL)


def _draws_too_few(n, generator):
    return {"class_labels": torch.zeros(n - 1, dtype=torch.int64)}


@pytest.mark.slow
def test_tune_grid_tunes_the_guided_conditioned_field(tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    assert main(["tune", "grid", "--model", "cond-mixture", "--conditions", DRAW, "--guidance-scale", "2",
                 "--uncond", NULL, "--nfe", "6", "--samples", "8", "--batch-size", "4", "--epochs", "1",
                 "--teacher", "fine", "--out", str(out)]) == 0
    record = json.loads((tmp_path / "g.safetensors.json").read_text())
    assert record["model_identity"].startswith("Conditioned(keys=['class_labels'], ClassifierFreeGuidance(scale=2.0")
    assert record["meta"]["n"] == 8
