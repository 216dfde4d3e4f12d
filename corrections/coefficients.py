"""Learned multistep weights on a learned grid (corrections.learned_multistep): the grid's times (LD3, Tong et al. 2024)
and per-step offsets of the base rule's weights on the slope history (S4S, Frankel et al. 2025), fitted together by
Adam through a differentiable run against teacher endpoints.

The starting grids come from `learn_grid` (several starting grids, the best kept), with the data-mean AFS by
default; the offsets start at zero, so training begins at the base solver on its learned grid. The learning rates
decay (cosine) and the parameters of the best epoch are kept.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.corrections.grid_search import (GapGrid, _fit_grid, _teacher_endpoints, differentiable_run, learn_grid,
                                              steps_for_budget)
from diffsolve.corrections.io import CoefficientCorrection, GridCorrection
from diffsolve.corrections.learned_multistep import COEFFICIENT_BASES
from diffsolve.solvers import get_solver
from diffsolve.corrections.base_rules import default_order
from diffsolve.corrections.teacher import field_of, frozen, mean_denoised_at_start

GRID_STARTS = ("karras", "logsnr_uniform", "time_quadratic")


class CoefficientModel(torch.nn.Module):
    """A grid (GapGrid over log-sigma gaps) and one row of `order` weight offsets per step, starting at zero.

    Args:
        s_init: The starting EDM noise levels, from the largest to 0.
        s_min: The smallest positive noise level the grid may reach.
        order: Number of weight offsets per step (the base rule's order).
    """

    def __init__(self, s_init: Sequence[float], s_min: float, order: int):
        super().__init__()
        self.grid = GapGrid(s_init, s_min)
        self.weights = torch.nn.Parameter(torch.zeros(len(s_init) - 1, order, dtype=torch.float64))

    def forward(self) -> list[Any]:
        """The grid's current noise levels.

        Returns:
            The levels, from the largest to 0 (tensors with gradient).
        """
        return self.grid()

    def rows(self) -> tuple[tuple[float, ...], ...]:
        """The current weight offsets as host floats.

        Returns:
            One tuple of `order` offsets per step.
        """
        return tuple(tuple(float(v) for v in r) for r in self.weights.detach())


def learn_coefficients(model: Any, *, base: str = "deis", nfe: Sequence[int] = (3, 5, 7, 9), afs: bool = True,
                       grid: GridCorrection | None = None, n: int = 128, batch_size: int = 16, epochs: int = 30,
                       lr: float = 0.02, weight_lr: float = 5e-3, seed: int = 0, teacher: str = "reference",
                       teacher_options: dict | None = None, grid_options: dict | None = None,
                       dtype: torch.dtype = torch.float32, max_order: int | None = None,
                       grid_starts: Sequence[Any] = GRID_STARTS,
                       log: Callable[[str], None] | None = print) -> CoefficientCorrection:
    """Weight offsets and grids for `base` (deis, ipndm, ipndm_v) at each NFE, fitted against teacher endpoints.

    Args:
        model: The model or field to learn for (a Gaussian path is needed).
        base: The base solver whose weights are offset (default "deis"), at order `max_order` (None: its own).
        nfe: The model-call budgets to learn for, one grid and weight table each.
        afs: Use the analytical first step with the data mean (default True).
        grid: Starting grids (a `learn_grid` result with the same AFS setting); None learns them first with
            `learn_grid(..., starts=grid_starts, **grid_options)` (default: 64 trajectories, batches of 16,
            16 epochs at learning rate 0.2), `grid_starts` being the starting grid families it tries.
        n: Number of teacher trajectories, fitted in batches of `batch_size` for `epochs` passes.
        lr: The grid's learning rate in this joint stage; `weight_lr` is the offsets'; `seed` seeds noise and order.
        teacher: How the teacher endpoints are computed ("reference": an accurate ODE solve), with
            `teacher_options` (None: its defaults), in `dtype`; `log` prints progress (None: silent).

    Returns:
        The grids, the per-step weight offsets and the training record.

    Raises:
        InvalidArgument: `base` is not a coefficient base, the field is a plain velocity field, `afs` is not a bool,
            `grid` was learned with another AFS setting or lacks a grid for some NFE, or it does not match the model.
    """
    check_choice("base", base, COEFFICIENT_BASES)
    field = field_of(model)
    if not field.has_schedule:
        raise InvalidArgument("learned coefficients run in the EDM frame of a Gaussian path; a plain velocity field "
                              "(schedule=None) has none: learn a grid for it (learn_grid) instead")
    if not isinstance(afs, bool):
        raise InvalidArgument(f"afs={afs!r}: must be True or False")
    k = int(max_order if max_order is not None else default_order(get_solver(base)))
    sch, start = field.schedule, time.perf_counter()
    if grid is None:
        n_grid = min(64, field.condition_rows or 64)     # a conditioned field has conditions for so many samples
        opts = {"n": n_grid, "batch_size": 16, "epochs": 16, "lr": 0.2, **(grid_options or {})}
        grid = learn_grid(field, base=base, nfe=nfe, afs=afs, seed=seed, teacher=teacher,
                          teacher_options=teacher_options, dtype=dtype, log=log, starts=tuple(grid_starts), **opts)
    elif bool(grid.meta.get("afs")) != afs:
        raise InvalidArgument(f"the starting grids were learned with afs={bool(grid.meta.get('afs'))}, not {afs}")
    grid.check_field(field)
    t0, noise, target = _teacher_endpoints(field, n, seed, teacher, teacher_options, dtype, log, start)
    x0 = noise * sch.prior_std(t0)
    mean = (grid.afs_mean if grid.afs_mean is not None else mean_denoised_at_start(field, t0)) if afs else None
    gen = torch.Generator().manual_seed(seed)
    grids, weights, losses, nfes = {}, {}, {}, {}
    with frozen(field):
        for budget in nfe:
            steps = steps_for_budget(field, base, int(budget), **({"afs": True} if afs else {}))
            if steps not in grid.grids:
                raise InvalidArgument(f"the starting grids have no grid of {steps} steps (NFE {budget})")
            s_init = [float(v) for v in sch.edm_sigma(torch.tensor(grid.grids[steps], dtype=torch.float64))]
            s_init[-1] = 0.0
            m = CoefficientModel(s_init, sch.sigma_min if sch.sigma_min > 0 else s_init[-2] * 0.1, k)

            def run(idx, times, m=m):
                return differentiable_run(field.select(idx), x0[idx], times, base, max_order=k, afs=afs,
                                          afs_mean=mean, solver_orders=False, weights=list(m.weights))
            hist = _fit_grid(m, run, target, n=n, batch_size=batch_size, epochs=epochs, lr=lr, gen=gen, log=log,
                             label=f"nfe {budget} ({steps} steps)", start=start, cosine=True,
                             param_groups=[{"params": m.grid.parameters(), "lr": lr},
                                           {"params": [m.weights], "lr": weight_lr}])
            with torch.no_grad():
                s = [float(v) for v in m()]
            t = sch.t_from_edm_sigma(torch.tensor(s, dtype=torch.float64))
            t[0], t[-1] = t0, 0.0
            grids[steps] = tuple(float(v) for v in t)
            weights[steps] = m.rows()
            losses[str(steps)] = hist
            nfes[str(steps)] = int(budget)
    return CoefficientCorrection(grids, weights, base, afs, mean, field.correction_identity(),
                                 {"nfe": nfes, "loss_history": losses, "n": n, "epochs": epochs, "lr": lr,
                                  "weight_lr": weight_lr, "batch_size": batch_size, "seed": seed, "teacher": teacher,
                                  "max_order": k, "grid_seconds": grid.meta.get("seconds"),
                                  "seconds": round(time.perf_counter() - start, 1)})
