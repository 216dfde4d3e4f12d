"""GITS (Chen et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling", ICML 2024): a time grid
found by dynamic programming over one model's teacher trajectories.

Teacher trajectories on a fine EDM grid; `C[i, j]` = mean per-sample RMSE of one Euler (DDIM) jump from the
teacher's point i to time j against the teacher's point j; dynamic programming over the number of steps on the
cost-to-go, `V_k[j] = min_i C[j, i] + 1.15 V_{k-1}[i]` (diff-sampler's recursion: the cost found at the earlier
stage is weighted by 1.15, so the m-th jump of a path counts 1.15^(m-1) times), then the choices from the start
to t = 0. `gits_grid` returns a `GridCorrection` whose grids any solver takes as `grid=`.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import Field
from diffsolve.grids import karras, time_uniform
from diffsolve.solvers.euler import ddim_coefficients
from diffsolve.corrections.grid_search import check_plain_base, steps_for_budget
from diffsolve.corrections.io import GridCorrection
from diffsolve.corrections.teacher import field_of, noise_for, teacher_states

__all__ = ["GITS_WEIGHT", "gits_cost_matrix", "gits_dynamic_programming", "gits_grid"]

GITS_WEIGHT = 1.15      # diff-sampler's stage weight: the m-th jump of a path counts 1.15^(m-1) times


def gits_cost_matrix(field: Field, times: torch.Tensor, states: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The [K, K] float64 cost matrix: C[i, j] (i < j) = mean per-sample RMSE of one Euler jump, +inf elsewhere.

    Args:
        field: The field whose model makes the jumps.
        times: The decreasing fine grid, K points.
        states: [K, B, ...] teacher points at `times`; the jump from states[i] to times[j] is measured against
            states[j].
        batch_size: Samples per model call.

    Returns:
        torch.Tensor: The [K, K] float64 matrix; entries on and below the diagonal are +inf (no backward jump).
    """
    plain = not field.has_schedule          # a plain velocity field: x_j = x_i + (t_j - t_i) f(x_i, t_i)
    K = times.numel()
    pts = [field.at(float(v)) for v in times]
    C = torch.full((K, K), math.inf, dtype=torch.float64)
    B = states.shape[1]
    sums = torch.zeros((K, K), dtype=torch.float64)
    with torch.no_grad():
        for i in range(K - 1):
            for b in range(0, B, batch_size):
                xi = states[i, b:b + batch_size]
                at = field.select(torch.arange(b, b + xi.shape[0]))       # per-sample conditions follow
                D = at.velocity(xi, pts[i]) if plain else at.denoise(xi, pts[i])
                for j in range(i + 1, K):
                    a, c = (1.0, float(times[j] - times[i])) if plain else ddim_coefficients(pts[i], pts[j])
                    err = (a * xi + c * D - states[j, b:b + batch_size]).double().flatten(1)
                    sums[i, j] += err.pow(2).mean(1).sqrt().sum()
        for i in range(K - 1):
            C[i, i + 1:] = sums[i, i + 1:] / B
    return C


def gits_dynamic_programming(C: torch.Tensor, steps: int, weight: float = GITS_WEIGHT) -> tuple[list[int], float]:
    """The path 0 -> K-1 of `steps` jumps minimising sum_m weight^(m - 1) C[i_{m-1}, i_m].

    Through the cost-to-go V_k[j] = min_{i > j} C[j, i] + weight V_{k-1}[i], V_1[j] = C[j, K-1] (diff-sampler's
    `dp`: the cost computed at the previous stage is weighted by `weight`).

    Args:
        C: The [K, K] cost matrix of one jump from fine point i to fine point j (`gits_cost_matrix`); +inf where
            no jump is allowed.
        steps: The number of jumps, 1 to K - 1.
        weight: The stage weight (default 1.15, diff-sampler's).

    Returns:
        tuple[list[int], float]: The `steps + 1` fine-grid indices of the path, from 0 to K - 1, and its weighted
            cost.

    Raises:
        InvalidArgument: `steps` is out of range, or no finite path exists.
    """
    K = C.shape[0]
    if not 1 <= steps <= K - 1:
        raise InvalidArgument(f"steps={steps}: need 1 <= steps <= {K - 1} on a fine grid of {K} points")
    C = C.to(torch.float64)
    V = torch.full((steps + 1, K), math.inf, dtype=torch.float64)
    nxt = torch.full((steps + 1, K), K - 1, dtype=torch.long)
    V[0, K - 1] = 0.0
    for k in range(1, steps + 1):
        cand = C + weight * V[k - 1][None, :] if k > 1 else C + V[0][None, :]     # [j, i]
        V[k], nxt[k] = cand.min(dim=1)
    path = [0]
    for k in range(steps, 0, -1):
        path.append(int(nxt[k, path[-1]]))
    if path[-1] != K - 1 or not math.isfinite(float(V[steps, 0])):
        raise InvalidArgument("no finite path: the cost matrix must be finite above its diagonal")
    return path, float(V[steps, 0])


def gits_grid(model: Any, *, base: str = "ipndm", nfe: Sequence[int] = (3, 5, 7, 9), fine_steps: int = 60,
              rho: float = 7.0, n: int = 128, seed: int = 0, weight: float = GITS_WEIGHT, teacher: str = "reference",
              teacher_options: dict | None = None, dtype: torch.dtype = torch.float32,
              log: Callable[[str], None] | None = print, **solver_options: Any) -> GridCorrection:
    """A GridCorrection "gits": grids for `base` at each NFE, from `n` teacher trajectories on a fine grid.

    The fine grid: fine_steps + 1 points, karras (exponent `rho`) ending at t = 0; on a plain velocity field
    (schedule=None) uniform in its own time t (1 to 0), a jump's cost from one step x + (t_j - t_i) f(x_i, t_i).

    Args:
        model: The model or field.
        base: The registered name of the solver the grids are for.
        nfe: The model-call budgets, one grid each (steps_for_budget with `solver_options`).
        fine_steps: Steps of the fine grid the teacher runs on (the grids pick their times among its points).
        rho: The karras exponent of the fine grid.
        n: The number of teacher trajectories.
        seed: Seed of the teacher noise (seeds seed * 10^6 + i).
        weight: The dynamic programming's stage weight.
        teacher: How the trajectories are computed ("reference": an accurate solve).
        teacher_options: The teacher's keywords; None: its defaults.
        dtype: The dtype of the teacher's noise and states.
        log: Prints progress; None: silent.
        **solver_options: The base solver's options, used to count the steps each budget allows.

    Returns:
        GridCorrection: Kind "gits", one grid (a tuple of times from t_max to 0) per step count, for `base` and the
            field's identity; its info holds each grid's NFE and cost and the search's settings.

    Raises:
        InvalidArgument: `base` needs a schedule the field lacks, or an NFE is too small for it.
    """
    field = field_of(model)
    check_plain_base(field, base, "gits")
    start = time.perf_counter()
    if field.has_schedule:
        fine = karras(fine_steps, field.schedule, rho=rho, final="zero")
        fine[0] = field.schedule.t_max              # exactly, free of the polynomial's round-off
    else:
        fine = time_uniform(fine_steps, None)
    seeds = list(range(seed * 1_000_000, seed * 1_000_000 + n))
    noise = noise_for(field, seeds, dtype=dtype)
    states = teacher_states(field, noise, fine, mode=teacher, seeds=seeds, **(teacher_options or {}))
    if log:
        log(f"teacher: {n} trajectories on {fine.numel()} points ({teacher}) in {time.perf_counter() - start:.1f}s")
    C = gits_cost_matrix(field, fine, states)
    if log:
        log(f"cost matrix {tuple(C.shape)} in {time.perf_counter() - start:.1f}s")
    grids, costs, nfes = {}, {}, {}
    for budget in nfe:
        steps = steps_for_budget(field, base, int(budget), **solver_options)
        path, cost = gits_dynamic_programming(C, steps, weight)
        grids[steps] = tuple(float(fine[i]) for i in path)
        costs[str(steps)] = cost
        nfes[str(steps)] = int(budget)
        if log:
            log(f"nfe {budget}: {steps} steps, cost {cost:.5g}, grid {[round(v, 4) for v in grids[steps]]}")
    return GridCorrection("gits", grids, base, field.correction_identity(),
                          {"nfe": nfes, "cost": costs, "fine_steps": fine_steps, "rho": rho, "n": n, "seed": seed,
                           "weight": weight, "teacher": teacher, "seconds": round(time.perf_counter() - start, 1)})
