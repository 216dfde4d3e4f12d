"""Consistency and shortcut samplers on analytic problems, the karras_index grid, and the straightness diagnostic."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffsolve.problems import GaussianProblem
from diffsolve.analysis.straightness import straightness
from diffsolve.errors import InvalidArgument
from diffsolve.field import ModelSpec, VectorField
from diffsolve.grids import karras_sigmas, make_grid
from diffsolve.sampler import Sampler
from diffsolve.schedules import EDMSchedule, VPContinuous, get_schedule
from diffsolve.solvers import get_solver


class ExactConsistency(torch.nn.Module):
    """The exact consistency function of a Gaussian problem: the PF-ODE transport to the boundary t_end, returned
    as a data prediction (x_end / alpha_end)."""

    def __init__(self, problem: GaussianProblem, t_end: float):
        super().__init__()
        self.problem, self.t_end = problem, float(t_end)
        self.calls = 0

    @property
    def diffsolve_spec(self) -> ModelSpec:
        return ModelSpec(prediction="x0", schedule=self.problem.schedule, sample_shape=(self.problem.mean.numel(),),
                         solver="consistency")

    def forward(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sch = self.problem.schedule
        t = float(sch.t_from_model_time(t_model.to(torch.float64))[0])
        x_end = self.problem.ode_solution(x.to(torch.float64), t, self.t_end)
        alpha_end = float(sch.alpha(torch.tensor(self.t_end, dtype=torch.float64)))
        return (x_end / alpha_end).to(x.dtype)


def _marginal(problem: GaussianProblem, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    sch, tt = problem.schedule, torch.tensor(t, dtype=torch.float64)
    a, s = sch.alpha(tt), sch.sigma(tt)
    return a * problem.mean, a * a * problem.var + s * s


@pytest.mark.parametrize("schedule", [EDMSchedule(0.002, 80.0), VPContinuous()], ids=["edm", "vp"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_exact_consistency_function_gives_exact_samples_at_every_step_count(schedule, steps):
    problem = GaussianProblem.default(dim=4, schedule=schedule)
    # A boundary far from zero noise, so that re-noising to s' instead of sqrt(s'^2 - s_end^2) would show.
    s_end = 0.6
    t_end = float(schedule.t_from_edm_sigma(torch.tensor(s_end, dtype=torch.float64)))
    s_top = 40.0 if isinstance(schedule, EDMSchedule) else 20.0
    levels = torch.exp(torch.linspace(math.log(s_top), math.log(s_end), steps + 1, dtype=torch.float64))
    grid = schedule.t_from_edm_sigma(levels)
    grid[-1] = t_end
    model = ExactConsistency(problem, t_end)
    n = 40_000
    # start from the exact marginal at the first level (the prior N(0, s_top^2) would bias the mean)
    m0, v0 = _marginal(problem, float(grid[0]))
    x_top = m0 + v0.sqrt() * torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = Sampler(model, grid=grid, progress=False).run(noise=x_top, noise_scale="prior", seed=list(range(n)))
    assert out.nfe == steps and model.calls == steps
    mean, var = _marginal(problem, t_end)
    x = out.samples
    se_mean = torch.sqrt(var / n)
    se_var = var * math.sqrt(2.0 / (n - 1))
    assert torch.all((x.mean(0) - mean).abs() < 5 * se_mean), (x.mean(0), mean)
    assert torch.all((x.var(0) - var).abs() < 5 * se_var), (x.var(0), var)
    # and the distribution is Gaussian: a Kolmogorov-Smirnov distance of the standardized first coordinate
    z = ((x[:, 0] - mean[0]) / var[0].sqrt()).sort().values.numpy()
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    ks = np.max(np.abs(cdf - (np.arange(1, n + 1) / n)))
    assert ks < 1.63 / math.sqrt(n) * 1.5


def test_gamma_zero_is_ddim_and_gamma_is_validated():
    problem = GaussianProblem.default(dim=3)
    a = Sampler(problem, "consistency", "karras", progress=False, gamma=0.0).run(6, batch_size=5, seed=1)
    b = Sampler(problem, "euler", "karras", progress=False).run(6, batch_size=5, seed=1)
    torch.testing.assert_close(a.samples, b.samples, rtol=1e-6, atol=1e-6)
    for bad in (1.5, -0.1, "1", True, float("nan")):
        with pytest.raises(InvalidArgument, match="gamma"):
            get_solver("consistency", gamma=bad)
    assert get_solver("tcd").gamma == 0.3


def test_tcd_interpolates_between_ddim_and_full_renoising():
    problem = GaussianProblem.default(dim=3)
    runs = {g: Sampler(problem, "consistency", "karras", progress=False, gamma=g).run(4, batch_size=64, seed=2)
            for g in (0.0, 0.3, 1.0)}
    ddim = runs[0.0].samples
    d03 = float((runs[0.3].samples - ddim).pow(2).mean())
    d10 = float((runs[1.0].samples - ddim).pow(2).mean())
    assert 0 < d03 < d10


def test_consistency_noise_is_per_sample_and_reproducible():
    problem = GaussianProblem.default(dim=3)
    smp = Sampler(ExactConsistency(problem, 0.002), progress=False)
    both = smp.run(3, batch_size=2, seed=[11, 12]).samples
    alone = smp.run(3, batch_size=1, seed=[12]).samples
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)
    assert not torch.equal(both, smp.run(3, batch_size=2, seed=[11, 13]).samples)


def test_consistency_models_refuse_inversion():
    problem = GaussianProblem.default(dim=3)
    with pytest.raises(InvalidArgument, match="strictly decreasing"):
        Sampler(ExactConsistency(problem, 0.002), progress=False).invert(torch.zeros(2, 3), 2)


def test_karras_index_grid_picks_levels_of_the_40_point_grid():
    sch = get_schedule("edm")
    t = make_grid("karras_index", 2, sch, indices=(0, 22, 39))
    full = karras_sigmas(sch.sigma_min, sch.sigma_max, 40)
    torch.testing.assert_close(t, sch.t_from_edm_sigma(full[[0, 22, 39]]), rtol=1e-14, atol=0)
    assert float(t[-1]) == pytest.approx(0.002)
    default = make_grid("karras_index", 3, sch)
    torch.testing.assert_close(default, sch.t_from_edm_sigma(full[[0, 13, 26, 39]]), rtol=1e-14, atol=0)
    with pytest.raises(InvalidArgument, match="steps=3 needs 4"):
        make_grid("karras_index", 3, sch, indices=(0, 22, 39))
    with pytest.raises(InvalidArgument, match="increasing"):
        make_grid("karras_index", 2, sch, indices=(0, 39, 22))
    with pytest.raises(InvalidArgument, match=r"indices\[1\]"):
        make_grid("karras_index", 2, sch, indices=(0, 40, 41))
    with pytest.raises(InvalidArgument, match=r"indices\[1\]"):
        make_grid("karras_index", 2, sch, indices=(0, 2.0, 39))
    assert make_grid("karras_index", 2, sch, indices=(np.int64(0), np.int64(10), np.int64(39))).numel() == 3


def test_consistency_model_uses_its_sampler_and_grid_by_default():
    problem = GaussianProblem.default(dim=3)
    smp = Sampler(ExactConsistency(problem, 0.002))
    assert smp.solver.name == "consistency" and smp.grid == "karras_index"
    plan = smp.plan(1)
    assert plan.nfe == 1 and float(plan.t[0]) == pytest.approx(80.0) and float(plan.t[-1]) == pytest.approx(0.002)


# --- shortcut models -------------------------------------------------------------------------------------------
class RecordingShortcut(torch.nn.Module):
    """A velocity field v(x, t, d) on the flow convention that records the step sizes d it is given.

    v = x1 - x with target x1: one step of size d lands at x + d (x1 - x); for d = 1 - t exactly at x1."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.register_buffer("target", torch.tensor([1.5, -0.5]))

    @property
    def diffsolve_spec(self) -> ModelSpec:
        return ModelSpec(prediction="velocity", schedule=None, time_convention="flow", sample_shape=(2,),
                         solver="shortcut", step_input="d")

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        assert d.shape == (x.shape[0],) and t.shape == (x.shape[0],)
        self.seen.append(d.clone())
        return (self.target - x) / (1.0 - t).clamp_min(1e-6).unsqueeze(1)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_shortcut_passes_d_and_takes_k_uniform_steps(k):
    model = RecordingShortcut()
    out = Sampler(model, progress=False).run(k, batch_size=3, seed=0)
    assert out.nfe == k and len(model.seen) == k
    for d in model.seen:
        torch.testing.assert_close(d, torch.full((3,), 1.0 / k), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.samples, model.target.expand(3, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5, 6, 12])
def test_shortcut_refuses_step_counts_that_are_not_powers_of_two(k):
    with pytest.raises(InvalidArgument, match="power of two"):
        Sampler(RecordingShortcut(), progress=False).run(k, batch_size=1, seed=0)


def test_shortcut_refuses_uneven_grids_and_nfe_rounds_down_to_a_power_of_two():
    with pytest.raises(InvalidArgument, match="uniform steps"):
        Sampler(RecordingShortcut(), grid=[1.0, 0.6, 0.0], progress=False).run(batch_size=1, seed=0)
    smp = Sampler(RecordingShortcut(), progress=False)
    assert smp.steps_for_nfe(7) == 4 and smp.run(nfe=7, batch_size=1, seed=0).nfe == 4


def test_other_solvers_ask_a_shortcut_model_for_d_zero():
    model = RecordingShortcut()
    Sampler(model, "heun", progress=False).run(3, batch_size=2, seed=0)
    assert model.seen and all(float(d.abs().max()) == 0.0 for d in model.seen)


def test_step_input_is_validated():
    with pytest.raises(InvalidArgument, match="step_input"):
        VectorField(lambda x, t: x, prediction="velocity", step_input="not an identifier")


# --- straightness ----------------------------------------------------------------------------------------------
class LinearFlow(torch.nn.Module):
    """dX/dt = c on the flow convention: every trajectory is a straight line travelled at constant speed."""

    @property
    def diffsolve_spec(self) -> ModelSpec:
        return ModelSpec(prediction="velocity", schedule=None, time_convention="flow", sample_shape=(3,))

    def forward(self, x, t):
        return torch.tensor([1.0, -2.0, 0.5], dtype=x.dtype).expand_as(x) + 0 * x


def test_straightness_of_a_straight_flow_is_zero():
    r = straightness(LinearFlow(), steps=16, batch_size=8, seed=0)
    assert r.straightness == pytest.approx(0.0, abs=1e-20) and r.one_step_gap == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_straightness_of_the_gaussian_pf_ode_matches_its_closed_form():
    """Rectified-flow path x_t = (1 - t) x0 + t z, data N(mu, s_i^2): X_t = (1 - t) mu + g_i(t) z with
    g_i = sqrt((1 - t)^2 s_i^2 + t^2), so S = sum_i E[z^2] (int g_i'^2 - (1 - s_i)^2) = sum_i s_i (2 - pi / 2)."""
    problem = GaussianProblem.default(dim=4, schedule="rectified_flow")
    n = 4000
    r = straightness(problem, steps=256, batch_size=n, seed=0, grid="time_uniform", grid_options={"final": "zero"})
    closed = float(problem.var.sqrt().sum()) * (2 - math.pi / 2)
    # sampling error of E[z^2] over n samples is about sqrt(2 / n) relative
    assert r.straightness == pytest.approx(closed, rel=4 * math.sqrt(2 / n))
    # S is linear in the data's std: halving every s_i halves it
    half = GaussianProblem(problem.mean, problem.var / 4, "rectified_flow")
    r2 = straightness(half, steps=256, batch_size=n, seed=0, grid="time_uniform", grid_options={"final": "zero"})
    assert r2.straightness == pytest.approx(closed / 2, rel=4 * math.sqrt(2 / n))
    assert r.one_step_gap > r2.one_step_gap > 0


@pytest.mark.slow
def test_bench_reports_the_models_straightness():
    from diffsolve.distributed import sample_seeds
    from diffsolve.bench.running import STRAIGHTNESS_SAMPLES, STRAIGHTNESS_STEPS, run_bench
    from diffsolve.noise import draw_noise
    rep = run_bench("gaussian", ["euler"], [4], batch_size=8, cache=False, out=None, plots=False, verbose=False,
                    peers=False, progress=False)
    st = rep["straightness"]
    assert st["status"] == "ok" and st["samples"] == 8 <= STRAIGHTNESS_SAMPLES
    problem = GaussianProblem.default(dim=16)       # the bench's "gaussian"
    direct = straightness(problem, draw_noise((8, 16), seed=sample_seeds(0, 8), dtype=torch.float64),
                          steps=STRAIGHTNESS_STEPS, solver="heun")
    assert st["straightness"] == pytest.approx(direct.straightness, rel=1e-9)
    assert st["one_step_gap"] == pytest.approx(direct.one_step_gap, rel=1e-9)
    off = run_bench("gaussian", ["euler"], [4], batch_size=8, cache=False, out=None, plots=False, verbose=False,
                    peers=False, progress=False, straightness=False)
    assert "straightness" not in off
    with pytest.raises(InvalidArgument, match="straightness"):
        run_bench("gaussian", ["euler"], [4], straightness="yes")


@pytest.mark.parametrize("d", [0.5, 0.0, 1, torch.tensor([0.25])])
@pytest.mark.parametrize("solver", ["shortcut", "euler"])
def test_a_step_size_keyword_is_refused_not_overridden(d, solver):
    model = RecordingShortcut()
    with pytest.raises(InvalidArgument, match=r"d=.*takes the step size 'd' from the solver.*steps=K"):
        Sampler(model, solver, progress=False).run(4, batch_size=1, seed=0, d=d)
    assert not model.seen                                       # refused before the model ran a step
    with pytest.raises(InvalidArgument, match="takes the step size 'd' from the solver"):
        VectorField(model, model_kwargs={"d": d})
