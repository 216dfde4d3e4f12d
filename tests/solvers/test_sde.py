"""Stochastic samplers: weak convergence on the analytic Gaussian, strong order of the torchsde bridge on a fixed
Brownian path, batch invariance of every sample, and reductions to the deterministic solvers."""
from __future__ import annotations

import math

import pytest
import torch
from sync_guard import guarded_loop

from diffsolve.problems import GaussianProblem
from diffsolve.errors import InvalidArgument
from diffsolve.sampler import Sampler
from diffsolve.schedules import EDMSchedule, VPContinuous
from diffsolve.solvers import available_solvers, get_solver

T_MIN = 1e-2
SCH = VPContinuous(t_min=T_MIN)
N_SAMPLES = 4000


def gaussian(dim: int = 2) -> GaussianProblem:
    return GaussianProblem.default(dim=dim, schedule=SCH)


def marginal_error(prob: GaussianProblem, x: torch.Tensor) -> float:
    """Largest deviation of the sample mean (in std units) and variance ratio from the exact marginal at t_min.

    With n = 4000 samples the statistical part is about 0.016 (mean) and 0.022 (variance ratio) per coordinate.
    """
    a, s = float(SCH.alpha(T_MIN)), float(SCH.sigma(T_MIN))
    var = a * a * prob.var + s * s
    em = ((x.mean(0) - a * prob.mean) / var.sqrt()).abs().max()
    ev = (x.var(0) / var - 1.0).abs().max()
    return float(torch.maximum(em, ev).detach())


def run(prob, solver, steps, batch=N_SAMPLES, seed=0, **opts):
    smp = Sampler(prob, solver, grid="logsnr_uniform", grid_options={"final": "min"}, progress=False, **opts)
    return smp.run(steps, batch_size=batch, seed=seed, dtype=torch.float64)


WEAK_CASES = {
    "euler_ancestral": {},
    "ddim_eta": {"eta": 0.5},
    "dpmpp_2s_ancestral": {},
    "edm_churn": {"S_churn": 10.0},
    "restart": None,                       # intervals refined with the grid, below
    "dpmpp_2m_sde": {},
    "dpmpp_2m_sde_heun": {"solver_type": "heun"},
    "dpmpp_3m_sde": {},
}


@pytest.mark.parametrize("case", sorted(WEAK_CASES))
def test_weak_convergence_on_gaussian(case):
    """Mean and variance of the final samples approach the exact marginal as the grid is refined (weak order)."""
    prob = gaussian()
    solver = "dpmpp_2m_sde" if case.startswith("dpmpp_2m_sde") else case
    errs = {}
    for steps in (4, 16, 64):
        opts = WEAK_CASES[case]
        if opts is None:
            opts = {"restart": [(0.5, 2.0, 2, max(1, steps // 4))]}
        errs[steps] = marginal_error(prob, run(prob, solver, steps, **opts).samples)
    print(case, {k: round(v, 4) for k, v in errs.items()})
    assert errs[16] < errs[4]
    assert errs[64] < errs[4] / 3
    # Weak order 1: the 64-step bias is below 0.13 for the plain Euler-type samplers (measured 0.11-0.12 for
    # euler_ancestral); 4 standard errors of the variance ratio are 0.09.
    assert errs[64] < 0.13


@pytest.mark.parametrize("method,steps,batch", [("euler", (16, 64), N_SAMPLES), ("milstein", (16, 64), N_SAMPLES),
                                               ("srk", (8, 32), N_SAMPLES)])
def test_torchsde_weak_convergence(method, steps, batch):
    """(reversible_heun is not tested here: its stability region does not contain this dissipative drift, and it
    diverges on this SDE unless the steps are very small.)"""
    prob = gaussian()
    opts = {"brownian": "batch"}
    coarse, fine = (marginal_error(prob, run(prob, f"torchsde_{method}", n, batch=batch, **opts).samples)
                    for n in steps)
    print(method, coarse, fine)
    assert fine < coarse / 2
    assert fine < 0.12


@pytest.mark.slow
def test_torchsde_strong_order_on_a_fixed_brownian_path():
    """Additive noise (the reverse SDE of a Gaussian path): Euler-Maruyama has strong order 1 (not 0.5).

    Every run uses the same seed and a dyadic Brownian tree, so all grids sample the same path; the reference is
    a 512-step solve on it.
    """
    prob = gaussian()

    def solve(n):
        return run(prob, "torchsde_euler", n, batch=128, seed=7, brownian="batch_tree", tol=1e-4).samples

    ref = solve(512)
    steps = (16, 32, 64)
    errs = [float((solve(n) - ref).pow(2).mean().sqrt()) for n in steps]
    slope = -(math.log(errs[-1]) - math.log(errs[0])) / (math.log(steps[-1]) - math.log(steps[0]))
    print("torchsde euler strong errors", dict(zip(steps, errs)), "slope", slope)
    assert 0.7 < slope < 1.3


# ------------------------------------------------------------------------------------------------
# Batch invariance: sample k is bitwise the same alone and inside a batch of 8 (CPU, float32)
# ------------------------------------------------------------------------------------------------
INVARIANCE = {
    "euler_ancestral": {},
    "ddim_eta": {"eta": 0.3},
    "dpmpp_2s_ancestral": {},
    "edm_churn": {},
    "restart": {"restart": [(0.5, 2.0, 2, 2)]},
    "dpmpp_2m_sde": {},
    "dpmpp_3m_sde": {},
    "torchsde_euler": {"brownian": "tree", "tol": 1e-4},
    "torchsde_srk": {"brownian": "interval"},
}


@pytest.mark.parametrize("solver", sorted(INVARIANCE))
def test_sample_is_bitwise_batch_invariant(solver):
    prob = gaussian(dim=3).float()
    seeds = [40 + k for k in range(8)]
    smp = Sampler(prob, solver, grid="logsnr_uniform", grid_options={"final": "zero"}, progress=False,
                  **INVARIANCE[solver])
    full = smp.run(6, seed=seeds, batch_size=8).samples
    for k in (0, 5):
        alone = smp.run(6, seed=[seeds[k]], batch_size=1).samples
        assert alone.dtype == torch.float32
        assert torch.equal(alone[0], full[k]), solver
    other = smp.run(6, seed=[seeds[5], 999, 1000], batch_size=3).samples
    assert torch.equal(other[0], full[5])
    assert not torch.equal(full[0], full[1])
    # Same seeds, same numbers; a different seed list, different numbers.
    assert torch.equal(smp.run(6, seed=seeds, batch_size=8).samples, full)
    assert not torch.equal(smp.run(6, seed=[s + 100 for s in seeds], batch_size=8).samples, full)


@pytest.mark.slow
def test_brownian_tree_is_invariant_to_grid_refinement():
    """The per-sample tree samples one path per seed: a refined grid converges to the same limit, and a run with
    a different seed does not."""
    prob = gaussian()
    kw = dict(batch=2, brownian="tree", tol=1e-5)
    a, b = run(prob, "torchsde_euler", 64, seed=[3, 4], **kw).samples, run(prob, "torchsde_euler", 128, seed=[3, 4],
                                                                         **kw).samples
    c = run(prob, "torchsde_euler", 128, seed=[5, 6], **kw).samples
    assert float((a - b).abs().max()) < 0.35 * float((c - b).abs().max())


# ------------------------------------------------------------------------------------------------
# Reductions and accounting
# ------------------------------------------------------------------------------------------------
def test_eta_zero_reduces_to_the_deterministic_solvers():
    prob = GaussianProblem.default(dim=4, schedule=EDMSchedule())
    noise = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def go(solver, **opts):
        return Sampler(prob, solver, grid="karras", progress=False, **opts).run(10, noise=noise).samples

    torch.testing.assert_close(go("euler_ancestral", eta=0.0), go("euler"))
    torch.testing.assert_close(go("dpmpp_2m_sde", eta=0.0), go("dpmpp_2m", lower_order_final=True))
    torch.testing.assert_close(go("edm_churn", S_churn=0.0), go("heun"))


def test_nfe_accounting_matches_the_plan():
    prob = gaussian()
    for solver, opts, steps, expect in [("euler_ancestral", {}, 8, 8), ("dpmpp_2s_ancestral", {}, 8, 15),
                                        ("edm_churn", {}, 8, 15), ("dpmpp_3m_sde", {}, 8, 8),
                                        ("restart", {"restart": [(0.5, 2.0, 2, 3)]}, 8, 15 + 2 * 6)]:
        smp = Sampler(prob, solver, grid="logsnr_uniform", progress=False, **opts)
        res = smp.run(steps, batch_size=2, seed=0)
        assert res.nfe == expect == smp.plan(steps).nfe, solver
        assert smp.solver.model_calls(steps, smp.field, True) == expect, solver
        assert smp.steps_for_nfe(expect) == steps


def test_stochastic_solvers_are_registered_as_such():
    stochastic = set(available_solvers(deterministic=False))
    for name in ("euler_ancestral", "ddpm", "ddim_eta", "dpmpp_2s_ancestral", "edm_churn", "restart",
                 "dpmpp_2m_sde", "dpmpp_3m_sde", "torchsde_euler", "torchsde_milstein", "torchsde_srk",
                 "torchsde_reversible_heun"):
        assert name in stochastic
        assert get_solver(name).deterministic is False


def test_bad_options_are_rejected():
    with pytest.raises(InvalidArgument):
        get_solver("euler_ancestral", eta=-1.0)
    with pytest.raises(InvalidArgument):
        get_solver("dpmpp_2m_sde", solver_type="rk4")
    with pytest.raises(InvalidArgument):
        get_solver("restart", restart=[(0.5, 0.2, 1, 2)])
    with pytest.raises(InvalidArgument):
        get_solver("edm_churn", inner="euler_ancestral")
    with pytest.raises(InvalidArgument):
        get_solver("torchsde", method="heun_foo")
    with pytest.raises(InvalidArgument):
        Sampler(gaussian(), "torchsde_euler", progress=False).run(batch_size=1, seed=0)   # no steps


def test_reproducible_with_one_seed_and_with_a_generator():
    prob = gaussian()
    smp = Sampler(prob, "dpmpp_2m_sde", grid="logsnr_uniform", progress=False)
    a = smp.run(5, batch_size=4, seed=3).samples
    assert torch.equal(a, smp.run(5, batch_size=4, seed=3).samples)
    g = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    assert torch.equal(smp.run(5, batch_size=4, generator=g()).samples,
                       smp.run(5, batch_size=4, generator=g()).samples)


@pytest.mark.parametrize("solver,opts", [("euler_ancestral", {}), ("dpmpp_2s_ancestral", {}), ("edm_churn", {}),
                                         ("restart", {"restart": [(0.5, 2.0, 1, 2)]}), ("dpmpp_2m_sde", {}),
                                         ("dpmpp_3m_sde", {})])
def test_stochastic_steps_make_no_host_sync(solver, opts):
    """The step-noise draw (counter-based hash) and the updates read nothing back to the host: the sync guard
    fails on any op that would sync on a GPU."""
    problem = GaussianProblem.default(dim=4, schedule=VPContinuous(t_min=1e-2))
    sampler = Sampler(problem, solver, grid="time_uniform", grid_options={"final": "min"}, progress=False, **opts)
    with guarded_loop(sampler) as modes:
        out = sampler.run(steps=4, batch_size=2, seed=[1, 2])
    assert modes and torch.isfinite(out.samples).all()


def test_ancestral_samplers_from_pure_noise_on_rectified_flow():
    """A grid that starts at alpha = 0 (rectified flow, t = 1): eta = 0 is exactly Euler, and eta > 0 keeps the
    data's variance (a coefficient that vanished at pure noise once collapsed every sample to one point)."""
    from diffsolve import RectifiedFlow
    problem = GaussianProblem.default(dim=4, schedule=RectifiedFlow())
    noise = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    euler = Sampler(problem, "euler", progress=False).run(steps=40, noise=noise).samples
    anc0 = Sampler(problem, "euler_ancestral", eta=0.0, progress=False).run(steps=40, noise=noise, seed=0).samples
    torch.testing.assert_close(anc0, euler, rtol=1e-12, atol=1e-12)
    for name in ("euler_ancestral", "dpmpp_2s_ancestral"):
        out = Sampler(problem, name, eta=0.5, progress=False).run(steps=40, noise=noise, seed=1).samples
        ratio = out.var(0) / problem.var
        assert torch.all((ratio - 1).abs() < 0.15), (name, ratio)


@pytest.mark.slow
@pytest.mark.parametrize("name, steps", [("dpmpp_2m_sde", (32, 64, 128)), ("dpmpp_3m_sde", (1024, 2048, 4096))])
def test_sde_multistep_with_eta_zero_has_its_declared_deterministic_order(name, steps):
    """eta = 0 turns the SDE multistep samplers into ODE methods: measure the order they then declare. (3M SDE
    uses k-diffusion's halved second difference: per-doubling slopes 2.35, 3.01, 4.51, 1.16, 1.20 from 16 to 512
    steps before settling at 2, hence the fine grids.)"""
    problem = GaussianProblem.default(schedule=VPContinuous(t_min=1e-2))
    noise = torch.randn(16, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solver = get_solver(name, eta=0.0)
    errs = []
    for n in steps:
        out = Sampler(problem, solver, grid="time_uniform", grid_options={"final": "min"}, progress=False).run(
            steps=n, noise=noise, seed=0)
        t0, t1 = float(out.t[0]), float(out.t[-1])
        errs.append(float((out.samples - problem.ode_solution(noise, t0, t1)).pow(2).mean().sqrt()))
    slope = math.log(errs[0] / errs[-1]) / math.log(steps[-1] / steps[0])
    assert abs(slope - solver.order) <= 0.3, (slope, errs)
