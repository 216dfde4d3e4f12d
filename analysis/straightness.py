"""How straight a model's sampling trajectories are, which predicts how few steps it needs.

Straightness (Liu et al. 2023, rectified flow, eq. 9): S = int_0^1 E ||(X_1 - X_0) - dX_u/du||^2 du, the mean
squared departure of the velocity from the chord, with the time rescaled to u in [0, 1] from the grid's first to
its last time (in the model's own time variable). S = 0 exactly when every trajectory is a straight line
travelled at constant speed, which Euler integrates exactly in one step. The trajectory comes from an accurate
solve on a fine grid; dX/du on each interval is the chord of the solved trajectory, a second-order estimate.
The one-step gap is the RMS distance between one Euler step over the whole span and that accurate endpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from diffsolve.errors import check_int
from diffsolve.sampler import Sampler


@dataclass(frozen=True)
class Straightness:
    """Straightness S, S relative to E||X_1 - X_0||^2, and the one-step gap (absolute RMS and relative).

    Attributes:
        straightness: S, the time integral of E||(X_1 - X_0) - dX/du||^2 along the trajectories (0: straight).
        relative: S divided by E||X_1 - X_0||^2.
        one_step_gap: RMS difference between one Euler step over the span and the fine solve's endpoint.
        relative_gap: That gap's root mean squared norm divided by the chord's.
        endpoint: The fine solve's endpoints.
        nfe: Model evaluations used (the fine solve's plus the Euler step's).
    """

    straightness: float
    relative: float
    one_step_gap: float
    relative_gap: float
    endpoint: torch.Tensor
    nfe: int

    def as_dict(self) -> dict[str, float]:
        """The numbers (not the endpoint) by name, as the bench report stores them.

        Returns:
            straightness, relative_straightness, one_step_gap, relative_one_step_gap and nfe.
        """
        return {"straightness": self.straightness, "relative_straightness": self.relative,
                "one_step_gap": self.one_step_gap, "relative_one_step_gap": self.relative_gap, "nfe": self.nfe}


def straightness(model: Any, noise: torch.Tensor | None = None, *, steps: int = 128, solver: str = "heun",
                 grid: Any = None, batch_size: int | None = None, seed: Any = 0, grid_options: dict | None = None,
                 **model_kwargs: Any) -> Straightness:
    """Straightness and one-step gap of the probability-flow trajectories from `noise` (or drawn from `seed`).

    Args:
        model: A model or field with a probability-flow ODE.
        noise: Initial noise; None draws it from `seed`.
        steps: Steps of the fine solve, an integer >= 2.
        solver: Solver of the fine solve.
        grid: Grid name or times; None takes the solver's default.
        batch_size: Samples drawn when `noise` is None; None draws 256.
        seed: Seed (or per-sample seeds) of the drawn noise.
        grid_options: Options of the grid.
        **model_kwargs: Passed to the model at every evaluation.

    Returns:
        The straightness, relative straightness, one-step gaps, endpoints and NFE (float64 numbers).

    Raises:
        InvalidArgument: `steps` is not an integer >= 2, or the Sampler refuses a setting.
    """
    steps = check_int("steps", steps, 2)
    ref = Sampler(model, solver, grid, grid_options=grid_options, progress=False)
    with torch.no_grad():
        plan = ref.plan(steps)
        if noise is None:
            noise = ref.initial_noise(noise=None, shape=None, generator=None, device=None, seed=seed,
                                      batch_size=batch_size if batch_size is not None else 256, dtype=torch.float64)
        res = ref.solve(plan, noise, return_trajectory=True, **model_kwargs)
        traj = torch.stack([x.to(torch.float64) for x in res.trajectory])       # (steps + 1, batch, ...)
        t = plan.t.to(torch.float64)
        u = (t - t[0]) / (t[-1] - t[0])
        chord = (traj[-1] - traj[0]).flatten(1)                                   # X_1 - X_0 per sample
        du = (u[1:] - u[:-1]).reshape(-1, 1, 1)
        slope = (traj[1:] - traj[:-1]).flatten(2) / du                            # dX/du on each interval
        dev = ((chord.unsqueeze(0) - slope) ** 2).sum(-1).mean(-1)                # E || . ||^2 per interval
        s = float((dev * du.reshape(-1)).sum())
        chord_sq = float((chord ** 2).sum(-1).mean())
        # One Euler step over the same span, from the same (scaled) starting point.
        one = Sampler(model, "euler", [float(t[0]), float(t[-1])], progress=False)
        x1 = one.solve(one.plan(), noise, **model_kwargs).samples.to(torch.float64).flatten(1)
        gap = (x1 - traj[-1].flatten(1))
        rms_gap = float(gap.pow(2).mean().sqrt())
        rel_gap = float(gap.pow(2).sum(-1).mean().sqrt()) / max(chord_sq, 1e-300) ** 0.5
    return Straightness(s, s / max(chord_sq, 1e-300), rms_gap, rel_gap, traj[-1], res.nfe + 1)
