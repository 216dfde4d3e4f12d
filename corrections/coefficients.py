"""Learned multistep weights on a learned grid (corrections.learned_multistep): the grid's times (LD3, Tong et al. 2024)
and per-step offsets of the base rule's weights on the slope history (S4S, Frankel et al. 2025), fitted together by
Adam through a differentiable run against teacher endpoints.

Two stages on one set of teacher endpoints (computed once): a starting grid, then grid and offsets together. The
starting grid is the base rule's (offsets zero), fitted from several starting grids ranked by their loss before
fitting (`GRID_STAGE["keep"]` of them are fitted, by default the first; the lowest training loss is kept). The joint
stage starts from zero offsets, so it begins at the base solver on its learned grid; the learning rates decay
(cosine) and the parameters of the best epoch are kept.

On a Gaussian path everything runs in the EDM frame (levels s = sigma / alpha), with the data-mean AFS by default.
On a plain velocity field (schedule=None: a flow whose source need not be Gaussian) it runs in the field's own time
t on the velocity history, as iPNDM and iPNDM_v integrate such fields, without AFS; the grid's gaps in t are
learned (TimeGapGrid) with t = t_max and t = 0 fixed.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice, check_int
from diffsolve.field import Field
from diffsolve.grids import make_grid, time_uniform
from diffsolve.corrections.grid_search import (GapGrid, TimeGapGrid, _fit_grid, _teacher_endpoints,
                                              differentiable_run, steps_for_budget)
from diffsolve.corrections.io import CoefficientCorrection, GridCorrection, amed_grid
from diffsolve.corrections.learned_multistep import COEFFICIENT_BASES, NATIVE_TIME_BASES
from diffsolve.solvers import get_solver
from diffsolve.corrections.base_rules import default_order
from diffsolve.corrections.teacher import field_of, frozen, mean_denoised_at_start

GRID_STARTS = ("time_uniform", "karras", "logsnr_uniform", "time_quadratic")
# The stages' defaults on a Gaussian path, measured on the shared MNIST DDPM at NFE 5 (learned DEIS weights; held-out
# RMSE on 64 seeds against a 1000-step solve; CPU seconds on one core of a loaded machine). The grids that end at
# sigma_min (karras, logsnr_uniform, time_quadratic) spend the last step on almost nothing; time_uniform starts at
# under half the best of their losses. With it ranked first and fitted alone (12 epochs; a start no epoch improved on
# is kept as it was: at rate 0.2 the fit can only lose a start this good) and the joint stage on 64 trajectories in
# batches of 8 (as many updates as 128 in 16s): seeds 0 / 1 / 2 gave 0.060 / 0.063 / 0.050 (mean 0.058) in 82-104 s;
# the former recipe (every start fitted 16 epochs, 128 trajectories in 16s) 0.067-0.072 / 0.045 / 0.069 (mean
# 0.060-0.062) in 200-230 s.
# The starting-grid stage: trajectories, batch size, epochs, learning rate, how many starts are fitted (those with
# the lowest loss before fitting; None: all), and whether the rate decays.
GRID_STAGE = {"n": 64, "batch_size": 16, "epochs": 12, "lr": 0.2, "keep": 1, "cosine": False}
JOINT_STAGE = {"n": 64, "batch_size": 8}        # the joint stage's trajectories and batch size
# a plain velocity field keeps the recipe measured on it (one start, so `keep` does not matter there)
PLAIN_GRID_STAGE = {**GRID_STAGE, "epochs": 16, "keep": None}
PLAIN_JOINT_STAGE = {"n": 128, "batch_size": 16}


class CoefficientModel(torch.nn.Module):
    """A grid module (GapGrid over log-sigma gaps, or TimeGapGrid over gaps in t) and one row of `order` weight
    offsets per step, starting at zero.

    Args:
        grid: The grid module; calling it gives the levels (or times) from the largest to 0.
        steps: Number of steps of the grid.
        order: Number of weight offsets per step (the base rule's order).
    """

    def __init__(self, grid: torch.nn.Module, steps: int, order: int):
        super().__init__()
        self.grid = grid
        self.weights = torch.nn.Parameter(torch.zeros(steps, order, dtype=torch.float64))

    def forward(self) -> list[Any]:
        """The grid's current levels (or times).

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


def grid_module(field: Field, times: Sequence[float] | torch.Tensor) -> torch.nn.Module:
    """The trainable grid for `times` (decreasing, ending at 0): log-sigma gaps on a Gaussian path, gaps in t on a
    plain velocity field.

    Args:
        field: The field the grid is for.
        times: The starting times of the field.

    Returns:
        A GapGrid (EDM levels) or a TimeGapGrid (the field's own times).
    """
    t = torch.as_tensor(times, dtype=torch.float64)
    if not field.has_schedule:
        return TimeGapGrid([float(v) for v in t])
    sch = field.schedule
    s = [float(v) for v in sch.edm_sigma(t)]
    s[-1] = 0.0
    return GapGrid(s, sch.sigma_min if sch.sigma_min > 0 else s[-2] * 0.1)


def grid_times(field: Field, levels: Sequence[Any], t0: float) -> tuple[float, ...]:
    """The field's times of a grid module's output (`levels`), from t0 to exactly 0.

    Args:
        field: The field the grid is for.
        levels: EDM levels (Gaussian path) or times (plain field), with or without gradient.
        t0: The first time, set exactly.

    Returns:
        The times as floats.
    """
    v = torch.tensor([float(x) for x in levels], dtype=torch.float64)
    t = field.schedule.t_from_edm_sigma(v) if field.has_schedule else v
    t[0], t[-1] = t0, 0.0
    return tuple(float(x) for x in t)


def coefficient_run(field: Field, x: torch.Tensor, levels: Sequence[Any], base: str, k: int, afs: bool,
                    mean: torch.Tensor | None, weights: Sequence[Any] | None = None) -> torch.Tensor:
    """The learned solver's differentiable run: the base rule at full order plus `weights` (None: the base alone).

    Args:
        field: The field (a Gaussian path: EDM levels; a plain velocity field: its own times).
        x: The state at levels[0].
        levels: The grid (tensors with gradient, a final 0 as a float).
        base: The base rule; `k` its order; `afs`, `mean`: the analytical first step (Gaussian paths only).
        weights: One row of offsets per step.

    Returns:
        The state at the last level.
    """
    return differentiable_run(field, x, levels, base, max_order=k, afs=afs, afs_mean=mean, solver_orders=False,
                              weights=weights)


def _start_times(field: Field, first: Any, steps: int, t0: float) -> torch.Tensor:
    """A starting grid: None is the default (AMED's grid on a Gaussian path, uniform in t on a plain field)."""
    if first is None:
        return amed_grid(steps, field.schedule) if field.has_schedule else time_uniform(steps, None, t_max=t0)
    if isinstance(first, str) or callable(first):
        return make_grid(first, steps, field.schedule)
    return torch.as_tensor(first, dtype=torch.float64)


def starting_grid(field: Field, steps: int, starts: Sequence[Any], run: Callable, target: torch.Tensor, *,
                  stage: dict, gen: torch.Generator, log: Callable[[str], None] | None, label: str,
                  start: float) -> tuple[tuple[float, ...], list[float]]:
    """The best starting grid of `steps` steps for the base rule alone (zero offsets).

    The default grid and `starts` are ranked by their endpoint loss before fitting (one pass without gradient);
    the stage["keep"] best (None: all) are fitted for stage["epochs"] epochs (a start whose loss no epoch beat is
    kept unfitted), and the lowest loss among them is kept. Ranking costs one forward pass per start, fitting one
    forward and backward pass per epoch; on the MNIST DDPM at NFE 5 the start ranked first before fitting
    (time_uniform) was also the best after fitting.

    Args:
        field: The field.
        steps: Number of steps.
        starts: Grid names, functions or times fitted besides the default start.
        run: run(batch indices, levels) -> endpoints, against `target`.
        target: The teacher endpoints of the stage's trajectories.
        stage: "n", "batch_size", "epochs", "lr", "keep" (None: all), "cosine" (the rate decays) (GRID_STAGE).
        gen: The generator of the batch order.
        log: Progress (None: silent); `label` opens each line; `start` is the clock's origin.

    Returns:
        (times, loss history of the kept start).
    """
    t0, n, bs = field.t_max, stage["n"], stage["batch_size"]
    ranked = []
    for k, first in enumerate([None, *starts]):
        g = grid_module(field, _start_times(field, first, steps, t0))
        name = "default" if k == 0 else (first if isinstance(first, str) else f"start {k}")
        with torch.no_grad():
            levels = g()
            loss = sum(float((run(torch.arange(b, min(n, b + bs)), levels) - target[b:b + bs]).pow(2).sum())
                       for b in range(0, n, bs)) / (n * target[0].numel())
        if log:
            log(f"{label}, grid from {name}: loss {loss:.6g} before fitting  ({time.perf_counter() - start:.0f}s)")
        ranked.append((loss, k, g, name))
    best = None
    for before, _, g, name in sorted(ranked, key=lambda r: r[:2])[:stage["keep"] or len(ranked)]:
        unfitted = {key: v.detach().clone() for key, v in g.state_dict().items()}
        hist = _fit_grid(g, run, target, n=n, batch_size=bs, epochs=stage["epochs"], lr=stage["lr"], gen=gen,
                         log=log, label=f"{label}, grid from {name}", start=start, cosine=stage["cosine"])
        # the rate that moves a poor start can throw a good one away: a start no epoch improved on is kept as it was
        if before <= min(hist):
            g.load_state_dict(unfitted)
            if log:
                log(f"{label}, grid from {name}: no epoch beat the start's loss {before:.6g}; the start is kept")
        if best is None or min(before, *hist) < best[0]:
            best = (min(before, *hist), g, hist)
    with torch.no_grad():
        return grid_times(field, best[1](), t0), best[2]


def _check_arguments(field: Field, base: str, afs: Any, grid: GridCorrection | None, stage: dict) -> bool:
    """The AFS setting to use (None: on a Gaussian path only); InvalidArgument for what does not fit the field."""
    check_choice("base", base, COEFFICIENT_BASES)
    if not field.has_schedule and base not in NATIVE_TIME_BASES:
        raise InvalidArgument(f"base={base!r}: learned coefficients on a plain velocity field (schedule=None) run in "
                              f"its own time; allowed values: {', '.join(NATIVE_TIME_BASES)}")
    if afs is None:
        afs = field.has_schedule
    if not isinstance(afs, bool):
        raise InvalidArgument(f"afs={afs!r}: must be True, False or None (True on a Gaussian path)")
    if afs and not field.has_schedule:
        raise InvalidArgument("afs=True needs a Gaussian path; a plain velocity field (schedule=None) has none")
    unknown = sorted(set(stage) - set(GRID_STAGE))
    if unknown:
        raise InvalidArgument(f"grid_options: unknown keys {unknown}; allowed values: {', '.join(GRID_STAGE)}")
    for key in ("n", "batch_size", "epochs", "keep"):
        if stage[key] is not None or key != "keep":
            check_int(f"grid_options[{key!r}]", stage[key], minimum=1)
    if not isinstance(stage["cosine"], bool):
        raise InvalidArgument(f"grid_options['cosine']={stage['cosine']!r}: must be True or False")
    if grid is not None:
        if bool(grid.meta.get("afs")) != afs:
            raise InvalidArgument(f"the starting grids were learned with afs={bool(grid.meta.get('afs'))}, not {afs}")
        grid.check_field(field)
    return afs


def _stage_settings(field: Field, grid_options: dict | None, n: int | None,
                    batch_size: int | None) -> tuple[dict, int, int]:
    """The starting-grid stage's settings and the joint stage's n and batch size: the given ones over the defaults
    of the field's kind (GRID_STAGE and JOINT_STAGE on a Gaussian path, the PLAIN_ ones on a plain field)."""
    stage = {**(GRID_STAGE if field.has_schedule else PLAIN_GRID_STAGE), **(grid_options or {})}
    joint = JOINT_STAGE if field.has_schedule else PLAIN_JOINT_STAGE
    n = check_int("n", joint["n"] if n is None else n, minimum=1)
    return stage, n, check_int("batch_size", joint["batch_size"] if batch_size is None else batch_size, minimum=1)


def learn_coefficients(model: Any, *, base: str = "deis", nfe: Sequence[int] = (3, 5, 7, 9), afs: bool | None = None,
                       grid: GridCorrection | None = None, n: int | None = None, batch_size: int | None = None,
                       epochs: int = 30, lr: float = 0.02, weight_lr: float = 5e-3, seed: int = 0,
                       teacher: str = "reference", teacher_options: dict | None = None,
                       grid_options: dict | None = None, dtype: torch.dtype = torch.float32,
                       max_order: int | None = None, grid_starts: Sequence[Any] | None = None,
                       log: Callable[[str], None] | None = print) -> CoefficientCorrection:
    """Weight offsets and grids for `base` at each NFE, fitted against teacher endpoints.

    Args:
        model: The model or field: a Gaussian path (EDM frame; base deis, ipndm or ipndm_v) or a plain velocity
            field (its own time; base ipndm or ipndm_v).
        base: The base solver whose weights are offset (default "deis"), at order `max_order` (None: its own).
        nfe: The model-call budgets to learn for, one grid and weight table each.
        afs: Use the analytical first step with the data mean; None (default): on a Gaussian path only.
        grid: Starting grids (a `learn_grid` result with the same AFS setting); None fits them first from the
            default grid and `grid_starts` (None: GRID_STARTS on a Gaussian path, none on a plain field) with
            `grid_options` over GRID_STAGE (n, batch_size, epochs, lr, keep: the starts fitted, the best before
            fitting), on the first endpoints of the same teacher solve. A plain field's defaults are the PLAIN_ ones.
        n: Teacher trajectories, fitted in batches of `batch_size` for `epochs` passes; None: JOINT_STAGE's value.
        lr: The grid's learning rate in this joint stage; `weight_lr` is the offsets'; `seed` seeds noise and order.
        teacher: How the teacher endpoints are computed ("reference": an accurate ODE solve), with `teacher_options`
            (None: its defaults), in `dtype`; `log` prints progress (None: silent).

    Returns:
        The grids, the per-step weight offsets (recorded with the frame they run in) and the training record.

    Raises:
        InvalidArgument: `base` is not a coefficient base (or needs a Gaussian path the field lacks), `afs` is not a
            bool or None (or True on a plain field), `n`, `batch_size` or a count of `grid_options` is below 1 (or
            it has an unknown key), `grid` was learned with another AFS setting or lacks a grid for some NFE, or it
            does not match the model.
    """
    field = field_of(model)
    stage, n, batch_size = _stage_settings(field, grid_options, n, batch_size)
    afs = _check_arguments(field, base, afs, grid, stage)
    stage["n"] = min(stage["n"], field.condition_rows or stage["n"])    # a conditioned field: so many samples
    starts = tuple(grid_starts if grid_starts is not None else (GRID_STARTS if field.has_schedule else ()))
    k = int(max_order if max_order is not None else default_order(get_solver(base)))
    start = time.perf_counter()
    n_teacher = n if grid is not None else max(n, stage["n"])
    t0, noise, target = _teacher_endpoints(field, n_teacher, seed, teacher, teacher_options, dtype, log, start)
    x0 = noise * field.schedule.prior_std(t0) if field.has_schedule else noise
    saved_mean = grid.afs_mean if grid is not None else None
    mean = (saved_mean if saved_mean is not None else mean_denoised_at_start(field, t0)) if afs else None
    # the batch orders of the two stages: one generator each, as when the grids came from learn_grid
    gen, grid_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    grids, weights, losses, grid_losses, nfes = {}, {}, {}, {}, {}
    def start_run(idx, levels):                 # the starting-grid stage: the base rule without offsets
        return coefficient_run(field.select(idx), x0[idx], levels, base, k, afs, mean)
    with frozen(field):
        for budget in nfe:
            steps = steps_for_budget(field, base, int(budget), **({"afs": True} if afs else {}))
            label = f"nfe {budget} ({steps} steps)"
            if grid is None:
                t_init, grid_losses[str(steps)] = starting_grid(field, steps, starts, start_run, target, stage=stage,
                                                                gen=grid_gen, log=log, label=label, start=start)
            elif steps in grid.grids:
                t_init = grid.grids[steps]
            else:
                raise InvalidArgument(f"the starting grids have no grid of {steps} steps (NFE {budget})")
            m = CoefficientModel(grid_module(field, t_init), steps, k)

            def run(idx, levels, m=m):
                return coefficient_run(field.select(idx), x0[idx], levels, base, k, afs, mean, list(m.weights))
            losses[str(steps)] = _fit_grid(m, run, target[:n], n=n, batch_size=batch_size, epochs=epochs, lr=lr,
                                           gen=gen, log=log, label=label, start=start, cosine=True,
                                           param_groups=[{"params": m.grid.parameters(), "lr": lr},
                                                         {"params": [m.weights], "lr": weight_lr}])
            with torch.no_grad():
                grids[steps] = grid_times(field, m(), t0)
            weights[steps] = m.rows()
            nfes[str(steps)] = int(budget)
    meta = {"nfe": nfes, "loss_history": losses, "grid_loss_history": grid_losses, "n": n, "epochs": epochs,
            "lr": lr, "weight_lr": weight_lr, "batch_size": batch_size, "seed": seed, "teacher": teacher,
            "max_order": k, "grid_stage": stage if grid is None else None, "starts": [str(v) for v in starts],
            "grid_seconds": grid.meta.get("seconds") if grid is not None else None,
            "seconds": round(time.perf_counter() - start, 1)}
    return CoefficientCorrection(grids, weights, base, afs, mean, field.correction_identity(), meta,
                                 "edm" if field.has_schedule else "native")
