"""Every deterministic solver in the registry converges at its declared order on the analytic Gaussian.

Float64; error = RMS distance to the exact probability-flow solution; slope = least-squares fit of log error
against log steps over the three finest grids; it must lie within 0.3 of the declared order.
"""
import pytest
import torch

from diffsolve import EDMSchedule, Sampler, available_solvers, get_solver
from diffsolve.analysis.convergence import (
    ORDER_TOLERANCE, STEPS, convergence_errors, measure_order, slope, why_order_is_not_measured)
from diffsolve.problems import GaussianProblem
from conftest import untrained_corrections


def _is_fixed_step(name):
    s = get_solver(name)
    return s.deterministic and not getattr(s, "adaptive", False)


DETERMINISTIC = [n for n in available_solvers() if _is_fixed_step(n)]


def test_registry_has_the_foundation_solvers():
    for name in ("euler", "ddim", "heun", "midpoint", "rk3", "rk4", "dpmpp_2m"):
        assert name in DETERMINISTIC


@pytest.mark.slow
@untrained_corrections
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_declared_order_on_gaussian(name):
    """The measurement the docs' solver table shows (docs/hooks.py calls the same measure_order), so the table's
    measured orders are within ORDER_TOLERANCE of the declared ones."""
    m = measure_order(name)
    assert abs(m.measured - m.declared) <= ORDER_TOLERANCE, f"{name}: measured {m.measured:.2f}; {m}"
    assert m.errors[-1] < m.errors[0]


def test_every_solver_is_measured_or_says_why_not():
    """The docs' table measures exactly the deterministic fixed-step solvers that are not learned corrections; the
    rest carry a reason (stochastic, adaptive, learned), and the learned ones are still measured above, untrained."""
    measured = {n for n in available_solvers() if why_order_is_not_measured(n) is None}
    assert measured <= set(DETERMINISTIC) and {"euler", "heun", "rk4", "dpmpp_2m", "deis"} <= measured
    assert why_order_is_not_measured("ddpm").startswith("stochastic")
    assert why_order_is_not_measured("odeint_dopri5").startswith("adaptive")
    assert why_order_is_not_measured("amed").startswith("learned")


# In the EDM frame (the default for diffusion schedules) the Gaussian's solution is mu + c sqrt(v + s^2), on which
# the midpoint rule gains one order; every other tableau shows exactly its order there.
SUPERCONVERGENT_IN_EDM_FRAME = {"midpoint": 1}


@pytest.mark.parametrize("name", ["heun", "midpoint", "ralston", "rk3", "bosh3", "rk4", "rk38", "dpmpp_2m", "euler"])
def test_edm_frame_orders(name):
    problem = GaussianProblem.default(schedule=EDMSchedule(0.05, 10.0))
    opts = {"lower_order_final": False} if name == "dpmpp_2m" else {}
    errs = convergence_errors(name, problem, "karras", opts, steps=(8, 16, 32, 64))
    expected = get_solver(name).order + SUPERCONVERGENT_IN_EDM_FRAME.get(name, 0)
    measured = slope(errs, steps=(8, 16, 32, 64))
    assert abs(measured - expected) <= ORDER_TOLERANCE, f"{name}: expected {expected}, measured {measured:.2f}"


def test_heun_to_zero_costs_2n_minus_1_and_lands_on_the_denoised_state():
    problem = GaussianProblem.default()
    out = Sampler(problem, "heun", progress=False).run(steps=10, batch_size=3, seed=0, dtype=torch.float64)
    assert out.nfe == 19 and float(out.t[-1]) == 0.0
    assert torch.isfinite(out.samples).all()


# ------------------------------------------------------------------------------------------------
# Plain velocity fields (schedule=None): Adams-Bashforth in the field's own time
# ------------------------------------------------------------------------------------------------
PLAIN_AB = ("ipndm", "ipndm_v", "lms")


def plain_errors(name, grid_of, steps, **options):
    from diffsolve.problems import LinearFlowProblem
    problem = LinearFlowProblem()
    noise = torch.rand(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4 - 2  # any source
    exact = problem.ode_solution(noise, 1.0, 0.0)
    errs = []
    for n in steps:
        out = Sampler(problem, name, grid=grid_of(n), progress=False, **options).run(noise=noise)
        assert out.nfe == len(out.t) - 1
        errs.append(float((out.samples - exact).pow(2).mean().sqrt()))
    return errs


def uniform(n):
    return torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)


def warped(n):
    u = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)
    return 0.7 * u ** 2 + 0.3 * u


def refined_start(n):
    """Uniform in t after three short warm-start steps (h^2.5, h^(5/3), h^1.25): their local errors (orders 1-3)
    stay below h^5, so the run shows the order-4 body of a variable-step rule."""
    h = 1.0 / n
    start = 1.0 - torch.tensor([0.0, h ** 2.5, h ** 2.5 + h ** (5 / 3), h ** 2.5 + h ** (5 / 3) + h ** 1.25],
                               dtype=torch.float64)
    return torch.cat([start, torch.linspace(float(start[-1]), 0.0, n + 1, dtype=torch.float64)[1:]])


@pytest.mark.parametrize("name", PLAIN_AB)
@pytest.mark.parametrize("grid_of", [uniform, warped], ids=["uniform", "warped"])
def test_plain_field_ab_declared_order(name, grid_of):
    """Declared plain_order 2 for the default order 4 (the warm start's Euler step, local error h^2, limits any AB
    run on a grid of equal-order steps; iPNDM's constant weights on varying steps too)."""
    solver = get_solver(name)
    assert not solver.needs_schedule
    expected = solver.plain_order if name == "ipndm" else 2
    errs = plain_errors(name, grid_of, STEPS)
    measured = slope(errs)
    assert abs(measured - expected) <= ORDER_TOLERANCE, f"{name}: expected {expected}, measured {measured:.2f}, {errs}"


@pytest.mark.parametrize("name", ["ipndm_v", "lms"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_plain_field_variable_step_ab_body_order(name, order):
    """The variable-step rules' own order (their declared plain_order) shows once the warm start is refined."""
    solver = get_solver(name, order=order)
    errs = plain_errors(name, refined_start, STEPS, order=order)
    measured = slope(errs)
    assert solver.plain_order == order
    assert abs(measured - order) <= ORDER_TOLERANCE, f"{name} order {order}: measured {measured:.2f}, errors {errs}"


def test_plain_field_ab_matches_euler_at_order_1_and_refuses_afs():
    from diffsolve.problems import LinearFlowProblem
    from diffsolve.errors import InvalidArgument
    problem = LinearFlowProblem()
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e = Sampler(problem, "euler", progress=False).run(steps=7, noise=noise).samples
    for name in PLAIN_AB:
        a = Sampler(problem, name, order=1, progress=False).run(steps=7, noise=noise).samples
        assert torch.equal(a, e), name
        with pytest.raises(InvalidArgument, match="afs=True.*plain velocity field"):
            Sampler(problem, name, afs=True, progress=False).run(steps=4, noise=noise)
    with pytest.raises(InvalidArgument, match="needs a Gaussian noise schedule"):
        Sampler(problem, "deis", progress=False)
