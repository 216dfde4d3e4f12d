"""Correction files: one record inside the safetensors file, covered by its sha256; the sidecar copy must equal
it; every field parsed with its type; anything malformed raises the library's error, never a parser's."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file

from diffsolve.errors import InvalidArgument
from diffsolve.corrections.io import SHIPPED, CoefficientCorrection, GridCorrection, load_correction
from diffsolve.corrections.record import CorruptCorrection, parse_record, sidecar_path

SHIPPED_FILES = sorted(SHIPPED.glob("*.safetensors"))
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=False, width=32)
                    | st.text(max_size=4), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)


def _saved(folder: Path) -> Path:
    corr = CoefficientCorrection({2: (80.0, 1.0, 0.0)}, {2: ((0.1,), (0.2, -0.1))}, "deis", True,
                                 torch.ones(1, 2, 2), "VectorField(model=Tiny:sha256:abc)", {"seed": 0})
    return corr.save(folder / "c.safetensors")


def test_shipped_files_load_with_the_tensors_they_hold():
    assert len(SHIPPED_FILES) == 8
    for path in SHIPPED_FILES:
        corr = load_correction(path)
        raw = load_file(str(path))
        if "afs_mean" in raw:
            assert torch.equal(corr.afs_mean, raw["afs_mean"])
        for k, v in raw.items():
            if k.startswith("predictor."):
                assert torch.equal(corr.predictor.state_dict()[k[len("predictor."):]], v)


@pytest.mark.parametrize("edit", [
    lambda d: d.pop("model_identity"),
    lambda d: d.update(model_identity=None),
    lambda d: d["grids"].update({"2": [80.0, 2.0, 0.0]}),
    lambda d: d.update(afs="no"),
    lambda d: d.update(base="ipndm"),
    lambda d: d.update(extra=1),
])
def test_an_edited_sidecar_is_refused_not_used(tmp_path, edit):
    path = _saved(tmp_path)
    side = json.loads(sidecar_path(path).read_text())
    edit(side)
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(CorruptCorrection, match="differs from the record"):
        load_correction(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["format", "version", "kind", "model_identity", "base", "afs", "grids", "weights",
                            "meta", "nfe"]), value=JSON)
def test_any_field_of_a_record_either_parses_with_its_type_or_raises_our_error(key, value):
    record = {"format": "diffsolve-correction", "version": 1, "kind": "coefficients", "model_identity": "m",
              "base": "deis", "afs": True, "grids": {"2": [80.0, 1.0, 0.0]}, "weights": {"2": [[0.1], [0.2]]},
              "meta": {}, "nfe": {"2": 1}}
    record[key] = value
    try:
        rec = parse_record(record, Path("c.safetensors"))
    except CorruptCorrection as e:
        assert "c.safetensors" in str(e)
        return
    assert isinstance(rec["afs"], bool) and isinstance(rec["base"], str)
    assert rec["identity"] is None or isinstance(rec["identity"], str)
    assert all(isinstance(k, int) and all(isinstance(v, float) for v in g) for k, g in rec["grids"].items())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64) | st.text(max_size=40).map(str.encode))
def test_malformed_sidecars_raise_our_error(tmp_path, data):
    path = _saved(tmp_path)
    good = sidecar_path(path).read_bytes()
    try:
        sidecar_path(path).write_bytes(data)
        with pytest.raises(InvalidArgument):
            load_correction(path)
    finally:
        sidecar_path(path).write_bytes(good)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 400), junk=st.binary(max_size=8))
def test_truncated_or_foreign_files_raise_our_error_even_with_a_matching_checksum(tmp_path, cut, junk):
    import hashlib
    path = _saved(tmp_path)
    blob = path.read_bytes()[:cut] + junk
    side = json.loads(sidecar_path(path).read_text())
    side["sha256"] = hashlib.sha256(blob).hexdigest()        # as if both had been rewritten together
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob)
    sidecar_path(bad).write_text(json.dumps(side))
    with pytest.raises(CorruptCorrection):
        load_correction(bad)


def test_a_file_without_its_checksum_or_with_another_file_is_refused(tmp_path):
    path = _saved(tmp_path)
    side = json.loads(sidecar_path(path).read_text())
    del side["sha256"]
    sidecar_path(path).write_text(json.dumps(side))
    with pytest.raises(CorruptCorrection, match="sha256"):
        load_correction(path)
    other = tmp_path / "other.safetensors"
    shutil.copy(SHIPPED / "gits-ipndm-mnist-unet.safetensors", other)
    shutil.copy(_saved(tmp_path / "x").with_name("c.safetensors.json"), sidecar_path(other))
    with pytest.raises(CorruptCorrection, match="checksum"):
        load_correction(other)


def test_round_trip_keeps_every_field(tmp_path):
    path = _saved(tmp_path)
    corr = load_correction(path)
    assert corr.grids == {2: (80.0, 1.0, 0.0)} and corr.weights == {2: ((0.1,), (0.2, -0.1))}
    assert corr.afs is True and corr.base == "deis" and torch.equal(corr.afs_mean, torch.ones(1, 2, 2))
    grid = GridCorrection("gits", {3: (80.0, 5.0, 1.0, 0.0)}, "ipndm", None, {})
    again = load_correction(grid.save(tmp_path / "g.safetensors"))
    assert again.grids == grid.grids and again.identity is None
