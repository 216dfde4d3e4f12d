"""Inversion: deterministic fixed-step solvers integrate from data to noise on the sampling grid reversed.

The analytic Gaussian gives the exact transport (GaussianProblem.ode_solution), so the inversion's own error and
the invert-then-sample round trip are measured against closed forms, in float64.
"""
import math

import pytest
import torch

from diffsolve import EDMSchedule, InvalidArgument, RectifiedFlow, Sampler, VPContinuous, available_solvers, get_solver
from diffsolve.models import load_mnist_unet
from diffsolve.problems import GaussianProblem
from diffsolve.grids import validate_grid
from diffsolve.solvers.multistep import step_orders

VP = VPContinuous(t_min=1e-2)


def _fixed_step(name):
    s = get_solver(name)
    return s.deterministic and not s.adaptive


DETERMINISTIC = [n for n in available_solvers() if _fixed_step(n) and get_solver(n).inversion_refusal() is None]
# Fixed-step solvers that refuse to run backwards, each for its stated reason (learned sampling-only corrections)
REFUSING = [n for n in available_solvers() if _fixed_step(n) and get_solver(n).inversion_refusal() is not None]
STOCHASTIC = available_solvers(deterministic=False)
ADAPTIVE = [n for n in available_solvers(deterministic=True) if get_solver(n).adaptive]


def _data(problem, n=8, seed=0):
    return problem.sample_data(n, torch.Generator().manual_seed(seed))


def slope(errors, steps):
    x = torch.log(torch.tensor(steps, dtype=torch.float64))
    y = torch.log(torch.tensor(errors, dtype=torch.float64))
    xm, ym = x.mean(), y.mean()
    return float(-((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())


def test_validate_grid_takes_a_direction():
    validate_grid(torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64), VP, "increasing")
    validate_grid(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), VP, "increasing")
    with pytest.raises(InvalidArgument, match="strictly decreasing.*Sampler.invert"):
        validate_grid(torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64), VP)
    with pytest.raises(InvalidArgument, match="strictly increasing"):
        validate_grid(torch.tensor([0.01, 0.5, 0.4], dtype=torch.float64), VP, "increasing")
    with pytest.raises(InvalidArgument, match="above the schedule's t_max"):
        validate_grid(torch.tensor([0.01, 0.5, 1.5], dtype=torch.float64), VP, "increasing")


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_every_deterministic_solver_accepts_an_increasing_grid(name):
    problem = GaussianProblem.default(schedule=VP)
    x0 = _data(problem)
    s = Sampler(problem, name, progress=False)
    t = s.inversion_times(24)
    assert t[0] == VP.t_min and t[-1] == VP.t_max and torch.all(t[1:] > t[:-1])
    plan = s.solver.plan(s.field, t)                     # the solver itself plans an increasing grid
    inv = s.invert(x0, 24, dtype=torch.float64)
    assert inv.nfe == plan.nfe and inv.steps == 24 and torch.isfinite(inv.samples).all()
    exact = problem.ode_solution(x0, float(t[0]), float(t[-1]))
    # 24 steps from data to noise (the latent's scale is 1 on a VP path). Euler is first order (0.25 here);
    # lms / ipndm_v extrapolate a polynomial in s over steps that grow along an inversion, and lower a step's
    # order where it outgrows the past slopes' spacing (without that: 1e3 at 12 steps).
    assert float((inv.stats["x_end"] - exact).abs().max()) < 0.35, name


@pytest.mark.parametrize("name", STOCHASTIC + ADAPTIVE)
def test_samplers_that_cannot_run_backwards_refuse_with_the_reason(name):
    problem = GaussianProblem.default(schedule=VP)
    s = Sampler(problem, name, progress=False)
    why = "stochastic" if name in STOCHASTIC else "step-size control"
    with pytest.raises(InvalidArgument, match=f"strictly decreasing in noise.*{why}"):
        s.invert(_data(problem), 4)
    with pytest.raises(InvalidArgument, match="strictly decreasing in noise"):
        s.solver.plan(s.field, torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64))


# Inversion alone against the exact transport: the declared order. Round trip (invert, then sample back on the
# same grid): at least the declared order (for even orders the leading local errors of the two directions
# cancel, so heun, rk4 and dpmpp_2m come back one order better).
ORDER_CASES = {
    "euler": (16, 32, 64),
    "heun": (16, 32, 64),
    "rk4": (8, 16, 32),
    "dpmpp_2m": (16, 32, 64),
    "unipc_bh2": (16, 32, 64),
    "dpmpp_3s": (16, 32, 64),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ORDER_CASES))
def test_inversion_and_round_trip_converge_at_the_solver_order(name):
    problem = GaussianProblem.default(schedule=VP)
    x0 = _data(problem)
    steps = ORDER_CASES[name]
    inv_errs, rt_errs = [], []
    for n in steps:
        s = Sampler(problem, name, progress=False)
        rt = s.round_trip(x0, n, dtype=torch.float64)
        inv = s.invert(x0, n, dtype=torch.float64)
        exact = problem.ode_solution(x0, float(inv.t[0]), float(inv.t[-1]))
        inv_errs.append(float((inv.stats["x_end"] - exact).pow(2).mean().sqrt()))
        rt_errs.append(rt.rms)
        assert rt.nfe_invert == inv.nfe
    order = get_solver(name).order
    assert abs(slope(inv_errs, steps) - order) <= 0.35, (name, inv_errs)
    assert slope(rt_errs, steps) >= order - 0.3, (name, rt_errs)
    assert rt_errs[-1] < rt_errs[0]


def test_latent_is_standard_noise_and_run_maps_it_back():
    problem = GaussianProblem.default(schedule=EDMSchedule())     # prior_std = 80: the data is never scaled
    x0 = _data(problem)
    s = Sampler(problem, "heun", progress=False)
    inv = s.invert(x0, 32, dtype=torch.float64)
    assert inv.stats["prior_std"] == pytest.approx(80.0, rel=1e-12)
    torch.testing.assert_close(inv.samples * inv.stats["prior_std"], inv.stats["x_end"])
    # the latent of Gaussian data is standard normal after the exact map: z = (x_T - alpha m)/std
    exact = problem.ode_solution(x0, float(inv.t[0]), float(inv.t[-1])) / 80.0
    assert float((inv.samples - exact).abs().max()) < 0.1      # Heun, 32 steps: the solver error
    back = s.solve(s.solver.plan(s.field, inv.t.flip(0)), inv.samples)
    assert float((back.samples - x0).abs().max()) < 1e-2


def test_start_at_exact_zero_noise_needs_no_model_call():
    problem = GaussianProblem.default(schedule=VP)
    x0 = _data(problem)
    errs = []
    for n in (32, 64, 128):
        s = Sampler(problem, "heun", grid_options={"final": "zero"}, progress=False)
        inv = s.invert(x0, n, dtype=torch.float64)
        assert float(inv.t[0]) == 0.0 and inv.stats["zero_start"]
        # the step out of t = 0 is free; the other n - 1 Heun steps cost 2 calls each
        assert inv.nfe == 2 * (n - 1)
        exact = problem.ode_solution(x0, 0.0, float(inv.t[-1]))
        errs.append(float((inv.stats["x_end"] - exact).pow(2).mean().sqrt()))
    # the first step (eps_hat frozen at its exact value 0 at t = 0) is first order
    assert 0.7 <= slope(errs, (32, 64, 128)) <= 1.3, errs
    one = Sampler(problem, "euler", grid=[0.0, 0.3], progress=False).invert(x0)
    assert one.nfe == 0
    torch.testing.assert_close(one.stats["x_end"], x0 * float(VP.alpha(0.3)))
    with pytest.raises(InvalidArgument, match="start above zero noise"):
        get_solver("heun").plan(s.field, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))


def test_direction_rules_afs_and_lower_order_final():
    problem = GaussianProblem.default(schedule=VP)
    s = Sampler(problem, "dpmpp_2m", afs=True, progress=False)
    t = s.inversion_times(6)
    plan = s.solver.plan(s.field, t)
    assert plan.nfe == 6 and all(c.afs is None for c in plan.coeffs)      # no analytical first step at low noise
    assert [c.order for c in plan.coeffs] == [1, 2, 2, 2, 2, 2]           # lower_order_final: not on the way up
    down = s.solver.plan(s.field, t.flip(0))
    assert down.nfe == 5 and down.coeffs[0].afs is not None and down.coeffs[-1].order == 1
    # a step into pure noise (rectified flow at t = 1) is first order in every multistep family
    assert step_orders([1.0, 0.0, -1.0, -math.inf], 3, False, False, increasing=True) == (1, 2, 1)


def test_nfe_budget_for_inversion():
    problem = GaussianProblem.default(schedule=VP)
    x0 = _data(problem)
    s = Sampler(problem, "heun", progress=False)
    inv = s.invert(x0, nfe=11)
    assert inv.nfe == 10 and inv.steps == 5
    with pytest.raises(InvalidArgument, match="nfe=1 is too small"):
        s.invert(x0, nfe=1)


@pytest.mark.parametrize("name", ["euler", "heun", "rk4", "dpmpp_2m", "dpm_solver_2"])
def test_rectified_flow_inversion_to_pure_noise(name):
    problem = GaussianProblem.default(schedule=RectifiedFlow())
    x0 = _data(problem)
    s = Sampler(problem, name, progress=False)
    inv = s.invert(x0, 64, dtype=torch.float64)
    exact = problem.ode_solution(x0, float(inv.t[0]), 1.0)
    assert float(inv.t[-1]) == 1.0
    assert float((inv.stats["x_end"] - exact).abs().max()) < (0.1 if name == "euler" else 0.02), name


def test_readme_block_on_inversion_and_likelihood_runs():
    import contextlib
    import io
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "docs/ode-both-ways.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "round_trip" in b)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "docs/ode-both-ways.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("torch.Size([8, 4]) 40 ")
    assert lines[1].startswith("True ")


@pytest.mark.parametrize("name", REFUSING)
def test_learned_sampling_corrections_refuse_an_inversion_with_their_reason(name):
    problem = GaussianProblem.default(schedule=VP)
    with pytest.raises(InvalidArgument, match="decreasing"):
        Sampler(problem, name, progress=False).invert(_data(problem), 6)


@pytest.mark.parametrize("name", ["euler", "rk4", "ipndm", "ipndm_v", "lms"])
def test_plain_velocity_field_inverts_from_t0(name):
    """On a plain velocity field t = 0 is an ordinary point (no 0/0 slope): the inversion starts there, lands
    near the exact solution at t = 1 and maps back."""
    from diffsolve.problems import LinearFlowProblem
    problem = LinearFlowProblem()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = Sampler(problem, name, progress=False)
    inv = s.invert(x, steps=64)
    assert float(inv.t[0]) == 0.0 and float(inv.t[-1]) == 1.0
    tol = 0.2 if name == "euler" else 5e-3
    assert float((inv.samples - problem.ode_solution(x, 0.0, 1.0)).abs().max()) < tol
    assert float((s.run(steps=64, noise=inv.samples).samples - x).abs().max()) < 1.5 * tol


# ------------------------------------------------------------------------------------------------
# Few steps: every solver that inverts round-trips with an error bounded by its order, never garbage
# ------------------------------------------------------------------------------------------------
def _few_step_bound(order, steps):
    """B (5/n)^q: at 5 to 20 steps the rules are not yet in their asymptotic range (the convergence tests above
    check the orders), so first-order rules get q = 0.7 and the others q = 1.5, from B = 1 and 2.5 at 5 steps.
    Before the growing-step fix lms and ipndm_v came back with errors of 50 (10 steps) to 7000 (5 steps)."""
    b, q = (1.0, 0.7) if order == 1 else (2.5, 1.5)
    return b * (5 / steps) ** q


@pytest.mark.parametrize("schedule", [VP, EDMSchedule()], ids=["vp", "edm"])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_round_trip_at_5_10_and_20_steps_is_bounded_by_the_order(name, schedule):
    problem = GaussianProblem.default(schedule=schedule)
    x0 = _data(problem)
    order = get_solver(name).order
    for n in (5, 10, 20):
        s = Sampler(problem, name, progress=False)
        rt = s.round_trip(x0, n, dtype=torch.float64)
        assert rt.rms <= _few_step_bound(order, n), (name, n, rt.rms)
        assert 0.3 < float(rt.noise.std()) < 3.0, (name, n)         # the latent is about standard noise


@pytest.mark.parametrize("name", ["lms", "ipndm_v"])
def test_variable_step_adams_bashforth_inverts_on_steps_that_grow(name):
    # Inverted, a karras grid's steps grow up to 30x a step: extrapolating the past slopes over such a step
    # lowers the step's order (SlopeMultistep.extrapolation_order); the full order returns as steps grow gently.
    problem = GaussianProblem.default(schedule=EDMSchedule())
    x0 = _data(problem)
    s = Sampler(problem, name, progress=False)
    # 10 steps: each inverted step is over 1.5x the last, so every step is first order, the DDIM inversion
    assert all(c.order == 1 for c in s.solver.plan(s.field, s.inversion_times(10)).coeffs)
    torch.testing.assert_close(s.invert(x0, 10, dtype=torch.float64).samples,
                               Sampler(problem, "ddim", progress=False).invert(x0, 10, dtype=torch.float64).samples)
    orders = [c.order for c in s.solver.plan(s.field, s.inversion_times(40)).coeffs]
    assert orders[:4] == [1, 1, 1, 1] and orders[-1] == 4      # the full order returns as steps grow gently
    sampling = s.plan(10)                                       # sampling keeps every step's order
    assert [c.order for c in sampling.coeffs] == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    steps, errs = (40, 80, 160), []
    for n in steps:
        inv = s.invert(x0, n, dtype=torch.float64)
        exact = problem.ode_solution(x0, float(inv.t[0]), float(inv.t[-1]))
        errs.append(float((inv.stats["x_end"] - exact).pow(2).mean().sqrt()))
    assert slope(errs, steps) >= get_solver(name).order - 0.3, errs


def test_grids_without_a_final_option_invert():
    problem = GaussianProblem.default(schedule=EDMSchedule())
    x0 = _data(problem)

    def optimized(steps, schedule, **options):       # like a GITS / learned grid: takes no options at all
        if options:
            raise InvalidArgument(f"an optimized grid takes no grid options, got {sorted(options)}")
        return torch.cat([torch.logspace(math.log10(80.0), -2, steps, dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64)])

    def positional(steps, schedule):
        return optimized(steps, schedule)

    for grid in (optimized, positional):
        s = Sampler(problem, "heun", grid=grid, progress=False)
        inv = s.invert(x0, 12, dtype=torch.float64)
        assert float(inv.t[0]) == 0.0 and inv.stats["zero_start"] and float(inv.t[-1]) == pytest.approx(80.0)
        assert s.round_trip(x0, 12, dtype=torch.float64).rms < 0.5
    with pytest.raises(InvalidArgument, match=r"no grid options, got \['final'\]"):   # asked for: still refused
        Sampler(problem, "heun", grid=optimized, grid_options={"final": "min"}, progress=False).invert(x0, 4)


@pytest.mark.parametrize("grid", ["gits", "learned"])
def test_shipped_optimized_grids_invert(grid):
    s = Sampler(load_mnist_unet(), "ipndm", grid=grid, progress=False)
    x0 = torch.zeros(2, 1, 28, 28)
    inv = s.invert(x0, 3)
    assert float(inv.t[0]) == 0.0 and torch.isfinite(inv.samples).all()
