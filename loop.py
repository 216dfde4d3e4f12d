"""The one integration loop: fixed grids, adaptive step-size control and whole-span bridges, with NFE counting,
the non-finite check, callbacks, progress and the trajectory written once for every solver.

On a fixed grid nothing inside the loop syncs with the device: coefficients come from the solver's plan, the
NFE count is a Python integer, and each model output leaves a device-side finite flag that is read once after
the loop (the error names the first bad step). The same fixed loop runs inside a CUDA-graph capture
(kernels.graph), with the read deferred to after the replay. Adaptive control reads one error norm per attempt.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from diffsolve.errors import BudgetExceeded, InvalidArgument, NonFiniteError
from diffsolve.field import EvalPoint, Field, FieldOutput
from diffsolve.kernels import nonfinite
from diffsolve.noise import NoiseSource
from diffsolve.solvers.base import Solver


@dataclass
class StepInfo:
    """What a callback receives after each accepted step."""

    i: int
    t: float
    t_next: float
    x: torch.Tensor
    denoised: torch.Tensor | None
    nfe: int


@dataclass
class SampleResult:
    """Samples, the exact number of model evaluations per sample made, the grid, and (on request) the trajectory."""

    samples: torch.Tensor
    nfe: int
    steps: int
    t: torch.Tensor
    solver: str
    trajectory: torch.Tensor | None = None
    stats: dict | None = None           # adaptive runs: accepted/rejected steps, completed flag


class Evaluator:
    """Per-run wrapper of the field that counts model evaluations and flags non-finite outputs by step."""

    def __init__(self, field: Field, model_kwargs: dict, check_finite: bool,
                 noise_source: NoiseSource | None = None):
        self.field = field
        self.kwargs = model_kwargs
        self.check_finite = check_finite
        self.nfe = 0
        self.step = 0
        self.flags: list[tuple[int, torch.Tensor]] = []
        self.last: FieldOutput | None = None
        self.noise_source = noise_source

    def noise(self, draw: int = 0) -> torch.Tensor:
        """Standard normal noise like the state for the current step, draw j: a function of each sample's seed."""
        if self.noise_source is None:
            raise InvalidArgument("this run has no step-noise source; stochastic solvers run through Sampler.run/solve")
        return self.noise_source.draw(self.step, draw)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput:
        out = self.field.evaluate(x, p, kind, **self.kwargs)
        self.nfe += self.field.evals_per_call
        if self.check_finite:
            self.flags.append((self.step, nonfinite(out.value.detach())))
        self.last = out
        return out

    def denoise(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor:
        return self.evaluate(x, p, "x0").value

    def velocity(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor:
        return self.evaluate(x, p, "velocity").value

    @property
    def last_denoised(self) -> torch.Tensor | None:
        return self.last.value if self.last is not None else None

    @property
    def features(self) -> dict:
        """Auxiliary outputs of the latest evaluation (features that a FeatureCapture wrapper asked for)."""
        return dict(self.last.aux) if self.last is not None else {}

    def first_bad_step(self) -> torch.Tensor | None:
        """Device tensor: the first step whose model output was non-finite, or -1 (no host sync)."""
        if not self.flags:
            return None
        steps = torch.tensor([s for s, _ in self.flags], device=self.flags[0][1].device)
        bad = torch.stack([f for _, f in self.flags])
        return torch.where(bad.any(), steps[bad.to(torch.uint8).argmax()], torch.full_like(steps[0], -1))

    def raise_if_bad(self, times: torch.Tensor) -> None:
        first = self.first_bad_step()
        if first is not None:
            step = int(first)                # the one host sync, after the loop
            if step >= 0:
                raise NonFiniteError(step, float(times[min(step, times.numel() - 1)]))


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
def integrate(solver: Solver, ev: Evaluator, x: torch.Tensor, plan: Any, *,
              callback: Callable[[StepInfo], None] | None = None, return_trajectory: bool = False,
              progress: bool = False, raise_nonfinite: bool = True) -> SampleResult:
    """Integrate `x` along a plan: a fixed grid, an adaptive span (solvers.adaptive) or a whole-span bridge."""
    if getattr(plan, "span", None) is not None:
        if hasattr(solver, "solve_span"):
            return solver.solve_span(ev, x, plan, callback=callback, return_trajectory=return_trajectory)
        return integrate_adaptive(solver, ev, x, plan, callback=callback, return_trajectory=return_trajectory)
    state = solver.init(plan)
    traj = [x] if return_trajectory else None
    steps = range(plan.steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=solver.name, leave=False)
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


def integrate_adaptive(solver: Solver, ev: Evaluator, x: torch.Tensor, plan: Any, *,
                       callback: Callable[[StepInfo], None] | None = None,
                       return_trajectory: bool = False) -> SampleResult:
    """Adaptive stepping: the controller proposes an interval, the solver's own step integrates it and returns
    its error estimate, the controller accepts or rejects and proposes the next (one host read per attempt)."""
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


def budget_exhausted(solver: Solver, ev: Evaluator, attempts: int, span: Any, need: int) -> str | None:
    """Why the next attempt (needing `need` more model calls per sample) may not run, or None."""
    if attempts >= solver.max_steps:
        return f"the step limit max_steps={solver.max_steps} was reached"
    if span.budget is not None and ev.nfe + need * ev.field.evals_per_call > span.budget:
        return (f"the NFE budget of {span.budget} would be exceeded (used {ev.nfe}, the next step needs "
                f"{need * ev.field.evals_per_call} more)")
    return None


def finish_span(solver: Solver, ev: Evaluator, x: torch.Tensor, plan: Any, times: list, states: list | None,
                accepted: int, rejected: int, *, completed: bool, t_reached: float, why: str | None = None,
                extra: dict | None = None) -> SampleResult:
    """End of a span run (adaptive or bridge): the final data prediction at t = 0, the budget's verdict, stats."""
    span = plan.span
    denoised = None
    if completed and span.final_denoise:
        # Final step to zero noise: the data prediction (Euler to s = 0 in the EDM frame).
        ev.step = max(accepted, 0)
        x = ev.denoise(x, ev.field.at(span.t_stop)) * ev.field.at(0.0).alpha
        accepted += 1
        times.append(0.0)
        if states is not None:
            states.append(x)
        t_reached = 0.0
    elif not completed:
        denoised = ev.last_denoised
    if not completed and solver.on_budget == "raise":
        raise BudgetExceeded(
            f"{solver.name}: {why} at t={t_reached:.6g}, after {accepted} accepted and {rejected} rejected steps "
            f"and {ev.nfe} model evaluations. Raise nfe= / max_steps=, loosen rtol/atol, or pass "
            "on_budget='return' to get the state reached so far")
    tt = torch.tensor(times, dtype=torch.float64)
    ev.raise_if_bad(tt)
    info = {"accepted": accepted, "rejected": rejected, "nfe": ev.nfe, "completed": completed,
            "t_reached": t_reached, "budget": span.budget, "max_steps": solver.max_steps,
            "stopped_because": why, "denoised": denoised, "shared_step_control": True, **(extra or {})}
    return SampleResult(samples=x, nfe=ev.nfe, steps=accepted, t=tt, solver=solver.name,
                        trajectory=torch.stack(states) if states is not None else None, stats=info)
