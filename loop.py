"""The one integration loop: fixed grids, adaptive step-size control and whole-span bridges, with NFE counting,
the non-finite check, callbacks, progress and the trajectory written once for every solver.

On a fixed grid nothing inside the loop syncs with the device: coefficients come from the solver's plan, the
NFE count is a Python integer, and each model output leaves a device-side finite flag that is read once after
the loop (the error names the first bad step). The same fixed loop runs inside a CUDA-graph capture
(capture.GraphedRun), with the read deferred to after the replay. Adaptive control reads one error norm per attempt.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from diffsolve.errors import NonFiniteError
from diffsolve.progress import progress_iter
from diffsolve.solvers.base import Solver
from diffsolve.solvers.run import Evaluator, SampleResult, StepInfo
from diffsolve.solvers.span import budget_exhausted, finish_span

__all__ = ["integrate", "integrate_adaptive", "Evaluator", "SampleResult", "StepInfo"]


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def integrate(solver: Solver, ev: Evaluator, x: torch.Tensor, plan: Any, *,
              callback: Callable[[StepInfo], None] | None = None, return_trajectory: bool = False,
              progress: bool = False, raise_nonfinite: bool = True) -> SampleResult:
    """Integrate `x` along a plan: a fixed grid, an adaptive span (solvers.adaptive) or a whole-span bridge.

    An empty batch (no samples) gives an empty result with no model call, the same for every solver.

    Args:
        solver: the Solver.
        ev: the run's Evaluator (field, model keywords, finite check, step noise).
        x: the starting state.
        plan: the solver's Plan (or SpanPlan).
        callback: called with a StepInfo after each step.
        return_trajectory: keep every step's state.
        progress: show a tqdm progress bar.
        raise_nonfinite: read the finite flags and raise after the loop (the CUDA-graph capture reads them after the
            replay instead).

    Returns:
        The SampleResult.

    Raises:
        NonFiniteError: a model output held NaN or Inf (naming the first such step).
    """
    if x.numel() == 0:
        return empty_result(solver, x, plan, return_trajectory)
    if getattr(plan, "span", None) is not None:
        if hasattr(solver, "solve_span"):
            return solver.solve_span(ev, x, plan, callback=callback, return_trajectory=return_trajectory)
        return integrate_adaptive(solver, ev, x, plan, callback=callback, return_trajectory=return_trajectory)
    state = solver.init(plan)
    traj = [x] if return_trajectory else None
    steps = range(plan.steps)
    if progress:    # a bar in a terminal; plain lines every ~10 s elsewhere (log files, CI)
        steps = progress_iter(steps, solver.name, unit="steps", leave=False, announce=False, heartbeat=False)
    for i in steps:
        ev.step = i
        x, _, state = solver.step(ev, x, plan.points[i], plan.points[i + 1], state, plan.coeffs[i])
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(StepInfo(i, float(plan.t[i]), float(plan.t[i + 1]), x, ev.last_denoised, ev.nfe))
    if raise_nonfinite:
        ev.raise_if_bad(plan.t)
    return SampleResult(samples=x, nfe=ev.nfe, steps=plan.steps, t=plan.t, solver=solver.name,
                        trajectory=torch.stack(traj) if traj is not None else None)


def empty_result(solver: Solver, x: torch.Tensor, plan: Any, return_trajectory: bool) -> SampleResult:
    """The result of integrating no samples: nothing to evaluate, so no model call (adaptive control and the
    bridges would otherwise size their steps on an error norm of nothing).

    Args:
        solver: the Solver.
        x: the empty batch.
        plan: the plan.
        return_trajectory: fill a trajectory of copies.

    Returns:
        A SampleResult with nfe 0 and stats {"empty": True}.
    """
    traj = x.unsqueeze(0).expand(len(plan.t), *x.shape).clone() if return_trajectory else None
    steps = plan.steps if getattr(plan, "span", None) is None else 0
    return SampleResult(samples=x.clone(), nfe=0, steps=steps, t=plan.t, solver=solver.name, trajectory=traj,
                        stats={"empty": True})


def integrate_adaptive(solver: Solver, ev: Evaluator, x: torch.Tensor, plan: Any, *,
                       callback: Callable[[StepInfo], None] | None = None,
                       return_trajectory: bool = False) -> SampleResult:
    """Adaptive stepping: the controller proposes an interval, the solver's own step integrates it and returns
    its error estimate, the controller accepts or rejects and proposes the next (one host read per attempt).

    Args:
        solver: an adaptive solver with a `controller`.
        ev: the run's Evaluator.
        x: the starting state.
        plan: a SpanPlan.
        callback: called after each accepted step.
        return_trajectory: keep accepted states.

    Returns:
        The SampleResult; `stats` holds accepted/rejected steps and whether the span was completed.

    Raises:
        BudgetExceeded: the budget ran out with on_budget="raise". NonFiniteError: a NaN/Inf error estimate.
    """
    field = ev.field
    span = plan.span
    ctrl = solver.controller
    cstate = ctrl.start(field, span, solver)
    p0 = field.at(span.t_start)
    state = solver.init(plan)
    times, states = [span.t_start], ([x] if return_trajectory else None)
    accepted = rejected = 0
    last_low = x
    while not ctrl.done(cstate):
        need = solver.calls_per_attempt(x, state) + (1 if span.final_denoise else 0)
        why = budget_exhausted(solver, ev, accepted + rejected, span, need)
        if why is not None:
            return finish_span(solver, ev, x, plan, times, states, accepted, rejected, completed=False,
                               t_reached=p0.t, why=why)
        ev.step = accepted
        p1 = field.at(ctrl.propose(cstate, field))
        coeffs = solver.coefficients(field, p0, p1)
        x1, err, new_state = solver.step(ev, x, p0, p1, state, coeffs)
        E = ctrl.error_norm(err, x1, last_low)            # the one host read per attempted step
        if not math.isfinite(E):
            ev.raise_if_bad(torch.tensor(times + [p1.t], dtype=torch.float64))
            raise NonFiniteError(accepted, p1.t, what="adaptive error estimate")
        accept = E <= 1.0
        cstate = ctrl.update(cstate, p0, p1, E, accept)
        if accept:
            last_low = x1 - err
            x, p0 = x1, p1
            state = solver.accepted(new_state)
            accepted += 1
            times.append(p1.t)
            if states is not None:
                states.append(x)
            if callback is not None:
                callback(StepInfo(accepted - 1, times[-2], p1.t, x, ev.last_denoised, ev.nfe))
        else:
            state = new_state                              # what the attempt computed at the start is reused
            rejected += 1
    return finish_span(solver, ev, x, plan, times, states, accepted, rejected, completed=True, t_reached=p0.t)
