"""The base solvers' own step rules on the EDM-frame state, for learned corrections that run them between their
own points (AMED-Plugin), with learned offsets (learned multistep weights) or on noise levels with gradient (learned
grids).

EDM frame: y = x / alpha, s = sigma / alpha, slope d = (y - D) / s. A correction keeps the history
((s, d, D), ...) newest first (on a plain velocity field (t, f, None), in the field's own time) and asks the
registered solver for one step: the slope multistep solvers (iPNDM, iPNDM_v, DEIS) through their `weights`,
DPM-Solver++(2M) through `dpmpp_multistep_coefficients` on the EDM path (alpha = 1, sigma = s). A first-order step
is Euler, y + (s1 - s0) d, which is DDIM in this frame. The levels may be host floats or tensors (one value per
sample, or with gradient): the coefficient functions take either.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import EvalPoint, per_sample
from diffsolve.solvers.base import Solver
from diffsolve.solvers.dpm_solver import DPMSolverPP3M, dpmpp_multistep_coefficients
from diffsolve.solvers.euler import Euler
from diffsolve.solvers.multistep import SlopeMultistep

RULE_BASES = ("euler", "ipndm", "ipndm_v", "deis", "dpmpp_2m")


def default_order(solver: Solver) -> int:
    """The highest order a base solver's steps use (its `order=` option; 1 for Euler).

    Args:
        solver: A registered solver instance.

    Returns:
        Its `solver_order`, or 1 when it has none.
    """
    return int(getattr(solver, "solver_order", 1))


def _is_zero(v: Any) -> bool:
    return not isinstance(v, torch.Tensor) and v == 0


def _log(v: Any) -> Any:
    return torch.log(v) if isinstance(v, torch.Tensor) else math.log(v)


def _edm_point(s: Any) -> EvalPoint:
    """A point of the EDM path (alpha = 1, sigma = s): what the data-prediction coefficient functions read."""
    return EvalPoint(t=None, model_time=None, alpha=1.0, sigma=s)


def base_step(solver: Solver, y0: torch.Tensor, hist: Sequence[tuple], s0: Any, s1: Any,
              max_order: int) -> torch.Tensor:
    """y at s1 from y0 at s0 by one step of the registered `solver`.

    The step runs at order min(max_order, len(hist)) (a warm start while the history is short), its full order
    otherwise.

    Args:
        solver: The base solver whose rule is taken: Euler, a slope multistep solver (iPNDM, iPNDM_v, DEIS) or
            DPM-Solver++ multistep.
        y0: The EDM-frame state at s0.
        hist: ((s, d, D), ...) newest first, hist[0] at s0.
        s0: The level at the step's start (a float or a tensor).
        s1: The level at the step's end (a float or a tensor).
        max_order: The highest order to use.

    Returns:
        The state at s1.

    Raises:
        InvalidArgument: `solver` is none of RULE_BASES.
    """
    k = min(max_order, len(hist))
    if isinstance(solver, DPMSolverPP3M):
        return _data_step(y0, hist, s0, s1, k)
    if isinstance(solver, SlopeMultistep):
        # a step into s = 0 is first order where the rule needs log s there (DEIS), as in the solver's own plan
        if k > 1 and not (solver.singular_end and _is_zero(s1)):
            ws = solver.weights([h[0] for h in hist[:k]], s1, k)
            return y0 + sum(per_sample(w, y0) * h[1] for w, h in zip(ws, hist[:k]))
    elif not isinstance(solver, Euler):
        raise InvalidArgument(f"base={solver.name!r}; a learned correction runs on {', '.join(RULE_BASES)}")
    return y0 + per_sample(s1 - s0, y0) * hist[0][1]


def _data_step(y0: torch.Tensor, hist: Sequence[tuple], s0: Any, s1: Any, k: int) -> torch.Tensor:
    """DPM-Solver++ multistep in data prediction on the EDM path (lambda = -log s); first order into s = 0."""
    if _is_zero(s1):
        k = 1
    lams = (-_log(s1), *(-_log(h[0]) for h in hist[:k])) if k > 1 else ()
    co = dpmpp_multistep_coefficients(_edm_point(s0), _edm_point(s1), lams, k)
    out = per_sample(co.a, y0) * y0
    for b, h in zip(co.b, hist):
        out = out + per_sample(b, y0) * h[2]
    return out


def corrected_step(solver: Solver, y0: torch.Tensor, hist: Sequence[tuple], s0: Any, s1: Any, max_order: int,
                   weights: Any = None) -> torch.Tensor:
    """`base_step` plus (s1 - s0) sum_j weights[j] d_j over the slope history.

    Args:
        solver: The base solver whose rule is taken (see `base_step`).
        y0: The EDM-frame state at s0.
        hist: ((s, d, D), ...) newest first, hist[0] at s0.
        s0: The level at the step's start.
        s1: The level at the step's end.
        max_order: The highest order of the base rule.
        weights: Offsets (floats, or scalar tensors with gradient), which may be shorter than the history; None
            (default) is the base rule alone. Exact float zeros leave the base rule bit for bit.

    Returns:
        The state at s1.

    Raises:
        InvalidArgument: `solver` is none of RULE_BASES.
    """
    y1 = base_step(solver, y0, hist, s0, s1, max_order)
    if weights is None:
        return y1
    inc = None
    for w, h in zip(weights, hist):
        if isinstance(w, float) and w == 0.0:      # exact zeros leave the base rule bit for bit
            continue
        inc = w * h[1] if inc is None else inc + w * h[1]
    if inc is None:
        return y1
    return y1 + per_sample(s1 - s0, y0) * inc


def afs_denoised(y0: torch.Tensor, s0: float, mean: torch.Tensor | None) -> torch.Tensor:
    """The analytical first step's data prediction: mu + (y - mu)(1 - s / sqrt(1 + s^2)).

    That is d = (y - mu) / sqrt(1 + s^2); mu = 0 is diff-sampler's AFS.

    Args:
        y0: The EDM-frame state at the largest noise.
        s0: The EDM noise level there.
        mean: The data mean mu (broadcast over the batch), or None for mu = 0.

    Returns:
        The data prediction, shaped like y0.

    Raises:
        InvalidArgument: `mean` does not fit the samples' shape (it was learned on another model).
    """
    k = 1.0 - s0 / math.sqrt(1.0 + s0 * s0)
    if mean is None:
        return y0 * k
    if tuple(mean.shape[-(y0.dim() - 1):]) != tuple(y0.shape[1:]) or mean.dim() > y0.dim():
        raise InvalidArgument(f"this correction's data mean (its analytical first step) has shape "
                              f"{tuple(mean.shape)}; these samples have shape {tuple(y0.shape[1:])}: it was learned "
                              "on another model (give one learned on this model, or afs=False)")
    mu = mean.to(device=y0.device, dtype=y0.dtype)
    return mu + (y0 - mu) * k
