"""What one run hands a solver and gets back: the Evaluator its steps call (model evaluations counted, non-finite
outputs flagged by step), the StepInfo a callback receives, and the SampleResult a run returns.

They sit with the solvers, below the loop, because span solvers (adaptive control, the torchdiffeq and torchsde
bridges) finish their own runs; the loop re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffsolve.errors import InvalidArgument, NonFiniteError
from diffsolve.field import EvalPoint, Field, FieldOutput
from diffsolve.kernels import nonfinite
from diffsolve.noise import NoiseSource


@dataclass
class StepInfo:
    """What a callback receives after each accepted step.

    Attributes:
        i: the step's index.
        t: the step's start time.
        t_next: its end time.
        x: the state after the step.
        denoised: the latest model output (None before any model call).
        nfe: model evaluations so far.
    """

    i: int
    t: float
    t_next: float
    x: torch.Tensor
    denoised: torch.Tensor | None
    nfe: int


@dataclass
class SampleResult:
    """Samples, the exact number of model evaluations per sample made, the grid, and (on request) the trajectory.

    Attributes:
        samples: the final state.
        nfe: model evaluations per sample (guidance's two per call counted).
        steps: the steps taken.
        t: the grid (or the accepted times).
        solver: the solver's name.
        trajectory: `(steps + 1, *samples.shape)` states, with `return_trajectory=True`; else None.
        stats: adaptive runs: accepted/rejected steps, completed flag; inversion: direction, x_end, prior_std.
    """

    samples: torch.Tensor
    nfe: int
    steps: int
    t: torch.Tensor
    solver: str
    trajectory: torch.Tensor | None = None
    stats: dict | None = None           # adaptive runs: accepted/rejected steps, completed flag


class Evaluator:
    """Per-run wrapper of the field that counts model evaluations and flags non-finite outputs by step: what a
    step may call (the field's data prediction or slope, and the run's step noise).

    Args:
        field: the field to call.
        model_kwargs: passed to the network at every call.
        check_finite: flag NaN/Inf outputs (one read after the loop).
        noise_source: the run's step noise.
    """

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
        """Standard normal noise like the state for the current step, draw j: a function of each sample's seed.

        Args:
            draw: the draw j within the step (default 0).

        Returns:
            The noise, shaped like the state.

        Raises:
            InvalidArgument: the run has no step-noise source (stochastic solvers run through Sampler.run/solve).
        """
        if self.noise_source is None:
            raise InvalidArgument("this run has no step-noise source; stochastic solvers run through Sampler.run/solve")
        return self.noise_source.draw(self.step, draw)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput:
        """Call the field for `kind` ("x0" or "velocity") at point `p`: counted and flagged.

        Args:
            x: the state.
            p: the point.
            kind: "x0" (the data prediction) or "velocity".

        Returns:
            The field's FieldOutput (kept as the latest evaluation).
        """
        out = self.field.evaluate(x, p, kind, **self.kwargs)
        self.nfe += self.field.evals_per_call
        if self.check_finite:
            self.flags.append((self.step, nonfinite(out.value.detach())))
        self.last = out
        return out

    def denoise(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor:
        """The data prediction at `x`, point `p` (one model evaluation).

        Args:
            x: the state.
            p: the point.

        Returns:
            x0_hat, in x's shape and dtype.
        """
        return self.evaluate(x, p, "x0").value

    def velocity(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor:
        """The velocity dx/dt at `x`, point `p` (one model evaluation).

        Args:
            x: the state.
            p: the point.

        Returns:
            dx/dt, in x's shape and dtype.
        """
        return self.evaluate(x, p, "velocity").value

    @property
    def last_denoised(self) -> torch.Tensor | None:
        """The latest evaluation's value, or None before the first."""
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
        """Raise NonFiniteError naming the first step whose output held NaN or Inf (one host read).

        Args:
            times: the run's grid, to name the step's time.
        """
        first = self.first_bad_step()
        if first is not None:
            step = int(first)                # the one host sync, after the loop
            if step >= 0:
                raise NonFiniteError(step, float(times[min(step, times.numel() - 1)]))
