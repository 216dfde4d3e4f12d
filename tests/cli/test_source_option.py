"""`--source module:attr` on `diffsolve sample` and `diffsolve tune`: the starts come from the named source (the
samples equal the library's from the same seeds; the tuned file is keyed to the field with that source), and a
path that names no source is refused in one line naming --source."""
from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from diffsolve import Sampler
from diffsolve.cli.main import main
from diffsolve.corrections.io import IdentityMismatch, load_correction
from diffsolve.field import with_source
from diffsolve.models.toy2d import load_moons_flow, sample_eight_gaussians

MODEL = "diffsolve.models.toy2d:load_moons_flow"            # a flow from N(0, I), given another source here
SOURCE = "diffsolve.models.toy2d:sample_eight_gaussians"


def test_sample_draws_from_the_source(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "--model", MODEL, "--source", SOURCE, "--solver", "euler", "--steps", "2",
                 "--seeds", "0-3", "--out", str(out), "--no-plots"]) == 0
    with safe_open(str(out / "samples.safetensors"), framework="pt") as f:
        samples, meta = f.get_tensor("samples"), json.loads(f.metadata()["diffsolve"])
    field = with_source(load_moons_flow(), sample_eight_gaussians)
    want = Sampler(field, "euler", progress=False).run(steps=2, seed=[0, 1, 2, 3]).samples
    assert samples.equal(want)
    assert not samples.equal(Sampler(load_moons_flow(), "euler", progress=False).run(steps=2, seed=[0, 1, 2, 3]).samples)
    assert meta["source"] == "callable:diffsolve.models.toy2d.sample_eight_gaussians"


@pytest.mark.slow
def test_tune_trains_for_the_field_with_the_source(tmp_path, capsys):
    path = tmp_path / "grid.safetensors"
    assert main(["tune", "grid", "--model", MODEL, "--source", SOURCE, "--nfe", "4", "--samples", "16",
                 "--epochs", "1", "--ref-rtol", "1e-5", "--out", str(path)]) == 0
    load_correction(path, with_source(load_moons_flow(), sample_eight_gaussians))     # its field: accepted
    with pytest.raises(IdentityMismatch):
        load_correction(path, Sampler(load_moons_flow(), progress=False).field)        # N(0, I) starts: another field


@pytest.mark.parametrize("command", [["tune", "grid", "--nfe", "4"], ["sample", "--steps", "2", "--no-plots"]])
@pytest.mark.parametrize("source,text", [("os:sep", "must be None (standard normal)"),
                                         ("nosuch_module_xyz:thing", "cannot import"),
                                         ("diffsolve.models.toy2d:eight_gaussians", "failed to draw")])
def test_a_path_that_names_no_source_is_refused(command, source, text, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main([*command, "--model", MODEL, "--source", source])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "--source" in err and text in err and "Traceback" not in err, err
