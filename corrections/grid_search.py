"""Time grids learned by gradient for one model (LD3-style), and the base-solver checks the grid searches share.

Learned: the N - 1 interior noise levels, parameterized by a softmax over log-sigma gaps (so they stay ordered and
inside [sigma_min, sigma_max]), optimized by Adam through a differentiable run of the base solver against the
teacher's endpoints on ~100 samples; the grid ends at t = 0 like the library's grids. `learn_grid` returns a
`GridCorrection`: lists of times (`.grid(steps)`) any solver takes as `grid=`; `tune auto`'s deadline stops epochs.
GITS (the dynamic-programming grid search) lives in `diffsolve.corrections.gits`.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import Field
from diffsolve.grids import make_grid, time_uniform
from diffsolve.solvers import get_solver
from diffsolve.solvers.multistep import step_orders
from diffsolve.corrections.base_rules import afs_denoised, corrected_step, default_order
from diffsolve.corrections.io import GridCorrection, amed_grid
from diffsolve.corrections.cost import past_deadline
from diffsolve.corrections.teacher import field_of, frozen, mean_denoised_at_start, noise_for, teacher_states

DIFFERENTIABLE_BASES = ("euler", "ipndm", "ipndm_v", "deis", "dpmpp_2m")
PLAIN_BASES = ("euler", "ipndm", "ipndm_v", "lms", "heun", "midpoint", "rk4")


def check_plain_base(field: Field, base: str, who: str) -> None:
    """Refuse a base solver that needs a Gaussian schedule on a plain velocity field (no schedule).

    On a plain velocity field only bases that integrate in the field's native time can run; on a field with a
    schedule every registered base is accepted.

    Args:
        field: The field the grid is searched or learned for.
        base: The registered name of the base solver the grid is for.
        who: The caller's name for the error message (e.g. "gits", "learn_grid").

    Raises:
        InvalidArgument: `field` has no schedule and `base` needs one (the message names `who` and the bases
            that run in native time).
    """
    if field.has_schedule:
        return
    if get_solver(base).needs_schedule:
        raise InvalidArgument(f"{who} on a plain velocity field (schedule=None) needs a base solver that runs in "
                              f"native time (e.g. {', '.join(PLAIN_BASES)}); {base!r} needs a Gaussian schedule")


def steps_for_budget(field: Field, base: str, nfe: int, **solver_options: Any) -> int:
    """The most steps of `base` that fit in `nfe` network evaluations on `field`, on a grid that ends at t = 0.

    Args:
        field: The field whose model is called (its network evaluations per call count: 2 under guidance).
        base: The registered name of the base solver.
        nfe: The budget in network evaluations.
        **solver_options: The base solver's options (e.g. afs=True, which saves the first call).

    Returns:
        int: The largest step count n with `model_calls(n) * evals_per_call <= nfe`.

    Raises:
        InvalidArgument: Not even one step fits in `nfe`, or `base` / `solver_options` are not a valid solver.
    """
    solver = get_solver(base, **solver_options)
    steps = 0
    while solver.model_calls(steps + 1, field, True) * field.evals_per_call <= nfe:     # guidance: 2 per call
        steps += 1
    if steps < 1:
        raise InvalidArgument(f"nfe={nfe} is too small for {base!r}")
    return steps


# ------------------------------------------------------------------------------------------------
# Learned grid (LD3-style)
# ------------------------------------------------------------------------------------------------
def differentiable_run(field: Field, x: torch.Tensor, s: Sequence[Any], base: str = "ipndm",
                       max_order: int | None = None, afs: bool = False,
                       afs_mean: torch.Tensor | None = None, solver_orders: bool = True,
                       weights: Sequence[Any] | None = None) -> torch.Tensor:
    """The state at the last level after the base solver over EDM noise levels `s`, differentiable in the levels.

    Args:
        s: The levels (tensors with gradient; a final 0 as a float); `x` is the state at s[0].
        max_order: The rule's highest order; None is the solver's own.
        afs: The first data prediction is the analytical one around `afs_mean` (None: zero), as in afs_denoised.
        solver_orders: Each step's order as the registered solver takes it (DEIS lowers it on its last steps, as
            diffusers does); False: the full order throughout, as AMED-Plugin's base rule takes it.
        weights: One row of learned offsets per step (corrections.learned_multistep), with gradient or not.

    Raises:
        InvalidArgument: `base` is none of DIFFERENTIABLE_BASES.
    """
    if base not in DIFFERENTIABLE_BASES:
        raise InvalidArgument(f"base={base!r}; a learned grid supports {', '.join(DIFFERENTIABLE_BASES)}")
    solver = get_solver(base)
    k = max_order if max_order is not None else default_order(solver)
    orders = [k] * (len(s) - 1)
    if solver_orders and field.has_schedule:
        if hasattr(solver, "lower_order_final"):
            # only the step count and the final zero matter to the order schedule, not the levels themselves
            ends = float(s[-1]) == 0.0
            orders = list(step_orders([0.0] * (len(s) - 1) + [math.inf if ends else 1.0], k,
                                      solver.lower_order_final, ends, getattr(solver, "singular_end", True)))
    if not field.has_schedule:
        return differentiable_run_plain(field, x, s, base, k, afs, weights)
    sch = field.schedule
    a0 = float(sch.alpha(torch.tensor(float(sch.t_from_edm_sigma(torch.as_tensor(float(s[0])))))))
    y = x / a0
    hist: tuple = ()
    for i in range(len(s) - 1):
        s0, s1 = s[i], s[i + 1]
        p = field.at(sch.t_from_edm_sigma(s0.reshape(1)) if isinstance(s0, torch.Tensor) else
                     float(sch.t_from_edm_sigma(torch.tensor(float(s0)))))
        alpha = p.alpha.reshape(-1, *([1] * (y.dim() - 1))).to(y.dtype) if isinstance(p.alpha, torch.Tensor) \
            else p.alpha
        if afs and i == 0:
            D = afs_denoised(y, float(s0), afs_mean)
        else:
            D = field.denoise(y * alpha, p)
        s0b = s0.reshape(-1, *([1] * (y.dim() - 1))).to(y.dtype) if isinstance(s0, torch.Tensor) else s0
        d = (y - D) / s0b
        hist = ((s0, d, D), *hist)[:k]
        y = corrected_step(solver, y, hist, s0, s1, min(k, orders[i]), None if weights is None else weights[i])
    a1 = float(sch.alpha(torch.tensor(float(sch.t_from_edm_sigma(torch.as_tensor(float(s[-1])))))))
    return y * a1


PLAIN_DIFFERENTIABLE_BASES = ("euler", "ipndm", "ipndm_v")


def differentiable_run_plain(field: Field, x: torch.Tensor, t: Sequence[Any], base: str, k: int,
                             afs: bool = False, weights: Sequence[Any] | None = None) -> torch.Tensor:
    """The state at t[-1] after the base solver on a plain velocity field (the Adams-Bashforth rules of plan_plain).

    Args:
        t: The times (tensors with gradient, or floats); `x` is the state at t[0], `k` the rule's highest order.
        weights: One row of learned offsets per step on the velocity history, as in differentiable_run.

    Raises:
        InvalidArgument: `base` is none of PLAIN_DIFFERENTIABLE_BASES, or `afs` is True (no Gaussian path).
    """
    if base not in PLAIN_DIFFERENTIABLE_BASES:
        raise InvalidArgument(f"base={base!r}: on a plain velocity field a learned grid supports "
                              f"{', '.join(PLAIN_DIFFERENTIABLE_BASES)}")
    if afs:
        raise InvalidArgument("afs=True needs a Gaussian path; a plain velocity field (schedule=None) has none")
    solver = get_solver(base)
    hist: tuple = ()
    for i in range(len(t) - 1):
        t0, t1 = t[i], t[i + 1]
        p = field.at(t0.reshape(1) if isinstance(t0, torch.Tensor) else float(t0))
        v = field.velocity(x, p)
        hist = ((t0, v, None), *hist)[:k]
        x = corrected_step(solver, x, hist, t0, t1, k, None if weights is None else weights[i])
    return x


class TimeGapGrid(torch.nn.Module):
    """Times t_0 = t_max > t_1 > ... > t_n = 0 of a plain velocity field: gaps in t from a softmax over n logits.

    `init`: the starting times, from t_max down to 0 (InvalidArgument otherwise).
    """

    def __init__(self, init: Sequence[float]):
        super().__init__()
        t = [float(v) for v in init]
        if t[-1] != 0.0 or len(t) < 2:
            raise InvalidArgument("the initial grid must end at t = 0")
        self.t_max = t[0]
        gaps = torch.tensor([max(t[i] - t[i + 1], 1e-4) for i in range(len(t) - 1)], dtype=torch.float64)
        self.logits = torch.nn.Parameter(torch.log(gaps / gaps.sum()))

    def forward(self) -> list[Any]:
        """The current times: t_max, the interior times (with gradient), then 0.0."""
        g = torch.softmax(self.logits, 0)
        inner = self.t_max * (1.0 - torch.cumsum(g, 0)[:-1])
        return [torch.tensor(self.t_max, dtype=torch.float64)] + [v.reshape(1) for v in inner] + [0.0]


class GapGrid(torch.nn.Module):
    """Noise levels s_0 = sigma_max > s_1 > ... > s_{n-1} > sigma_min (then 0): log-sigma gaps from a softmax over
    n logits, the last gap being the slack down to sigma_min.

    `init`: the starting levels, from sigma_max down to 0 (InvalidArgument otherwise); `s_min` is sigma_min.
    """

    def __init__(self, init: Sequence[float], s_min: float):
        super().__init__()
        s = [float(v) for v in init]
        if s[-1] != 0.0 or len(s) < 2:
            raise InvalidArgument("the initial grid must end at zero noise")
        self.s_max, self.s_min = s[0], float(s_min)
        inner = [min(max(v, self.s_min * 1.0001), self.s_max) for v in s[1:-1]]
        logs = [math.log(self.s_max)] + [math.log(v) for v in inner] + [math.log(self.s_min)]
        gaps = torch.tensor([max(logs[i] - logs[i + 1], 1e-3) for i in range(len(logs) - 1)], dtype=torch.float64)
        self.logits = torch.nn.Parameter(torch.log(gaps / gaps.sum()))

    def forward(self) -> list[Any]:
        """The current levels: sigma_max, the interior levels (with gradient), then 0.0."""
        g = torch.softmax(self.logits, 0)
        span = math.log(self.s_max) - math.log(self.s_min)
        logs = math.log(self.s_max) - span * torch.cumsum(g, 0)[:-1]
        return [torch.tensor(self.s_max, dtype=torch.float64)] + [v.reshape(1) for v in torch.exp(logs)] + [0.0]


def _teacher_endpoints(field: Field, n: int, seed: int, teacher: str, teacher_options: dict | None,
                       dtype: torch.dtype, log: Callable[[str], None] | None, start: float):
    """(t_max, unit noise, teacher endpoints) of a learned grid's training set: n samples from seeds that GITS
    (seed * 10^6 + i) and the evaluations never draw."""
    torch.manual_seed(seed)
    seeds = list(range(seed * 1_000_000 + 500_000, seed * 1_000_000 + 500_000 + n))
    noise = noise_for(field, seeds, dtype=dtype)
    t0 = field.t_max
    target = teacher_states(field, noise, [t0, 0.0], mode=teacher, seeds=seeds, **(teacher_options or {}))[-1]
    if log:
        log(f"teacher: {n} endpoints ({teacher}) in {time.perf_counter() - start:.1f}s")
    return t0, noise, target


def _fit_grid(grid: torch.nn.Module, run: Callable[[torch.Tensor, Any], torch.Tensor], target: torch.Tensor, *,
              n: int, batch_size: int, epochs: int, lr: float, gen: torch.Generator,
              log: Callable[[str], None] | None, label: str, start: float, param_groups: list | None = None,
              cosine: bool = False) -> list[float]:
    """Adam on the grid's parameters (or `param_groups`): mean squared endpoint error of `run(batch indices, grid())`
    against the teacher's endpoints, seeded minibatches; returns each epoch's mean loss. The best epoch's parameters
    are kept (a large rate can leave the minimum late); `cosine`: the rates decay to zero; stops at past_deadline()."""
    opt = torch.optim.Adam(param_groups if param_groups is not None else grid.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1)) if cosine else None
    hist = []
    best = (math.inf, None)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        tot = 0.0
        for b in range(0, n, batch_size):
            idx = order[b:b + batch_size]
            before_last = {k: v.detach().clone() for k, v in grid.state_dict().items()}
            with torch.enable_grad():
                loss = (run(idx, grid()) - target[idx]).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
        if sched is not None:
            sched.step()
        hist.append(tot / n)
        if hist[-1] < best[0]:
            # the epoch's loss was measured with the parameters before its last update: keep those
            best = (hist[-1], before_last)
        if log:
            log(f"{label} epoch {epoch + 1}/{epochs}  loss {hist[-1]:.6g}  ({time.perf_counter() - start:.0f}s)")
        if past_deadline():
            break
    if best[1] is not None:
        grid.load_state_dict(best[1])
    return hist


def learn_grid(model: Any, *, base: str = "ipndm", nfe: Sequence[int] = (3, 5, 7, 9), n: int = 96,
               batch_size: int = 32, epochs: int = 20, lr: float = 0.05, seed: int = 0, init: Any = None,
               teacher: str = "reference", teacher_options: dict | None = None, dtype: torch.dtype = torch.float32,
               afs: bool = False, log: Callable[[str], None] | None = print, starts: Sequence[Any] = (),
               **solver_options: Any) -> GridCorrection:
    """A GridCorrection "learned": grids for `base` at each NFE, fitted by a differentiable run to teacher endpoints.

    The endpoint loss has local minima in the grid; `starts` (grid names or functions) are fitted too, besides
    `init`, and the grid with the lowest training loss (its best epoch) is kept.

    Args:
        model: The model or field.
        n: Teacher endpoints, fitted by Adam (`lr`) in batches of `batch_size` for `epochs` passes.
        init: The first starting grid (a name, a function or times); None is the AMED default grid.
        teacher: How the endpoints are computed, with `teacher_options`, `seed`, `dtype`, `log` as in gits_grid.
        afs: The first step is the analytical one around the measured mean data prediction (one more step for the
            same NFE); such a grid runs through `to_amed_table` (AMED-Plugin with per-step constants), since the
            plain solvers' AFS assumes a zero mean.

    Raises:
        InvalidArgument: `base` is not differentiable on this field, an NFE is too small, or afs on a plain field.
    """
    field = field_of(model)
    if not field.has_schedule:
        return _learn_grid_plain(field, base=base, nfe=nfe, n=n, batch_size=batch_size, epochs=epochs, lr=lr,
                                 seed=seed, init=init, teacher=teacher, teacher_options=teacher_options, dtype=dtype,
                                 afs=afs, log=log, **solver_options)
    sch = field.schedule
    start = time.perf_counter()
    t0, noise, target = _teacher_endpoints(field, n, seed, teacher, teacher_options, dtype, log, start)
    x0 = noise * sch.prior_std(t0)
    grids, losses, nfes = {}, {}, {}
    gen = torch.Generator().manual_seed(seed)
    mean = mean_denoised_at_start(field, t0) if afs else None
    if afs:
        solver_options = {**solver_options, "afs": True}
    with frozen(field):
        for budget in nfe:
            steps = steps_for_budget(field, base, int(budget), **solver_options)
            best = None
            for k, first in enumerate([init, *starts]):
                if first is None:
                    t_init = amed_grid(steps, sch)
                elif isinstance(first, str) or callable(first):
                    t_init = make_grid(first, steps, sch)
                else:
                    t_init = torch.as_tensor(first, dtype=torch.float64)
                s_init = [float(v) for v in sch.edm_sigma(t_init)]
                s_init[-1] = 0.0
                g = GapGrid(s_init, sch.sigma_min if sch.sigma_min > 0 else s_init[-2] * 0.1)
                # an AFS grid runs as AMED-Plugin's per-step table, whose base rule keeps the full order
                run = lambda idx, times: differentiable_run(  # noqa: E731
                    field.select(idx), x0[idx], times, base, afs=afs, afs_mean=mean, solver_orders=not afs)
                name = "init" if k == 0 else (first if isinstance(first, str) else f"start {k}")
                hist = _fit_grid(g, run, target, n=n, batch_size=batch_size, epochs=epochs, lr=lr, gen=gen, log=log,
                                 label=f"nfe {budget} ({steps} steps, from {name})", start=start)
                if best is None or min(hist) < min(best[1]):
                    best = (g, hist)
            g, hist = best
            with torch.no_grad():
                s = [float(v) for v in g()]
            t = sch.t_from_edm_sigma(torch.tensor(s, dtype=torch.float64))
            t[0], t[-1] = t0, 0.0
            grids[steps] = tuple(float(v) for v in t)
            losses[str(steps)] = hist
            nfes[str(steps)] = int(budget)
    return GridCorrection("learned", grids, base, field.correction_identity(),
                          {"nfe": nfes, "loss_history": losses, "n": n, "epochs": epochs, "lr": lr, "seed": seed,
                           "teacher": teacher, "afs": afs, "starts": [str(v) for v in starts],
                           "seconds": round(time.perf_counter() - start, 1)}, mean)


def _learn_grid_plain(field: Field, *, base: str, nfe: Sequence[int], n: int, batch_size: int, epochs: int,
                      lr: float, seed: int, init: Any, teacher: str, teacher_options: dict | None,
                      dtype: torch.dtype, afs: bool, log: Callable[[str], None] | None,
                      **solver_options: Any) -> GridCorrection:
    """learn_grid on a plain velocity field: the interior times (gaps in t, `TimeGapGrid`) optimized through
    `differentiable_run_plain` against the teacher's endpoints; the start (t = 1) and t = 0 fixed. The initial
    grid is uniform in t (the default grid of such fields) unless `init` says otherwise."""
    check_plain_base(field, base, "a learned grid")
    if base not in PLAIN_DIFFERENTIABLE_BASES:
        raise InvalidArgument(f"base={base!r}: on a plain velocity field a learned grid supports "
                              f"{', '.join(PLAIN_DIFFERENTIABLE_BASES)}")
    if afs or solver_options.get("afs"):
        raise InvalidArgument("afs=True needs a Gaussian path; a plain velocity field (schedule=None) has none")
    k = getattr(get_solver(base, **solver_options), "solver_order", 1)
    start = time.perf_counter()
    t0, noise, target = _teacher_endpoints(field, n, seed, teacher, teacher_options, dtype, log, start)
    grids, losses, nfes = {}, {}, {}
    gen = torch.Generator().manual_seed(seed)
    with frozen(field):
        for budget in nfe:
            steps = steps_for_budget(field, base, int(budget), **solver_options)
            t_init = time_uniform(steps, None, t_max=t0) if init is None else torch.as_tensor(
                init(steps, None) if callable(init) else init, dtype=torch.float64)
            g = TimeGapGrid([float(v) for v in t_init])
            run = lambda idx, times: differentiable_run_plain(field.select(idx), noise[idx], times, base, k)  # noqa
            hist = _fit_grid(g, run, target, n=n, batch_size=batch_size, epochs=epochs, lr=lr, gen=gen, log=log,
                             label=f"nfe {budget} ({steps} steps)", start=start)
            with torch.no_grad():
                t = [float(v) for v in g()]
            t[0], t[-1] = t0, 0.0
            grids[steps] = tuple(t)
            losses[str(steps)] = hist
            nfes[str(steps)] = int(budget)
    return GridCorrection("learned", grids, base, field.correction_identity(),
                          {"nfe": nfes, "loss_history": losses, "n": n, "epochs": epochs, "lr": lr, "seed": seed,
                           "teacher": teacher, "afs": False, "time": "native",
                           "seconds": round(time.perf_counter() - start, 1)})

