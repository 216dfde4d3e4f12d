"""Measuring a solver's order of convergence on the analytic Gaussian.

The solvers' order tests, the learned corrections' order tests and the docs' solver table all measure with these
functions, so the order the site shows is the order the suite checks. Float64; error = RMS distance to the exact
probability-flow solution at the grid's last time; order = least-squares slope of log error against log steps
over the three finest grids.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from diffsolve.problems import GaussianProblem
from diffsolve.sampler import Sampler
from diffsolve.schedules import VPContinuous
from diffsolve.solvers import get_solver, registry_entries

STEPS = (16, 32, 64, 128)
ORDER_TOLERANCE = 0.3

# Multistep methods warmed up by lower-order steps reach their asymptotic regime later; these grids and step
# counts are where their declared order shows (measured; see the solver modules' docstrings).
ORDER_SETTINGS: dict[str, tuple[str, tuple[int, ...]]] = {
    "deis": ("time_uniform", (64, 128, 256, 512)),
    "learned_multistep": ("time_uniform", (64, 128, 256, 512)),     # untrained: DEIS at full order
    "pas": ("time_uniform", (64, 128, 256, 512)),                   # untrained: learned_multistep exactly
    "lms": ("logsnr_uniform", (32, 64, 128, 256)),
    "ipndm_v": ("logsnr_uniform", (32, 64, 128, 256)),
    "unipc_bh2": ("logsnr_uniform", (16, 32, 64, 128)),
    "dpmpp_3s": ("logsnr_uniform", (16, 32, 64, 128)),   # time_uniform starts with very uneven log-SNR steps
}

# Options that make a solver run its declared order everywhere on the measured grids (lower-order final steps
# would dominate the error otherwise), and native time for Runge-Kutta (the EDM frame makes the midpoint rule
# superconvergent on the Gaussian).
FULL_ORDER_OPTIONS = {"lower_order_final": False, "frame": "time"}

LEARNED_MODULE = "diffsolve.corrections"


@dataclass(frozen=True)
class MeasuredOrder:
    """One solver's order measured on the analytic Gaussian.

    Attributes:
        name: the registered solver name.
        declared: the order the solver declares (with `FULL_ORDER_OPTIONS`).
        measured: the fitted slope of log error against log steps.
        grid: the grid it was measured on.
        steps: the step counts.
        errors: the RMS error at each step count.
    """
    name: str
    declared: int
    measured: float
    grid: str
    steps: tuple[int, ...]
    errors: tuple[float, ...]


def full_order_options(name: str) -> dict:
    """The subset of `FULL_ORDER_OPTIONS` that a solver takes.

    Args:
        name: a registered solver name.

    Returns:
        The options to pass to `get_solver` or `Sampler` for the order measurement.
    """
    params = inspect.signature(type(get_solver(name)).__init__).parameters
    return {k: v for k, v in FULL_ORDER_OPTIONS.items() if k in params}


def why_order_is_not_measured(name: str) -> str | None:
    """Why a solver's order is not measured on refined fixed grids, or None when it is.

    Args:
        name: a registered solver name.

    Returns:
        A short reason for stochastic, adaptive and learned solvers; None for the deterministic fixed-step ones.
    """
    solver = get_solver(name)
    if not solver.deterministic:
        return "stochastic: weak order, checked in distribution"
    if getattr(solver, "adaptive", False):
        return "adaptive: the error follows rtol, not the step count"
    if getattr(registry_entries()[name].factory, "__module__", "").startswith(LEARNED_MODULE):
        return "learned: trained for a few steps; untrained it runs its base solver"
    return None


def slope(errors: Sequence[float], steps: Sequence[int] = STEPS, finest: int = 3) -> float:
    """The order: minus the least-squares slope of log error against log steps over the finest grids.

    Args:
        errors: the error at each step count.
        steps: the step counts, coarsest first.
        finest: how many of the finest step counts the fit uses.

    Returns:
        The fitted order.
    """
    x = torch.log(torch.tensor(steps[-finest:], dtype=torch.float64))
    y = torch.log(torch.tensor(errors[-finest:], dtype=torch.float64))
    xm, ym = x.mean(), y.mean()
    return float(-((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())


def convergence_errors(name: str, problem: GaussianProblem, grid: str, options: Mapping,
                       steps: Sequence[int] = STEPS) -> list[float]:
    """RMS error against the exact probability-flow solution at each step count.

    Args:
        name: a registered solver name.
        problem: an analytic problem with `ode_solution` and a diffusion schedule.
        grid: the grid name; its last time is the schedule's smallest noise (`final='min'`).
        options: the solver's options.
        steps: the step counts.

    Returns:
        One RMS error per step count (16 float64 samples from seed 1).
    """
    noise = torch.randn(16, problem.mean.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errs = []
    for n in steps:
        sampler = Sampler(problem, name, grid=grid, grid_options={"final": "min"}, progress=False, **options)
        out = sampler.run(steps=n, noise=noise)
        t0, t1 = float(out.t[0]), float(out.t[-1])
        exact = problem.ode_solution(noise * problem.schedule.prior_std(t0), t0, t1)
        errs.append(float((out.samples - exact).pow(2).mean().sqrt()))
    return errs


def order_problem() -> GaussianProblem:
    """The problem orders are measured on: the default 8-D Gaussian on a VP schedule with t_min = 0.01.

    Returns:
        The analytic Gaussian problem.
    """
    return GaussianProblem.default(schedule=VPContinuous(t_min=1e-2))


def measure_order(name: str, problem: GaussianProblem | None = None) -> MeasuredOrder:
    """Measure a deterministic fixed-step solver's order on the analytic Gaussian (about 0.1 to 0.7 s on a CPU).

    Args:
        name: a registered solver name (see `why_order_is_not_measured` for the ones this applies to).
        problem: the problem; `order_problem()` when None.

    Returns:
        The declared and measured orders, with the grid, step counts and errors behind them.
    """
    problem = order_problem() if problem is None else problem
    grid, steps = ORDER_SETTINGS.get(name, ("time_uniform", STEPS))
    options = full_order_options(name)
    errs = convergence_errors(name, problem, grid, options, steps)
    return MeasuredOrder(name, get_solver(name, **options).order, slope(errs, steps), grid, tuple(steps),
                         tuple(errs))
