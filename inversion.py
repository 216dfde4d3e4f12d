"""The ODE backwards: a Sampler's inversion grid and plan, data-to-noise integration and the invert-then-sample
round trip. `Sampler.inversion_times`, `inversion_plan`, `invert` and `round_trip` call these; the functions take
the Sampler (its field, solver, grid and settings) as their first argument.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from diffsolve.checks import MAX_STEPS, check_steps
from diffsolve.errors import InvalidArgument, check_bool, check_int
from diffsolve.grids import is_increasing, make_grid, refuse_increasing, takes_option, validate_grid
from diffsolve.loop import Evaluator, SampleResult, StepInfo, integrate
from diffsolve.solvers.base import Plan

__all__ = ["RoundTrip", "inversion_grid", "plan_inversion", "invert_data", "measure_round_trip"]


@dataclass
class RoundTrip:
    """Invert-then-sample with one solver and one grid: `error` is each sample's RMS distance to the data."""

    data: torch.Tensor
    noise: torch.Tensor                  # standard-normal latent (Sampler.run(noise=...) maps it back)
    reconstruction: torch.Tensor
    error: torch.Tensor                  # [batch] RMS over each sample's entries
    rms: float                           # RMS over the whole batch
    max_abs: float
    nfe_invert: int
    nfe_sample: int
    t: torch.Tensor                      # the inversion grid (increasing); sampling ran it reversed
    solver: str


def inversion_grid(sampler: Any, steps: int | None) -> torch.Tensor:
    """The sampler's inversion grid of `steps` steps: its sampling grid reversed, validated (see
    `Sampler.inversion_times`).

    Args:
        sampler: The Sampler whose grid, grid options and field's schedule are used.
        steps: The number of steps; None for an explicit grid (its own count).

    Returns:
        torch.Tensor: The increasing float64 times.

    Raises:
        InvalidArgument: `steps` disagrees with an explicit grid, or the grid is not valid for the schedule.
    """
    sch = sampler.field.schedule
    if isinstance(sampler.grid, str) or callable(sampler.grid):
        opts = dict(sampler.grid_options)
        if "final" not in opts and takes_option(sampler.grid, "final"):
            opts["final"] = "min"
        t = make_grid(sampler.grid, steps, sch, **opts).flip(0)
    else:
        t = torch.as_tensor(sampler.grid, dtype=torch.float64).clone()
        if not is_increasing(t):
            t = t.flip(0)
        if steps is not None and t.numel() - 1 != steps:
            raise InvalidArgument(f"steps={steps} does not match the explicit grid of {t.numel() - 1} steps")
    validate_grid(t, sch, "increasing")
    return t


def _zero_start(sampler: Any, t: torch.Tensor) -> bool:
    return sampler.field.has_schedule and float(t[0]) == 0.0


def plan_inversion(sampler: Any, steps: int | None, nfe: int | None) -> tuple[torch.Tensor, Plan | None]:
    """The inversion grid and the solver's plan of it (see `Sampler.inversion_plan`).

    Args:
        sampler: The Sampler whose solver inverts.
        steps: The number of steps, or None.
        nfe: A model-evaluation budget instead of steps (the most steps that fit), or None.

    Returns:
        tuple[torch.Tensor, Plan | None]: The increasing grid and the plan (None when no step needs a model call).

    Raises:
        InvalidArgument: The solver cannot invert, both or neither budget is given (named grids), or `nfe` is too
            small for one step.
    """
    why = sampler.solver.inversion_refusal()
    if why is not None:
        raise refuse_increasing(sampler.solver.name, why)
    explicit = not (isinstance(sampler.grid, str) or callable(sampler.grid))
    if steps is not None and nfe is not None:
        raise InvalidArgument("give steps= or nfe=, not both")
    if steps is None and nfe is None and not explicit:
        raise InvalidArgument("steps= or nfe= is missing: say how many steps (or model evaluations) to take")
    if steps is not None:
        steps = check_steps(check_int("steps", steps, 1))

    def planned(n: int | None) -> tuple[torch.Tensor, Plan | None]:
        """The grid of `n` steps and the plan of its model steps (a step out of t = 0 needs none)."""
        t = inversion_grid(sampler, n)
        rest = t[1:] if _zero_start(sampler, t) else t
        return t, (sampler.solver.plan(sampler.field, rest) if rest.numel() >= 2 else None)

    def cost(plan: Plan | None) -> int:
        """The model evaluations `plan` makes (0 for none)."""
        return (plan.nfe if plan is not None else 0) * sampler.field.evals_per_call

    if nfe is None or explicit:
        t, plan = planned(steps)
    else:
        nfe = check_int("nfe", nfe, 1)
        t, plan = planned(1)
        if cost(plan) > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small for solver {sampler.solver.name!r}, which needs "
                                  f"{cost(plan)} model evaluations for one step")
        t, plan = planned(_most_steps_within(sampler, nfe, lambda n: cost(planned(n)[1])))
    if nfe is not None and cost(plan) > nfe:
        raise InvalidArgument(f"nfe={nfe} is too small: solver {sampler.solver.name!r} needs {cost(plan)} model "
                              "evaluations to invert on this grid")
    return t, plan


def _most_steps_within(sampler: Any, nfe: int, cost: Callable[[int], int]) -> int:
    """The most inversion steps whose cost fits `nfe` (cost(1) fits): double, then bisect, up to MAX_STEPS."""
    try:                                      # refuse a huge budget before planning anything big
        check_steps(sampler.steps_for_nfe(nfe), nfe)
    except InvalidArgument as e:
        if "too small" not in str(e):         # the free step out of t = 0 may still fit
            raise
    lo, hi = 1, 2
    while hi <= MAX_STEPS and cost(hi) <= nfe:
        lo, hi = hi, 2 * hi
    hi = min(hi, MAX_STEPS + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= nfe else (lo, mid)
    return lo


def invert_data(sampler: Any, x0: torch.Tensor, steps: int | None, *, nfe: int | None,
                callback: Callable[[StepInfo], None] | None, return_trajectory: bool, progress: bool | None,
                dtype: torch.dtype | None, grad: bool, **model_kwargs: Any) -> SampleResult:
    """Integrate from data `x0` to noise on the sampler's grid reversed (see `Sampler.invert`).

    Args:
        sampler: The Sampler whose field and solver integrate.
        x0: A floating batch of data `(batch, *sample_shape)`.
        steps: The number of steps, or None.
        nfe: A model-evaluation budget instead of steps, or None.
        callback: Called with a StepInfo after each step, or None.
        return_trajectory: Keep every step's state.
        progress: Show a progress bar; None: the Sampler's setting.
        dtype: The state's dtype (a torch dtype already checked); None: that of `x0`.
        grad: Record the autograd graph.
        **model_kwargs: Passed to the network at every call.

    Returns:
        SampleResult: `.samples` is the latent as standard-normal noise; `stats["x_end"]` the unscaled state.

    Raises:
        InvalidArgument: A bad `x0` or argument, or a solver that cannot invert.
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise InvalidArgument("x0 must be a floating-point torch.Tensor (a batch of data)")
    want = sampler.field.sample_shape
    if want is not None and tuple(x0.shape[1:]) != tuple(want):
        raise InvalidArgument(f"x0 has shape {tuple(x0.shape)} but the model expects (batch, *{tuple(want)})")
    check_bool("grad", grad)
    check_bool("return_trajectory", return_trajectory)
    t, plan = plan_inversion(sampler, steps, nfe)
    x = x0.to(dtype) if dtype is not None else x0
    ev = Evaluator(sampler.field, model_kwargs, sampler.check_finite)
    show = sampler.progress if progress is None else check_bool("progress", progress)
    zero = _zero_start(sampler, t)
    traj = [x] if return_trajectory else None
    with torch.set_grad_enabled(grad):
        if zero:
            p0, p1 = sampler.field.at(0.0), sampler.field.at(float(t[1]))
            x = x * (p1.alpha / p0.alpha)     # DDIM from t = 0 with D = x0 and eps_hat = 0: no model call
            if traj is not None:
                traj.append(x)
            if callback is not None:
                callback(StepInfo(0, 0.0, float(t[1]), x, x0, 0))
        if plan is not None:
            cb = callback
            if zero and callback is not None:
                cb = lambda info: callback(StepInfo(info.i + 1, info.t, info.t_next, info.x,  # noqa: E731
                                                    info.denoised, info.nfe))
            res = integrate(sampler.solver, ev, x, plan, callback=cb, return_trajectory=return_trajectory,
                            progress=show)
            x = res.samples
            if traj is not None:
                traj.extend(res.trajectory[1:])
    t_end = float(t[-1])
    scale = sampler.field.schedule.prior_std(t_end) if sampler.field.schedule is not None else 1.0
    return SampleResult(samples=x / scale, nfe=ev.nfe, steps=t.numel() - 1, t=t, solver=sampler.solver.name,
                        trajectory=torch.stack(traj) if traj is not None else None,
                        stats={"direction": "increasing", "x_end": x, "prior_std": scale, "zero_start": zero})


def measure_round_trip(sampler: Any, x0: torch.Tensor, steps: int | None, *, nfe: int | None, dtype: Any,
                       **model_kwargs: Any) -> RoundTrip:
    """Invert `x0`, sample the latent back on the same grid reversed, and measure the error (see
    `Sampler.round_trip`).

    Args:
        sampler: The Sampler that inverts and samples.
        x0: A floating batch of data `(batch, *sample_shape)`.
        steps: The number of steps, or None.
        nfe: A budget for the inversion's model evaluations, or None.
        dtype: The state's dtype (a torch dtype or its name); None: that of `x0`.
        **model_kwargs: Passed to the network at every call.

    Returns:
        RoundTrip: The latent, the reconstruction and its error against `x0`.

    Raises:
        InvalidArgument: As `Sampler.invert`.
    """
    inv = sampler.invert(x0, steps, nfe=nfe, dtype=dtype, progress=False, **model_kwargs)
    back = sampler.solver.plan(sampler.field, inv.t.flip(0))
    rec = sampler.solve(back, inv.samples, progress=False, **model_kwargs)
    ref = x0.to(rec.samples.dtype)
    diff = (rec.samples - ref).reshape(ref.shape[0], int(ref[0].numel()) if ref.shape[0] else 0)
    err = diff.pow(2).mean(dim=1).sqrt()
    empty = diff.numel() == 0                 # an empty batch: no error to measure (NaN)
    return RoundTrip(data=x0, noise=inv.samples, reconstruction=rec.samples, error=err,
                     rms=float(diff.pow(2).mean().sqrt()), max_abs=math.nan if empty else float(diff.abs().max()),
                     nfe_invert=inv.nfe, nfe_sample=rec.nfe, t=inv.t, solver=sampler.solver.name)
