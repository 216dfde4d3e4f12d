"""Learned multistep weights (corrections.learned_multistep, corrections.coefficients): zero offsets are the base rule,
the solver and the differentiable training run are one formula, NFE accounting, training beats the base solver on
held-out noise, files round-trip and are refused on another model, and bad input gets clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import Counting

from diffsolve import Sampler
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.corrections import CoefficientCorrection, IdentityMismatch, learn_coefficients, learn_grid, load_correction
from diffsolve.corrections.grid_search import differentiable_run
from diffsolve.errors import InvalidArgument
from diffsolve.field import as_field

FIT = dict(n=48, batch_size=16, epochs=8, dtype=torch.float64, log=None, teacher="fine",
           grid_options={"n": 48, "epochs": 6})


@pytest.fixture(scope="module")
def learned(gmm):
    return learn_coefficients(gmm, base="deis", nfe=(3, 5), **FIT)


def _rows(steps, k, seed):
    g = torch.Generator().manual_seed(seed)
    return {steps: tuple(tuple(float(v) for v in 0.05 * torch.randn(k, generator=g, dtype=torch.float64))
                         for _ in range(steps))}


@pytest.mark.parametrize("base", ["deis", "ipndm", "ipndm_v"])
@pytest.mark.parametrize("afs", [False, True])
def test_solver_and_training_run_are_one_formula(gmm, base, afs):
    """The registered solver and `differentiable_run(weights=...)` give the same endpoint for random offsets;
    zero offsets give the base rule at full order."""
    field = as_field(gmm)
    sch = field.schedule
    t = torch.tensor([80.0, 9.0, 2.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    steps, k = 5, 3
    noise = torch.randn(6, gmm.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.full((gmm.dim,), 0.3, dtype=torch.float64) if afs else None
    for rows in (_rows(steps, k, 1), {steps: tuple((0.0,) * k for _ in range(steps))}):
        corr = CoefficientCorrection({steps: tuple(float(v) for v in t)}, rows, base, afs, mean,
                                     field.correction_identity(), {"max_order": k})
        out = Sampler(gmm, "learned_multistep", base=base, coefficients=corr, progress=False).run(
            nfe=steps - (1 if afs else 0), noise=noise)
        s = [torch.tensor(float(v), dtype=torch.float64) for v in sch.edm_sigma(t[:-1])] + [0.0]
        w = [torch.tensor(r, dtype=torch.float64) for r in rows[steps]]
        want = differentiable_run(field, noise * 80.0, s, base, max_order=k, afs=afs, afs_mean=mean,
                                  solver_orders=False, weights=w)
        torch.testing.assert_close(out.samples, want, rtol=1e-10, atol=1e-10)
    base_run = differentiable_run(field, noise * 80.0, s, base, max_order=k, afs=afs, afs_mean=mean,
                                  solver_orders=False)
    torch.testing.assert_close(out.samples, base_run, rtol=1e-12, atol=1e-12)


def test_zero_offsets_are_the_library_deis(gmm):
    """Untrained (zero offsets) on a grid that stops at sigma_min: the registered DEIS at full order."""
    noise = torch.randn(8, gmm.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(grid="karras", grid_options={"final": "min"}, progress=False)
    with pytest.warns(UserWarning, match="zero offsets"):
        a = Sampler(gmm, "learned_multistep", **kw).run(steps=12, noise=noise)
    b = Sampler(gmm, "deis", lower_order_final=False, **kw).run(steps=12, noise=noise)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("afs", [False, True])
def test_nfe_accounting_matches_the_model_calls(gmm, afs):
    model = Counting(gmm)
    for steps in (3, 4, 6):
        t = torch.tensor([80.0] + [float(v) for v in torch.logspace(0.5, -1.5, steps - 1)] + [0.0],
                         dtype=torch.float64)
        corr = CoefficientCorrection({steps: tuple(float(v) for v in t)}, _rows(steps, 3, steps), "deis", afs,
                                     torch.zeros(gmm.dim, dtype=torch.float64) if afs else None, None, {})
        model.calls = 0
        out = Sampler(model, "learned_multistep", coefficients=corr, progress=False).run(
            nfe=steps - (1 if afs else 0), batch_size=2, dtype=torch.float64)
        assert out.t.numel() - 1 == steps
        assert out.nfe == model.calls == steps - (1 if afs else 0)


@pytest.mark.slow
def test_learned_weights_beat_the_base_on_its_learned_grid(gmm, held_out, learned):
    """Trained on other seeds: the offsets improve on the same base rule run on the same learned grid (measured
    here, on held-out noise), and on the base solver's default grid."""
    noise, ref = held_out

    def err(x):
        return float((x - ref).pow(2).mean(dim=1).sqrt().mean())
    for nfe in (3, 5):
        steps = nfe + 1
        with_w = Sampler(gmm, "learned_multistep", coefficients=learned, progress=False).run(nfe=nfe, noise=noise)
        zero = CoefficientCorrection(learned.grids, {k: tuple((0.0,) * 3 for _ in range(k)) for k in learned.grids},
                                     "deis", True, learned.afs_mean, learned.identity, learned.meta)
        without = Sampler(gmm, "learned_multistep", coefficients=zero, progress=False).run(nfe=nfe, noise=noise)
        plain = Sampler(gmm, "deis", progress=False).run(nfe=nfe, noise=noise)
        assert with_w.nfe == without.nfe == plain.nfe == nfe and with_w.t.numel() == steps + 1
        e, e0, ep = err(with_w.samples), err(without.samples), err(plain.samples)
        assert e < 0.9 * e0 and e < 0.5 * ep, (nfe, e, e0, ep)


@pytest.mark.slow
def test_save_load_round_trip_and_refusal(gmm, held_out, learned, tmp_path):
    noise, _ = held_out
    path = learned.save(tmp_path / "coef.safetensors")
    side = json.loads((tmp_path / "coef.safetensors.json").read_text())
    assert side["kind"] == "coefficients" and side["base"] == "deis" and side["afs"] is True
    assert side["nfe"] == {"4": 3, "6": 5} and len(side["weights"]["6"]) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coef.safetensors", "coef.safetensors.json"]
    loaded = load_correction(path, field=as_field(gmm))
    assert isinstance(loaded, CoefficientCorrection) and loaded.weights == learned.weights
    a = Sampler(gmm, "learned_multistep", coefficients=learned, progress=False).run(nfe=5, noise=noise[:8])
    b = Sampler(gmm, "learned_multistep", coefficients=str(path), progress=False).run(nfe=5, noise=noise[:8])
    assert torch.equal(a.samples, b.samples)
    other = GaussianMixtureProblem.default(seed=1)
    with pytest.raises(IdentityMismatch, match="another model"):
        Sampler(other, "learned_multistep", coefficients=str(path), progress=False).run(nfe=5, batch_size=1)
    with pytest.raises(InvalidArgument, match="base"):
        Sampler(gmm, "learned_multistep", base="ipndm", coefficients=str(path), progress=False).run(nfe=5,
                                                                                                   batch_size=1)


def test_clear_errors(gmm, learned):
    with pytest.raises(InvalidArgument, match="the grid they were learned on"):
        Sampler(gmm, "learned_multistep", coefficients=learned, grid="karras", progress=False).run(nfe=5,
                                                                                                   batch_size=1)
    with pytest.raises(InvalidArgument, match=r"NFE \[3, 5\]"):
        Sampler(gmm, "learned_multistep", coefficients=learned, progress=False).run(nfe=7, batch_size=1)
    with pytest.raises(InvalidArgument, match="base"):
        Sampler(gmm, "learned_multistep", base="heun", progress=False)
    with pytest.raises(InvalidArgument, match="afs"):
        learn_coefficients(gmm, afs="yes", **FIT)
    with pytest.raises(InvalidArgument, match="max_order"):
        Sampler(gmm, "learned_multistep", max_order=0, progress=False)
    g = learn_grid(gmm, base="deis", nfe=(3,), n=16, epochs=1, teacher="fine", log=None, dtype=torch.float64)
    with pytest.raises(InvalidArgument, match="afs=False"):
        learn_coefficients(gmm, grid=g, nfe=(3,), **{k: v for k, v in FIT.items() if k != "grid_options"})


def test_plain_velocity_field_is_refused():
    from diffsolve.problems import LinearFlowProblem
    with pytest.raises(InvalidArgument, match="plain velocity field"):
        learn_coefficients(LinearFlowProblem(), **FIT)


@pytest.mark.slow
def test_tune_weights_command_is_reproducible(tmp_path, capsys):
    from diffsolve.cli import main
    got = []
    for k in range(2):
        out = tmp_path / f"w{k}.safetensors"
        assert main(["tune", "weights", "--model", "gmm", "--nfe", "3", "--n", "16", "--epochs", "2",
                     "--out", str(out)]) == 0
        got.append(load_correction(out))
    assert got[0].weights == got[1].weights and got[0].grids == got[1].grids
    assert got[0].base == "deis" and got[0].afs and sorted(got[0].grids) == [4]
    text = capsys.readouterr().out
    assert "loss" in text and "wrote" in text


def test_peer_report_table_layout():
    from corrections.scripts_loader import load_script
    table = load_script("peer_report").table
    names = ["DEIS + learned grid", "AMED-Plugin(DEIS)", "DEIS + learned weights"]
    row = {"best_diffusers": {"name": "DDIM", "rmse": 0.1}, "best_ours": {"name": "deis / karras", "rmse": 0.12},
           "learned": {k: 0.05 for k in names}, "ratio": 0.5}
    text = table({"rows": {"5": row}, "train_seconds": {k: 60.0 for k in names}})
    assert "| 5 | DDIM | 0.1000 | deis / karras | 0.1200 | 0.0500 | 0.0500 | 0.0500 | 0.50x |" in text
    assert "| training (s, wall) | | | | | 60 | 60 | 60 | |" in text


def test_tune_starts_option_is_checked(tmp_path, capsys):
    from diffsolve.cli import main
    assert main(["tune", "grid", "--model", "gmm", "--nfe", "3", "--n", "8", "--epochs", "1", "--starts",
                 "karras,nope", "--out", str(tmp_path / "g.safetensors")]) == 2
    assert "--starts 'karras,nope': unknown grid 'nope'; allowed values:" in capsys.readouterr().err
    out = tmp_path / "g.safetensors"
    assert main(["tune", "grid", "--model", "gmm", "--nfe", "3", "--n", "8", "--epochs", "1", "--starts",
                 "karras,logsnr_uniform", "--out", str(out)]) == 0
    assert load_correction(out).meta["starts"] == ["karras", "logsnr_uniform"]


def test_shipped_weights_run_on_the_builtin_unet():
    """The built-in UNet's learned DEIS weights load by themselves, at each NFE they were learned for."""
    from diffsolve.models import load_mnist_unet
    model = load_mnist_unet()
    s = Sampler(model, "learned_multistep", progress=False)
    for nfe in (3, 5, 7, 9):
        out = s.run(nfe=nfe, batch_size=1, seed=0)
        assert out.nfe == nfe and out.t[-1] == 0.0 and torch.isfinite(out.samples).all()


@pytest.mark.parametrize("base", ["ipndm", "ipndm_v"])
def test_untrained_orders_of_the_other_bases(base):
    """Zero offsets on the other bases converge at the order the solver declares (as tests/solvers/test_convergence)."""
    import warnings

    from diffsolve import get_solver
    from diffsolve.analysis.convergence import (
        ORDER_SETTINGS, ORDER_TOLERANCE, STEPS, convergence_errors, order_problem, slope)
    problem = order_problem()
    grid, steps = ORDER_SETTINGS.get(base, ("time_uniform", STEPS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # nothing ships for this problem: zero offsets
        errs = convergence_errors("learned_multistep", problem, grid, {"base": base}, steps)
    order = get_solver("learned_multistep", base=base).order
    assert abs(slope(errs, steps) - order) <= ORDER_TOLERANCE, (base, order, errs)
