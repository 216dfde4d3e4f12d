"""The per-run machinery of `DiffsolveScheduler`: the dry run that lists where a solver's steps call the model
(`DryEvaluator`), the replay that answers those calls with the outputs a pipeline hands to `step`
(`ReplayEvaluator`, `NeedModel`), and what one pipeline run changes (`SchedulerRun`). No diffusers import."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import EvalPoint, FieldOutput
from diffsolve.loop import Evaluator
from diffsolve.noise import NoiseSource
from diffsolve.pretrained_adapters.diffusers.loops import RoundedModelTime
from diffsolve.solvers.base import Plan, Solver, available_solvers, get_solver


class NeedModel(Exception):
    """Raised inside a replayed step when the solver asks for a model output not received yet.

    Args:
        x: the state at which the model is needed (returned to the pipeline as `prev_sample`).
        p: the evaluation point of that call.
    """

    def __init__(self, x: torch.Tensor, p: EvalPoint):
        super().__init__()
        self.x, self.p = x, p


class Feed:
    """The 'network' of the scheduler's field: returns the output the pipeline handed to `step` (`output`)."""

    def __init__(self) -> None:
        self.output: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The stored output; `x`, `t` and `**kwargs` are ignored."""
        return self.output


class DryEvaluator(Evaluator):
    """Records where a step evaluates the model; returns zeros (the points do not depend on the values).

    Args:
        field (Field): the scheduler's field.
    """

    def __init__(self, field):
        super().__init__(field, {}, False, None)
        self.points: list[tuple[int, EvalPoint]] = []
        self.first_at_input: dict[int, bool] = {}
        self.input: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(0)

    def noise(self, draw: int = 0) -> torch.Tensor:
        """A small random stand-in for step noise (`draw` ignored): the points do not depend on it.

        Returns:
            (Tensor): a (1, 4) float64 draw from the evaluator's own generator.
        """
        return torch.randn(1, 4, dtype=torch.float64, generator=self.gen)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput:
        """Record the call at point `p` of the current step (and whether it is at the step's input `x`).

        Args:
            x: the state.
            p: the evaluation point.
            kind: the prediction asked (not used).

        Returns:
            (FieldOutput): zeros shaped like x.

        Raises:
            InvalidArgument: `p` is per sample (times chosen inside the loop), which a pipeline cannot list.
        """
        if p.per_sample:
            raise InvalidArgument("this solver picks its times per sample inside the loop; a diffusers pipeline "
                                  "needs every timestep before the loop")
        if self.step not in self.first_at_input:
            self.first_at_input[self.step] = bool(torch.allclose(x, self.input, rtol=1e-12, atol=0))
        self.points.append((self.step, p))
        self.nfe += 1
        out = FieldOutput(torch.zeros_like(x))
        self.last = out
        return out


class ReplayEvaluator(Evaluator):
    """Answers a step's k-th model call with the k-th output the pipeline gave; asks for the next one.

    Args:
        field (Field): the scheduler's field.
        feed: the Feed the field's network reads.
        outputs: the network outputs received for the current step, in order.
        noise_of (Callable): `noise_of(step, draw)` gives the step's noise draws (made once, reused by replays).
    """

    def __init__(self, field, feed: Feed, outputs: list[torch.Tensor], noise_of):
        super().__init__(field, {}, False, None)
        self.feed, self.outputs, self.noise_of, self.calls = feed, outputs, noise_of, 0

    def noise(self, draw: int = 0) -> torch.Tensor:
        """The `draw`-th noise of the current step, from `noise_of`."""
        return self.noise_of(self.step, draw)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput:
        """The field at state `x` and point `p`, its network answering with the next received output.

        Args:
            x: the state.
            p: the evaluation point.
            kind: the prediction asked of the field.

        Returns:
            (FieldOutput): the field's output.

        Raises:
            NeedModel: every received output is used: the pipeline must call the network at `x` next.
        """
        if self.calls >= len(self.outputs):
            raise NeedModel(x, p)
        self.feed.output = self.outputs[self.calls]
        self.calls += 1
        try:
            out = self.field.evaluate(x, p, kind)
        finally:
            self.feed.output = None
        self.nfe += 1
        self.last = out
        return out


@dataclass
class SchedulerRun:
    """Everything one pipeline run changes (diffusers keeps it on the scheduler; here it is one object).

    Attributes:
        plan: the solver's Plan of the run.
        calls: (step i, call k within the step) for each listed timestep.
        points: the point of each listed timestep.
        index: the next entry of `calls` that `step` receives.
        x_start: the state at the start of the current step.
        state: the solver's carried state (multistep history).
        outputs: the network outputs received in the current step.
        noise: the step noise drawn so far, by (step, draw).
        noise_source: the NoiseSource when the scheduler has a `seed`.
        first_at_input: per step: is its first model call at its input state?
        x_next: the state after the last step, when the next one perturbs it first.
        scaled: scale_model_input gave step 0 its perturbed input.
        listed: the timestep the network gets at each entry of `calls`.
        started: a pipeline call has fixed where the run starts.
        full: the run over the whole listing, when this one starts inside it.
    """

    plan: Plan
    calls: list[tuple[int, int]]              # (step i, call k within the step) for each listed timestep
    points: list[EvalPoint]                   # the point of each listed timestep
    index: int = 0                            # the next entry of `calls` that `step` receives
    x_start: torch.Tensor | None = None       # the state at the start of the current step
    state: Any = None                         # the solver's carried state (multistep history)
    outputs: list = dc_field(default_factory=list)
    noise: dict = dc_field(default_factory=dict)
    noise_source: NoiseSource | None = None
    first_at_input: list = dc_field(default_factory=list)   # per step: is its first model call at its input state?
    x_next: torch.Tensor | None = None        # the state after the last step, when the next one perturbs it first
    scaled: bool = False                      # scale_model_input gave step 0 its perturbed input
    listed: list = dc_field(default_factory=list)           # the timestep the network gets at each entry of `calls`
    started: bool = False                     # a pipeline call has fixed where the run starts
    full: Any = None                          # the run over the whole listing, when this one starts inside it


def timesteps_tensor(values: Sequence[float], device: Any) -> torch.Tensor:
    """The listed timesteps as diffusers' `timesteps` tensor.

    Args:
        values: the model times the network gets.
        device: where the tensor is put.

    Returns:
        An int64 tensor when every value is an integer (to 1e-6 relative), else float32.
    """
    arr = np.asarray(values, dtype=np.float64)
    if np.all(np.abs(arr - np.round(arr)) <= 1e-6 * np.maximum(1.0, np.abs(arr))):
        return torch.from_numpy(np.round(arr).astype(np.int64)).to(device)
    return torch.from_numpy(arr.astype(np.float32)).to(device)




def dry_run(solver: Solver, field: Any, t: torch.Tensor) -> SchedulerRun:
    """Plan a run over the grid `t` and dry-run it: where each step calls the model, the timesteps to list.

    Args:
        solver: The scheduler's solver.
        field: The scheduler's field.
        t: The grid.

    Returns:
        The run, at its start.

    Raises:
        InvalidArgument: A step makes no model call (a pipeline calls the network once per listed timestep).
    """
    plan = solver.plan(field, t)
    dry = DryEvaluator(field)
    state = solver.init(plan)
    for i in range(plan.steps):
        # a fresh random input per step (the points do not depend on it): is the first call made at it?
        x = torch.randn(1, 4, dtype=torch.float64, generator=dry.gen) + 2.0
        dry.step, dry.input = i, x
        _, _, state = solver.step(dry, x, plan.points[i], plan.points[i + 1], state, plan.coeffs[i])
    calls, points, k_of = [], [], {}
    for i, p in dry.points:
        k_of[i] = k_of.get(i, -1) + 1
        calls.append((i, k_of[i]))
        points.append(p)
    for i in range(plan.steps):
        if i not in k_of:
            raise InvalidArgument(f"solver {solver.name!r} makes no model call in step {i}; a diffusers "
                                  "pipeline calls the network once per listed timestep")
    fed = field.fed_time if isinstance(field, RoundedModelTime) else (lambda p: float(p.model_time))
    return SchedulerRun(plan=plan, calls=calls, points=points, state=solver.init(plan),
                        first_at_input=[dry.first_at_input[i] for i in range(plan.steps)],
                        listed=[fed(p) for p in points])


def supported_solvers() -> list[str]:
    """Registered solvers a diffusers pipeline can drive: every fixed-grid solver (adaptive ones are refused).

    Returns:
        Their registry names.
    """
    return [n for n in available_solvers() if not get_solver(n).adaptive]


__all__ = ["NeedModel", "Feed", "DryEvaluator", "ReplayEvaluator", "SchedulerRun", "timesteps_tensor",
           "supported_solvers", "dry_run"]
