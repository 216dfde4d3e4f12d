"""Sampler(model, correction=...): each kind of correction runs the solver and grid it names, for the budgets it
holds only; a tune-auto file picks its entry per NFE. Corrections are made by hand (no training): what is tested is
that the file's run equals the explicit solver call, sample for sample."""
from __future__ import annotations

import pytest
import torch

from diffsolve import InvalidArgument, Sampler
from diffsolve.corrections import (AMEDCorrection, AMEDPredictor, AutoCorrection, CoefficientCorrection,
                                   GridCorrection, IdentityMismatch, SolverChoice, load_correction)
from diffsolve.corrections.record import CorruptCorrection, sidecar_path
from diffsolve.field import as_field

SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def kinds(gmm):
    field = as_field(gmm)
    ident = field.correction_identity()
    t4 = tuple(float(v) for v in Sampler(gmm, "deis", grid="karras").times(4))
    t3 = tuple(float(v) for v in Sampler(gmm, "deis", grid="logsnr_uniform").times(3))
    torch.manual_seed(0)
    return {
        "grid": (GridCorrection("learned", {4: t4}, "deis", ident), ("deis", {"grid": list(t4)}), 4),
        "coefficients": (CoefficientCorrection({4: t4}, {4: tuple((0.02 * i, -0.01, 0.0) for i in range(4))},
                                               "deis", False, None, ident, {"max_order": 3}), None, 4),
        "amed": (AMEDCorrection(AMEDPredictor(features="none"), "ipndm", False, None, {3: t3}, ident), None, 6),
        "solver": (SolverChoice("dpmpp_2m", "karras", 5), ("dpmpp_2m", {"grid": "karras"}), 5),
    }


@pytest.mark.parametrize("kind", ["grid", "coefficients", "amed", "solver"])
def test_each_kind_runs_the_solver_it_names(gmm, kinds, kind, tmp_path):
    corr, explicit, nfe = kinds[kind]
    name, options = explicit if explicit is not None else corr.solver_settings()
    want = Sampler(gmm, name, progress=False, **options).run(nfe=nfe, seed=SEEDS)
    got = Sampler(gmm, correction=corr, progress=False).run(nfe=nfe, seed=SEEDS)
    assert got.nfe == want.nfe == nfe
    assert torch.equal(got.samples, want.samples)
    if kind != "solver":            # from the file, too (checked against the field's identity on load)
        path = corr.save(tmp_path / f"{kind}.safetensors")
        again = Sampler(gmm, correction=path, progress=False).run(nfe=nfe, seed=SEEDS)
        assert torch.equal(again.samples, want.samples)


def test_a_budget_the_file_does_not_hold_is_refused_naming_those_it_holds(gmm, kinds):
    s = Sampler(gmm, correction=kinds["grid"][0], progress=False)
    with pytest.raises(InvalidArgument, match=r"tuned for NFE \[4\] \(steps \[4\]\)"):
        s.run(nfe=5, seed=1)
    with pytest.raises(InvalidArgument, match=r"NFE \[4\]"):
        s.run(steps=3, seed=1)
    with pytest.raises(InvalidArgument, match="steps= or nfe="):
        s.run(seed=1)
    assert s.run(steps=4, seed=SEEDS).nfe == 4


def test_a_solver_grid_or_option_that_disagrees_with_the_file_is_refused(gmm, kinds):
    corr = kinds["grid"][0]
    with pytest.raises(InvalidArgument, match="solver='euler' disagrees with correction="):
        Sampler(gmm, "euler", correction=corr)
    with pytest.raises(InvalidArgument, match="fixes the grid"):
        Sampler(gmm, correction=corr, grid="karras")
    with pytest.raises(InvalidArgument, match="disagree with correction="):
        Sampler(gmm, correction=kinds["coefficients"][0], base="ipndm")
    assert Sampler(gmm, "deis", correction=corr).solver.name == "deis"      # agreeing is fine
    with pytest.raises(InvalidArgument, match="correction=int"):
        Sampler(gmm, correction=3)


def test_a_file_for_another_model_is_refused(gmm, kinds, tmp_path):
    corr = kinds["grid"][0]
    other = GridCorrection("learned", corr.grids, "deis", "VectorField(model=another)")
    with pytest.raises(IdentityMismatch):
        Sampler(gmm, correction=other.save(tmp_path / "other.safetensors"))


def test_a_tune_auto_file_picks_the_entry_of_each_nfe(gmm, kinds, tmp_path):
    grid, coef = kinds["grid"][0], kinds["coefficients"][0]
    auto = AutoCorrection({4: grid, 5: SolverChoice("dpmpp_2m", "karras", 5)}, grid.identity, {"note": "test"})
    path = auto.save(tmp_path / "auto.safetensors")
    back = load_correction(path, as_field(gmm))
    assert isinstance(back.entry(4), GridCorrection) and back.entry(4).grids == grid.grids
    assert back.entry(5).solver_settings() == ("dpmpp_2m", {"grid": "karras"})
    s = Sampler(gmm, correction=path, progress=False)
    for nfe, (name, opts) in ((4, ("deis", {"grid": list(grid.grids[4])})), (5, ("dpmpp_2m", {"grid": "karras"}))):
        want = Sampler(gmm, name, progress=False, **opts).run(nfe=nfe, seed=SEEDS).samples
        assert torch.equal(s.run(nfe=nfe, seed=SEEDS).samples, want)
    with pytest.raises(InvalidArgument, match=r"tuned for NFE \[4, 5\]"):
        s.run(nfe=3, seed=1)
    with pytest.raises(InvalidArgument, match="each NFE with its own solver"):
        back.solver_settings()
    # entries with tensors keep them apart ("nfe<n>." prefixes) and inside the checksum
    mixed = AutoCorrection({4: coef, 6: kinds["amed"][0]}, grid.identity).save(tmp_path / "mixed.safetensors")
    assert isinstance(load_correction(mixed).entry(6).predictor, AMEDPredictor)
    side = sidecar_path(mixed)
    side.write_text(side.read_text().replace('"solver"', '"solver "').replace('"deis"', '"ipndm"'))
    with pytest.raises(CorruptCorrection):
        load_correction(mixed)
