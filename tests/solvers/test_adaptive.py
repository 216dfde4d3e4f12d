"""Adaptive ODE solvers (DPM-Solver-12/23) and the torchdiffeq bridge: accuracy follows the tolerance, model-call
efficiency, budgets that end runs (never a hang), and the statistics a run reports."""
from __future__ import annotations

import math

import pytest
import torch

from diffsolve.problems import GaussianProblem
from diffsolve.errors import BudgetExceeded, InvalidArgument
from diffsolve.field import VectorField
from diffsolve.sampler import Sampler
from diffsolve.schedules import VPContinuous
from diffsolve.solvers import get_solver
from diffsolve.solvers.peers import peer_tolerance

T_MIN = 1e-2
SCH = VPContinuous(t_min=T_MIN)


@pytest.fixture(scope="module")
def setup():
    prob = GaussianProblem.default(schedule=SCH)
    noise = torch.randn(32, prob.mean.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = prob.ode_solution(noise * SCH.prior_std(1.0), 1.0, T_MIN)
    return prob, noise, exact


def solve(prob, noise, solver, **opts):
    smp = Sampler(prob, solver, grid="time_uniform", grid_options={"final": "min"}, progress=False, **opts)
    return smp.run(noise=noise)


def rmse(a, b) -> float:
    return float((a - b).pow(2).mean().sqrt())


@pytest.mark.slow
@pytest.mark.parametrize("solver,opts", [("dpm_adaptive", {"order": 2}), ("dpm_adaptive", {"order": 3}),
                                         ("odeint_dopri5", {}), ("odeint_bosh3", {})])
def test_error_falls_with_tolerance(setup, solver, opts):
    prob, noise, exact = setup
    errs, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        res = solve(prob, noise, solver, rtol=rtol, atol=rtol / 10, **opts)
        assert res.stats["completed"] and res.stats["accepted"] >= 1 and res.nfe == res.stats["nfe"]
        errs.append(rmse(res.samples, exact))
        nfes.append(res.nfe)
    print(solver, opts, "errors", errs, "nfe", nfes)
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < errs[0] / 10
    assert nfes[0] < nfes[2]


def _calls_to_reach(setup, solver, target, **opts):
    prob, noise, exact = setup
    for k in range(0, 16):
        rtol = 0.05 * 10 ** (-k / 4)            # a fine tolerance sweep: the first one that meets the target
        res = solve(prob, noise, solver, rtol=rtol, atol=rtol / 10, **opts)
        err = rmse(res.samples, exact)
        if err <= target:
            return res.nfe, rtol, err
    raise AssertionError(f"{solver} never reached {target}")


@pytest.mark.slow
def test_dpm_solver_23_needs_fewer_model_calls_than_dopri5(setup):
    target = 1e-3
    dpm = _calls_to_reach(setup, "dpm_adaptive", target, order=3)
    dop = _calls_to_reach(setup, "odeint_dopri5", target)
    print(f"to reach RMSE {target}: DPM-Solver-23 {dpm[0]} NFE (rtol {dpm[1]:.2g}, err {dpm[2]:.2e}); "
          f"dopri5 {dop[0]} NFE (rtol {dop[1]:.2g}, err {dop[2]:.2e})")
    assert dpm[0] < dop[0]


@pytest.mark.parametrize("solver", ["dpm_adaptive", "odeint_dopri5"])
def test_budget_that_cannot_be_met_raises(setup, solver):
    prob, noise, _ = setup
    smp = Sampler(prob, solver, grid="karras", rtol=1e-9, atol=1e-10, progress=False)
    with pytest.raises(BudgetExceeded, match="budget of 40"):
        smp.run(nfe=40, noise=noise)
    smp = Sampler(prob, solver, grid="karras", rtol=1e-9, atol=1e-10, max_steps=3, progress=False)
    with pytest.raises(BudgetExceeded, match="max_steps=3"):
        smp.run(noise=noise)


def test_torchsde_budget_raises(setup):
    prob, noise, _ = setup
    smp = Sampler(prob, "torchsde_euler", grid="karras", steps=100, brownian="batch", progress=False)
    with pytest.raises(BudgetExceeded, match="budget of 30"):
        smp.run(nfe=30, noise=noise, seed=1)


@pytest.mark.parametrize("solver", ["dpm_adaptive", "odeint_dopri5", "torchsde_euler"])
def test_on_budget_return_gives_the_state_so_far(setup, solver):
    prob, noise, _ = setup
    opts = {"steps": 400, "brownian": "batch"} if solver.startswith("torchsde") else {"rtol": 1e-9, "atol": 1e-10}
    smp = Sampler(prob, solver, grid="karras", on_budget="return", progress=False, **opts)
    res = smp.run(nfe=40, noise=noise, seed=0) if solver.startswith("torchsde") else smp.run(nfe=40, noise=noise)
    assert res.stats["completed"] is False
    assert res.nfe <= 40 and res.stats["nfe"] == res.nfe
    assert "budget of 40" in res.stats["stopped_because"]
    assert 0 < res.stats["t_reached"] < 1.0
    assert torch.isfinite(res.samples).all() and res.samples.shape == noise.shape


def test_ends_at_zero_with_one_final_denoise(setup):
    prob, noise, _ = setup
    for solver in ("dpm_adaptive", "odeint_dopri5"):
        res = Sampler(prob, solver, grid="logsnr_uniform", rtol=1e-4, atol=1e-5, progress=False).run(noise=noise)
        assert float(res.t[-1]) == 0.0 and res.stats["completed"]
        # The result is E[x0 | x_{t_min}] of the exact ODE solution, up to the tolerance.
        x_tmin = prob.ode_solution(noise * SCH.prior_std(1.0), 1.0, SCH.t_min)
        assert rmse(res.samples, prob.denoise(x_tmin, SCH.t_min)) < 1e-3


def test_torchdiffeq_fixed_grid_rk4_converges_with_order_4(setup):
    prob, noise, exact = setup
    errs = []
    for steps in (8, 16, 32):
        res = Sampler(prob, "odeint", method="rk4", frame="edm", grid="time_uniform", grid_options={"final": "min"},
                      progress=False).run(steps, noise=noise)
        assert res.nfe == 4 * steps
        errs.append(rmse(res.samples, exact))
    slope = math.log2(errs[-2] / errs[-1])
    print("rk4 through torchdiffeq:", errs, "slope", slope)
    assert abs(slope - 4) < 0.3


def test_torchdiffeq_on_a_plain_velocity_field():
    field = VectorField(lambda x, t: -x, prediction="velocity")
    x0 = torch.ones(2, 3, dtype=torch.float64)
    res = Sampler(field, "odeint_dopri5", rtol=1e-9, atol=1e-10, progress=False).run(noise=x0)
    torch.testing.assert_close(res.samples, x0 * math.e, rtol=1e-7, atol=1e-8)   # dx/dt = -x from t=1 to 0
    assert res.nfe > 0 and res.stats["accepted"] >= 1


def test_reports_steps_and_shared_step_control(setup):
    prob, noise, _ = setup
    res = solve(prob, noise, "dpm_adaptive", order=2, rtol=0.05)
    st = res.stats
    assert st["accepted"] == res.steps == res.t.numel() - 1
    assert st["shared_step_control"] is True
    # a first step far too large must be rejected, and the rejection counted
    big = solve(prob, noise, "dpm_adaptive", order=2, rtol=0.05, h_init=8.0).stats
    assert big["rejected"] >= 1 and big["accepted"] >= 1
    # Order 2: 2 calls per attempt, 1 when the data prediction at the accepted point was kept from a rejection.
    attempts = st["accepted"] + st["rejected"]
    assert attempts + st["accepted"] <= res.nfe <= 2 * attempts
    assert torch.all(res.t[1:] < res.t[:-1])


def test_bad_options():
    with pytest.raises(InvalidArgument):
        get_solver("dpm_adaptive", order=4)
    with pytest.raises(InvalidArgument):
        get_solver("dpm_adaptive", rtol=-1.0)
    with pytest.raises(InvalidArgument):
        get_solver("dpm_adaptive", on_budget="ignore")
    with pytest.raises(InvalidArgument):
        get_solver("odeint", method="rk45")
    with pytest.raises(InvalidArgument):
        get_solver("odeint", frame="sigma")


def test_torchdiffeq_rk4_is_the_three_eighths_rule_on_our_grid(setup):
    """torchdiffeq's fixed 'rk4' is Kutta's 3/8 rule: in the EDM frame on the same grid it must agree with the
    built-in 'rk38' solver to round-off, final Euler step to zero noise and NFE included."""
    prob, noise, _ = setup
    a = Sampler(prob, "odeint", method="rk4", frame="edm", grid="time_uniform", progress=False).run(8, noise=noise)
    b = Sampler(prob, "rk38", grid="time_uniform", progress=False).run(8, noise=noise)
    assert a.nfe == b.nfe == 29
    tol = peer_tolerance("rk38", "odeint")
    torch.testing.assert_close(a.samples, b.samples, rtol=tol, atol=tol)
