"""Learned multistep weights on plain velocity fields (schedule=None), in the field's own time: the solver and the
differentiable training run are one formula, training on the built-in moons flow lowers the loss and beats the
best un-learned solver and its own grid without the offsets on held-out noise, files record their frame and are
refused on a field of the other kind, and bad arguments are refused naming them."""
from __future__ import annotations

import json

import pytest
import torch

from diffsolve import Sampler
from diffsolve.corrections import CoefficientCorrection, IdentityMismatch, learn_coefficients, load_correction
from diffsolve.corrections.coefficients import GRID_STAGE, GRID_STARTS, PLAIN_GRID_STAGE, _stage_settings
from diffsolve.corrections.grid_search import differentiable_run
from diffsolve.corrections.tuners import WeightsTuneSettings
from diffsolve.corrections.tuning import TuneContext, tune
from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
from diffsolve.field import as_field
from diffsolve.models.toy2d import load_moons_flow
from diffsolve.noise import draw_noise
from diffsolve.problems import LinearFlowProblem

HELD_OUT = list(range(7_000_000, 7_000_256))      # training draws seeds 500_000..: never these
SETTINGS = ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7)
FIT = dict(base="ipndm_v", nfe=(3,), n=256, batch_size=64, epochs=12, lr=0.05, weight_lr=0.05, log=None,
           grid_options={"n": 128, "batch_size": 32, "epochs": 8}, teacher_options={"settings": SETTINGS})


@pytest.fixture(scope="module")
def moons():
    model = load_moons_flow()
    noise = draw_noise((len(HELD_OUT), 2), seed=HELD_OUT, dtype=torch.float32)
    ref = solve_reference(model, noise, [1.0, 0.0], seeds=HELD_OUT, settings=SETTINGS).at(
        torch.tensor([0.0], dtype=torch.float64))[-1].float()
    return model, noise, ref


def _rows(steps, k, seed):
    g = torch.Generator().manual_seed(seed)
    return {steps: tuple(tuple(float(v) for v in 0.1 * torch.randn(k, generator=g, dtype=torch.float64))
                         for _ in range(steps))}


def _corr(field, rows, base="ipndm_v", t=(1.0, 0.8, 0.55, 0.3, 0.1, 0.0), k=3):
    return CoefficientCorrection({len(t) - 1: t}, rows, base, False, None, field.correction_identity(),
                                 {"max_order": k}, "native")


@pytest.mark.parametrize("base", ["ipndm", "ipndm_v"])
def test_solver_and_training_run_are_one_formula(base):
    """In float64 on an analytic plain field: the registered solver equals `differentiable_run(weights=...)`; zero
    offsets give the base rule at full order."""
    problem = LinearFlowProblem()
    field = as_field(problem)
    t = (1.0, 0.8, 0.55, 0.3, 0.1, 0.0)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for rows in (_rows(5, 3, 1), {5: tuple((0.0,) * 3 for _ in range(5))}):
        out = Sampler(problem, "learned_multistep", base=base, coefficients=_corr(field, rows, base),
                      progress=False).run(nfe=5, noise=noise)
        levels = [torch.tensor(v, dtype=torch.float64) for v in t[:-1]] + [0.0]
        want = differentiable_run(field, noise, levels, base, max_order=3,
                                  weights=[torch.tensor(r, dtype=torch.float64) for r in rows[5]])
        assert out.nfe == 5
        torch.testing.assert_close(out.samples, want, rtol=1e-12, atol=1e-12)
    plain = differentiable_run(field, noise, list(t), base, max_order=3)
    torch.testing.assert_close(out.samples, plain, rtol=1e-12, atol=1e-12)


def test_solver_equals_training_run_on_the_moons_flow(moons):
    """The float32 network: solver run and training run agree to ~1e-6 on the same grid and weights."""
    model, noise, _ = moons
    field = as_field(model)
    rows = _rows(5, 3, 2)
    out = Sampler(model, "learned_multistep", base="ipndm_v", coefficients=_corr(field, rows),
                  progress=False).run(nfe=5, noise=noise)
    t = (1.0, 0.8, 0.55, 0.3, 0.1)
    want = differentiable_run(field, noise, [torch.tensor(v, dtype=torch.float64) for v in t] + [0.0], "ipndm_v",
                              max_order=3, weights=[torch.tensor(r, dtype=torch.float64) for r in rows[5]])
    torch.testing.assert_close(out.samples, want.float(), rtol=1e-6, atol=2e-6)


@pytest.fixture(scope="module")
def learned(moons):
    return learn_coefficients(moons[0], **FIT)


@pytest.mark.slow
def test_learned_weights_beat_the_plain_solvers_on_held_out_noise(moons, learned):
    """Trained on other seeds: the loss falls, and on held-out noise the learned weights beat the best un-learned
    solver on the uniform grid and the same learned grid without the offsets."""
    model, noise, ref = moons

    def err(x):
        return float((x - ref).pow(2).sum(1).mean().sqrt())
    hist = learned.meta["loss_history"]["3"]
    assert learned.time == "native" and not learned.afs and min(hist) < 0.8 * hist[0], hist
    t = learned.grids[3]
    assert t[0] == 1.0 and t[-1] == 0.0 and all(a > b for a, b in zip(t, t[1:]))
    got = Sampler(model, "learned_multistep", base="ipndm_v", coefficients=learned, progress=False).run(
        nfe=3, noise=noise)
    zero = CoefficientCorrection(learned.grids, {3: tuple((0.0,) * 4 for _ in range(3))}, "ipndm_v", False, None,
                                 learned.identity, learned.meta, "native")
    without = Sampler(model, "learned_multistep", base="ipndm_v", coefficients=zero, progress=False).run(
        nfe=3, noise=noise)
    plain = min(err(Sampler(model, name, progress=False).run(nfe=3, noise=noise).samples)
                for name in ("ipndm_v", "midpoint", "euler"))
    assert got.nfe == without.nfe == 3
    e, e0 = err(got.samples), err(without.samples)
    # measured 0.115 vs 0.143 (its grid without the offsets) and 0.786 (the best of these on the uniform grid)
    assert e < 0.9 * e0 and e < 0.3 * plain, (e, e0, plain)


@pytest.mark.slow
def test_plain_file_round_trip_and_refusal_on_a_gaussian_field(moons, learned, gmm, tmp_path):
    model, noise, _ = moons
    path = learned.save(tmp_path / "plain.safetensors")
    side = json.loads((tmp_path / "plain.safetensors.json").read_text())
    assert side["time"] == "native" and side["afs"] is False and side["base"] == "ipndm_v"
    loaded = load_correction(path, field=as_field(model))
    assert loaded.time == "native" and loaded.weights == learned.weights
    a = Sampler(model, "learned_multistep", base="ipndm_v", coefficients=learned, progress=False).run(
        nfe=3, noise=noise[:8])
    b = Sampler(model, "learned_multistep", base="ipndm_v", coefficients=str(path), progress=False).run(
        nfe=3, noise=noise[:8])
    assert torch.equal(a.samples, b.samples)
    anywhere = CoefficientCorrection(learned.grids, learned.weights, "ipndm_v", False, None, None, {}, "native")
    with pytest.raises(IdentityMismatch, match="plain velocity field"):
        Sampler(gmm, "learned_multistep", base="ipndm_v", coefficients=anywhere, progress=False).run(
            nfe=3, batch_size=1)


def test_gaussian_weights_refused_on_a_plain_field():
    problem = LinearFlowProblem()
    edm = CoefficientCorrection({3: (1.0, 0.5, 0.2, 0.0)}, {3: ((0.0,),) * 3}, "ipndm_v", False, None, None, {})
    assert edm.time == "edm"
    with pytest.raises(IdentityMismatch, match="EDM frame of a Gaussian path"):
        Sampler(problem, "learned_multistep", base="ipndm_v", coefficients=edm, progress=False).run(
            nfe=3, batch_size=1)


@pytest.mark.parametrize("kwargs, match", [
    ({"base": "deis"}, "base='deis'.*ipndm, ipndm_v"),
    ({"base": "heun"}, "base"),
    ({"afs": True}, "afs=True needs a Gaussian path"),
    ({"afs": "yes"}, "afs='yes'"),
    ({"grid_options": {"epoch": 3}}, r"grid_options: unknown keys \['epoch'\]"),
    ({"grid_options": {"keep": 0}}, r"grid_options\['keep'\]"),
    ({"n": 0}, r"n=0: must be an integer >= 1"),
    ({"batch_size": 2.0}, r"batch_size=2.0: must be an integer"),
])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        learn_coefficients(LinearFlowProblem(), **{"base": "ipndm", "nfe": (3,), "log": None, **kwargs})


def test_stage_defaults_depend_on_the_kind_of_field(gmm):
    # a Gaussian path gets the fast recipe measured on the MNIST DDPM; a plain field keeps the one measured on it
    assert _stage_settings(as_field(gmm), None, None, None) == (GRID_STAGE, 64, 8)
    assert _stage_settings(as_field(LinearFlowProblem()), None, None, None) == (PLAIN_GRID_STAGE, 128, 16)
    assert PLAIN_GRID_STAGE["epochs"] == 16 and PLAIN_GRID_STAGE["keep"] is None and GRID_STAGE["keep"] == 1
    assert GRID_STARTS[0] == "time_uniform"      # the one standard start that does not end at sigma_min
    stage, n, bs = _stage_settings(as_field(gmm), {"keep": None, "epochs": 3}, 96, 16)     # given values are kept
    assert (stage["keep"], stage["epochs"], stage["lr"], n, bs) == (None, 3, GRID_STAGE["lr"], 96, 16)
    assert WeightsTuneSettings().samples is None and WeightsTuneSettings().batch_size is None


def test_the_solver_refuses_a_gaussian_only_base_on_a_plain_field():
    problem = LinearFlowProblem()
    corr = _corr(as_field(problem), _rows(5, 3, 3), base="deis")
    with pytest.raises(InvalidArgument, match="base= one of ipndm, ipndm_v, not 'deis'"):
        Sampler(problem, "learned_multistep", base="deis", coefficients=corr, progress=False).run(nfe=5, batch_size=1)
    with pytest.raises(InvalidArgument, match="time='eps'"):
        CoefficientCorrection({}, {}, "deis", False, None, None, {}, "eps")


@pytest.mark.slow
def test_tune_weights_on_a_plain_field_writes_a_native_time_file(tmp_path):
    """`diffsolve tune weights` on a plain velocity field: no AFS, no schedule-named starting grids, native time."""
    settings = WeightsTuneSettings(solver="ipndm", nfe=(3,), samples=16, epochs=1, ref_rtol=1e-6, out=str(tmp_path / "w.safetensors"))
    path = tune("weights", LinearFlowProblem(), settings, TuneContext(dtype=torch.float64, log=None))
    corr = load_correction(path, field=as_field(LinearFlowProblem()))
    assert corr.time == "native" and corr.afs is False and sorted(corr.grids) == [3]
    with pytest.raises(InvalidArgument, match="base='deis'"):
        tune("weights", LinearFlowProblem(), WeightsTuneSettings(nfe=(3,), samples=16, epochs=1,
                                                                 out=str(tmp_path / "d.safetensors")),
             TuneContext(log=None))
