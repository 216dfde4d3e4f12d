"""PAS-style direction corrections (corrections.pas): zero coefficients are the learned multistep rule bit for bit, the
solver and the training run are one formula, training lowers the training loss and beats its base on held-out noise,
files round-trip under their checksum and are refused on another model, and bad input is refused by name."""
from __future__ import annotations

import json

import pytest
import torch

from diffsolve import Sampler
from diffsolve.corrections import CoefficientCorrection, IdentityMismatch, load_correction
from diffsolve.corrections.pas import PASCorrection, PASMultistep, corrected_direction, directions_run, learn_directions
from diffsolve.corrections.record import CorruptCorrection
from diffsolve.errors import InvalidArgument
from diffsolve.field import as_field
from diffsolve.problems import GaussianMixtureProblem

STEPS = 5


def _coefficients(gmm, afs=True, offsets=0.05):
    """DEIS weights on a fixed 5-step grid: random offsets (or zeros), the data mean for AFS."""
    g = torch.Generator().manual_seed(3)
    t = (80.0, 9.0, 2.0, 0.5, 0.1, 0.0)
    rows = tuple(tuple(float(v) for v in offsets * torch.randn(3, generator=g, dtype=torch.float64))
                 for _ in range(STEPS))
    mean = torch.full((gmm.dim,), 0.25, dtype=torch.float64) if afs else None     # float32-exact, as saved
    return CoefficientCorrection({STEPS: t}, {STEPS: rows}, "deis", afs, mean, as_field(gmm).correction_identity(),
                                 {"max_order": 3})


def _directions(corr, scale, rank=4, seed=4):
    g = torch.Generator().manual_seed(seed)
    return PASCorrection(corr, {STEPS: tuple(tuple(float(v) for v in scale * torch.randn(rank, generator=g,
                                                                                       dtype=torch.float64))
                                             for _ in range(STEPS))}, rank)


def _sampler(model, corr):
    """The Sampler a correction's solver_settings name."""
    name, options = corr.solver_settings()
    return Sampler(model, name, progress=False, **options)


def _noise(gmm, n=8, seed=2):
    return torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("afs", [False, True])
def test_zero_directions_are_the_learned_multistep_rule_exactly(gmm, afs):
    corr = _coefficients(gmm, afs)
    noise = _noise(gmm)
    nfe = STEPS - (1 if afs else 0)
    a = Sampler(gmm, "learned_multistep", coefficients=corr, progress=False).run(nfe=nfe, noise=noise)
    b = _sampler(gmm, _directions(corr, 0.0)).run(nfe=nfe, noise=noise)
    c = _sampler(gmm, _directions(corr, 0.1)).run(nfe=nfe, noise=noise)
    assert torch.equal(a.samples, b.samples) and a.nfe == b.nfe == c.nfe == nfe
    with pytest.warns(UserWarning, match="zero offsets"):
        untrained = Sampler(gmm, "pas", grid="karras", progress=False).run(steps=STEPS, noise=noise)
    with pytest.warns(UserWarning, match="zero offsets"):
        want = Sampler(gmm, "learned_multistep", grid="karras", progress=False).run(steps=STEPS, noise=noise)
    assert torch.equal(untrained.samples, want.samples)
    assert not torch.allclose(a.samples, c.samples)


def test_solver_and_training_run_are_one_formula(gmm):
    field = as_field(gmm)
    pas = _directions(_coefficients(gmm), 0.1)
    noise = _noise(gmm, n=4)
    out = Sampler(gmm, "pas", directions=pas, progress=False).run(nfe=STEPS - 1, noise=noise)
    solver = PASMultistep(pas)
    plan = solver.plan(field, torch.tensor(pas.coefficients.grids[STEPS], dtype=torch.float64))
    rows = torch.tensor(pas.directions[STEPS], dtype=torch.float64, requires_grad=True)
    want = directions_run(solver, field, plan, noise * 80.0, rows)
    assert torch.allclose(out.samples, want, rtol=1e-9, atol=1e-9)
    want.sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0


def test_corrected_direction_is_an_orthonormal_correction():
    """With coefficient c on q_0 alone the direction scales by (1 + c); a source already in the span adds nothing;
    each sample's result ignores the others."""
    # torch.allclose: torch.testing's first call costs about a second of imports
    g = torch.Generator().manual_seed(0)
    v, y = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(corrected_direction(v, (y,), (0.5, 0.0)), 1.5 * v)
    assert torch.allclose(corrected_direction(v, (2.0 * v,), (0.0, 0.7)), v)
    moved = corrected_direction(v, (y,), (0.0, 0.3))
    q = y - (y * v).sum(1, keepdim=True) / (v * v).sum(1, keepdim=True) * v
    assert torch.allclose(moved, v + 0.3 * v.norm(dim=1, keepdim=True) * q / q.norm(dim=1, keepdim=True))
    assert torch.allclose(corrected_direction(v[1:], (y[1:],), (0.2, 0.3)),
                          corrected_direction(v, (y,), (0.2, 0.3))[1:])


@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_the_base_on_held_out_noise(gmm, held_out, tmp_path):
    """Fitted on seeds it never evaluates on: the directions improve the same rule on the same grid."""
    noise, ref = held_out
    base = _coefficients(gmm, afs=False, offsets=0.0)
    pas = learn_directions(gmm, base, n=48, batch_size=16, epochs=10, lr=0.01, teacher="fine",
                           dtype=torch.float64, log=None)
    hist = pas.meta["loss_history"][str(STEPS)]
    assert min(hist[1:]) < 0.9 * hist[0]
    err = {}
    for name, s in (("base", Sampler(gmm, "learned_multistep", coefficients=base, progress=False)),
                    ("pas", _sampler(gmm, pas))):
        err[name] = float((s.run(nfe=STEPS, noise=noise).samples - ref).pow(2).mean().sqrt())
    assert err["pas"] < 0.9 * err["base"], err
    path = pas.save(tmp_path / "pas.safetensors")
    side = json.loads((tmp_path / "pas.safetensors.json").read_text())
    assert side["kind"] == "pas" and side["rank"] == 4 and len(side["directions"][str(STEPS)]) == STEPS
    loaded = load_correction(path, field=as_field(gmm))
    assert isinstance(loaded, PASCorrection) and loaded.directions == pas.directions
    assert loaded.coefficients.weights == base.weights and loaded.meta["n"] == 48


def test_file_round_trip_checksum_and_refusals(gmm, tmp_path):
    pas = _directions(_coefficients(gmm), 0.1)
    path = pas.save(tmp_path / "pas.safetensors")
    loaded = load_correction(path, field=as_field(gmm))
    assert loaded.directions == pas.directions and loaded.rank == 4
    noise = _noise(gmm)
    a = Sampler(gmm, "pas", directions=pas, progress=False).run(nfe=STEPS - 1, noise=noise)
    b = Sampler(gmm, "pas", directions=str(path), progress=False).run(nfe=STEPS - 1, noise=noise)
    assert torch.equal(a.samples, b.samples)
    with pytest.raises(IdentityMismatch, match="another model"):
        Sampler(GaussianMixtureProblem.default(seed=1), "pas", directions=str(path), progress=False).run(
            nfe=STEPS - 1, batch_size=1)
    side = tmp_path / "pas.safetensors.json"
    record = json.loads(side.read_text())
    record["directions"][str(STEPS)][0][0] += 1.0
    side.write_text(json.dumps(record))
    with pytest.raises(CorruptCorrection):
        load_correction(path)


def test_bad_arguments_are_refused_by_name(gmm):
    corr = _coefficients(gmm)
    with pytest.raises(InvalidArgument, match="rank"):
        PASCorrection(corr, {STEPS: tuple((0.0,) * 3 for _ in range(STEPS))}, rank=0)
    with pytest.raises(InvalidArgument, match="directions"):
        PASCorrection(corr, {STEPS: ((0.0,) * 4,)}, rank=4)
    with pytest.raises(InvalidArgument, match="directions"):
        PASCorrection(corr, {}, rank=4)
    with pytest.raises(InvalidArgument, match="directions="):
        Sampler(gmm, "pas", directions=42, progress=False)
    with pytest.raises(InvalidArgument, match="NFE"):
        _sampler(gmm, _directions(corr, 0.1)).run(nfe=6, batch_size=1)
    for bad in ({"rank": 0}, {"rank": "4"}, {"n": 1.5}, {"epochs": 0}, {"batch_size": True}, {"lr": -1.0},
                {"lr": "0.1"}):
        with pytest.raises(InvalidArgument, match=next(iter(bad))):
            learn_directions(gmm, corr, log=None, **bad)
    with pytest.raises(InvalidArgument, match="endpoints"):
        learn_directions(gmm, corr, n=4, endpoints=(torch.zeros(3, gmm.dim), torch.zeros(3, gmm.dim)), log=None)
    with pytest.raises(IdentityMismatch):
        learn_directions(GaussianMixtureProblem.default(seed=1), corr, log=None)


@pytest.mark.slow
def test_tune_directions_command(tmp_path, capsys):
    from diffsolve.cli import main
    weights = tmp_path / "w.safetensors"
    assert main(["tune", "weights", "--model", "gmm", "--nfe", "3", "--n", "16", "--epochs", "2",
                 "--out", str(weights)]) == 0
    out = tmp_path / "pas.safetensors"
    assert main(["tune", "directions", "--model", "gmm", "--nfe", "3", "--n", "16", "--directions-epochs", "2",
                 "--from-weights", str(weights), "--out", str(out)]) == 0
    corr = load_correction(out)
    assert isinstance(corr, PASCorrection) and sorted(corr.directions) == [4]
    assert corr.coefficients.weights == load_correction(weights).weights
    assert main(["tune", "directions", "--model", "gmm", "--nfe", "5", "--n", "16", "--from-weights", str(weights),
                 "--out", str(tmp_path / "p5.safetensors")]) == 2
    assert "no grid for NFE [5]" in capsys.readouterr().err
    assert main(["tune", "directions", "--model", "gmm", "--rank", "0", "--out", str(out)]) == 2
    assert "--rank" in capsys.readouterr().err


def test_pas_report_table_layout():
    from corrections.scripts_loader import load_script
    table = load_script("pas_report").table
    row = {"nfe": 5, "peer": (0.1, "DDIM"), "unlearned": (0.12, "deis / karras"), "weights": 0.036, "pas": 0.029,
           "steps": 6, "evals": 5, "seconds": (100.0, 50.0), "train_calls": 1000}
    assert table([row]).splitlines()[-1] == ("| 5 | DDIM 0.1000 | deis / karras 0.1200 | 0.0360 | 0.0290 | 0.360x | "
                                             "0.290x | 100.0; 50.0 | 1000 | 6 / 5 |")
