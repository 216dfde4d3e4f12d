"""Training AMED predictors (Zhou et al. 2024) against teacher trajectories, the network frozen.

Step-wise loss (the paper's): after each student step the squared L2 distance to the teacher's state at the same
grid time, one Adam step per student step; single-step bases (AMED-Solver, Euler, DPM-Solver-2) restart every
step from the teacher's point, multistep bases continue from their own output (history detached). Endpoint loss:
the whole run with gradient, one Adam step per batch against the teacher's endpoint. Gradients reach the
predictor through the second model call of each step (the network's input and time), never the network's weights.

One predictor serves several grids (one per NFE): it sees log s_n and log s_{n+1}, and the training batches cycle
through the grids. Seeded: the predictor's initial weights, the noise seeds and the batch order follow `seed`.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import Field, _network_of
from diffsolve.grids import make_grid, time_uniform
from diffsolve.loop import Evaluator
from diffsolve.corrections.cost import past_deadline
from diffsolve.corrections.amed import PLAIN_BASES, PLUGIN_BASES, SINGLE_STEP_BASES, AMEDSolver
from diffsolve.corrections.io import AMEDCorrection, amed_grid
from diffsolve.corrections.predictor import AMEDPredictor
from diffsolve.corrections.teacher import (FEATURE_MODULES, default_feature_module, field_of, frozen,
                                          mean_denoised_at_start, noise_for, teacher_states)

LOSSES = ("step", "endpoint")


def steps_for_nfe(nfe: int, afs: bool) -> int:
    """AMED steps for an NFE budget: 2 calls per step, one fewer with AFS.

    Args:
        nfe: The model-call budget.
        afs: Whether the first step is the analytical one.

    Returns:
        The number of steps.

    Raises:
        InvalidArgument: Not even one step fits.
    """
    steps = (nfe + (1 if afs else 0)) // 2
    if steps < 1:
        raise InvalidArgument(f"nfe={nfe} is too small for AMED (2 calls per step)")
    return steps


def _grid_times(grid: Any, steps: int, field) -> tuple[float, ...]:
    if grid is None and not field.has_schedule:
        t = time_uniform(steps, None)          # a plain velocity field's default grid
    elif grid is None:
        t = amed_grid(steps, field.schedule)
    elif isinstance(grid, dict):
        t = torch.as_tensor(grid[steps], dtype=torch.float64)
    else:
        t = make_grid(grid, steps, field.schedule)
    return tuple(float(v) for v in t)


def _detach_state(state):
    return tuple(tuple(v.detach() if isinstance(v, torch.Tensor) else v for v in entry) for entry in state)


def train_amed(model: Any, *, base: str = "amed", nfe: Sequence[int] = (3, 5, 7, 9), afs: bool = True,
               grid: Any = None, loss: str = "step", features: str = "auto", module: str | None = None,
               n_train: int = 128, batch_size: int = 32, epochs: int = 10, lr: float = 5e-3, seed: int = 0,
               train_seeds: Sequence[int] | None = None, teacher: str = "reference", teacher_options: dict | None = None,
               predictor_options: dict | None = None, afs_mean: bool | torch.Tensor = True,
               init: Any = None, dtype: torch.dtype = torch.float32,
               log: Callable[[str], None] | None = print) -> AMEDCorrection:
    """Train an AMED-Solver (`base='amed'`) or AMED-Plugin predictor for `model` on the grids of the given NFEs.

    Args:
        model: The model or field (the network stays frozen).
        base: "amed" (AMED-Solver) or the AMED-Plugin base (PLUGIN_BASES).
        nfe: The model-call budgets; one grid per budget.
        afs: Use the analytical first step.
        grid: The grids: None (the AMED default grid), a grid name or function, or a dict steps -> times.
        loss: "step" (the paper's step-wise loss) or "endpoint".
        features: 'auto' (the bottleneck of known networks, else the data prediction), 'module' (with `module=`),
            'denoised' or 'none' (time-only: per-step constants).
        module: The network's submodule whose output the predictor reads; None: the known bottleneck.
        n_train: Training trajectories (seeds seed * 10^6 + i), unless `train_seeds` lists the seeds.
        batch_size: Trajectories per batch.
        epochs: Passes over the trajectories; `lr` is Adam's learning rate, `seed` seeds weights, noise and order.
        teacher: How the teacher states are computed, with `teacher_options` (None: defaults).
        predictor_options: Further AMEDPredictor options (s_floor defaults to the schedule's sigma_min).
        afs_mean: True measures the mean data prediction at the largest noise once, for the analytical first step;
            False keeps diff-sampler's zero-mean AFS; a tensor is that mean.
        init: Time tables (AMEDCorrections holding TimeTables, e.g. from `grid_search.to_amed_table`) to start from:
            their grids become the training grids and the predictor first reproduces their (r, c, a) exactly (its
            feature branch starts at zero), so training refines a good time-only solver per sample.
        dtype: Dtype of the samples; `log` prints progress (None: silent).

    Returns:
        The trained correction, its training record in meta.

    Raises:
        InvalidArgument: An option is not allowed (also on a plain velocity field), or the grids start apart.
    """
    check_choice("loss", loss, LOSSES)
    if base != "amed":
        check_choice("base", base, PLUGIN_BASES)
    field = field_of(model)
    if not field.has_schedule:
        features = _plain_field_features(base, afs, features)
        afs_mean = False
    torch.manual_seed(seed)
    if features == "auto":
        module = module or default_feature_module(field)
        features = "module" if module else "denoised"
        if module is None:
            _say_no_bottleneck(field, log)
    popts = dict(predictor_options or {})
    if field.has_schedule and field.schedule.sigma_min > 0:
        popts.setdefault("s_floor", field.schedule.sigma_min)
    predictor = AMEDPredictor(features=features, module=module if features == "module" else None, **popts)
    tables = list(init.values()) if isinstance(init, dict) else ([init] if init is not None else [])
    if tables:
        grid = {k: v for tab in tables for k, v in tab.grids.items()}
        nfe = [tab.nfe_for(k) * field.evals_per_call for tab in tables for k in tab.grids]
        afs = tables[0].afs
        if isinstance(afs_mean, bool) and tables[0].afs_mean is not None:
            afs_mean = tables[0].afs_mean
    steps_list = sorted({steps_for_nfe(int(n) // field.evals_per_call, afs) for n in nfe})    # guidance: 2 per call
    grids = {k: _grid_times(grid, k, field) for k in steps_list}
    if tables:
        fit_time_table(predictor, [(tab.predictor, field.schedule) for tab in tables], log=log)
    t_start = grids[steps_list[0]][0]
    if any(g[0] != t_start for g in grids.values()):
        raise InvalidArgument("all grids must start at the same time")
    mean = None
    if isinstance(afs_mean, torch.Tensor):
        mean = afs_mean
    elif afs and afs_mean:
        mean = mean_denoised_at_start(field, t_start)
    corr = AMEDCorrection(predictor, base, afs, mean, grids, field.correction_identity(),
                          {"loss": loss, "epochs": epochs, "n_train": n_train, "batch_size": batch_size, "lr": lr,
                           "seed": seed, "teacher": teacher, "features": features, "module": module})
    seeds = list(train_seeds) if train_seeds is not None else list(range(seed * 1_000_000, seed * 1_000_000 + n_train))
    _fit_predictor(corr, field, seeds, loss=loss, batch_size=batch_size, epochs=epochs, lr=lr, seed=seed,
                   teacher=teacher, teacher_options=teacher_options, dtype=dtype, log=log)
    return corr


def _say_no_bottleneck(field: Field, log: Callable[[str], None] | None) -> None:
    """Warn (and log) that features='auto' found no known bottleneck module, what it uses, and what to set."""
    net = _network_of(field)
    names = [n for n, _ in net.named_modules() if n] if isinstance(net, torch.nn.Module) else []
    middle = [n for n in names if any(k in n.lower() for k in ("mid", "bottleneck", "middle"))]
    shown = (middle or [n for n in names if "." not in n])[:6]
    where = (f"candidate modules of {type(net).__name__}: {', '.join(shown)}" if shown else
             "the network is not a torch.nn.Module, so no module can be read")
    msg = (f"AMED features='auto' found none of the known bottleneck modules ({', '.join(FEATURE_MODULES)}); using "
           f"the data prediction instead (features='denoised'). To feed a network feature, set --module NAME "
           f"(module=NAME) with features='module'; {where}")
    if names:           # a network whose bottleneck could be named; a plain function has no module to offer
        warnings.warn(msg, UserWarning, stacklevel=3)
    if log:
        log(msg)


def _plain_field_features(base: str, afs: bool, features: str) -> str:
    """A plain velocity field: native time (AMEDSolver.plan_plain), no AFS, features none or the velocity."""
    if base not in PLAIN_BASES:
        raise InvalidArgument(f"AMED on a plain velocity field (schedule=None) needs a base in native time "
                              f"({', '.join(PLAIN_BASES)}); {base!r} needs a Gaussian schedule")
    if afs:
        raise InvalidArgument("afs=True needs a Gaussian path; a plain velocity field (schedule=None) has none: "
                              "pass afs=False")
    if features == "module":
        raise InvalidArgument("features='module' is not supported on a plain velocity field; use 'none' "
                              "(time-only) or 'denoised' (the velocity at the step's start)")
    return "none" if features == "auto" else features


def _fit_predictor(corr: AMEDCorrection, field: Field, seeds: list, *, loss: str, batch_size: int, epochs: int,
                   lr: float, seed: int, teacher: str, teacher_options: dict | None, dtype: torch.dtype,
                   log: Callable[[str], None] | None) -> None:
    """Adam on the predictor of `corr` against teacher states at its grids' times, the batches cycling through
    the grids; the loss history and the seconds go to corr.meta."""
    predictor, grids = corr.predictor, corr.grids
    steps_list = sorted(grids)
    noise = noise_for(field, seeds, dtype=dtype)
    all_times = sorted({v for g in grids.values() for v in g}, reverse=True)
    start = time.perf_counter()
    teach = teacher_states(field, noise, all_times, mode=teacher, seeds=seeds, **(teacher_options or {}))
    index = {v: i for i, v in enumerate(all_times)}
    if log:
        log(f"teacher: {len(seeds)} trajectories at {len(all_times)} times ({teacher}) in "
            f"{time.perf_counter() - start:.1f}s")
    solver = AMEDSolver(corr, base=corr.base, afs=corr.afs, plugin=corr.base != "amed")
    single = corr.base in SINGLE_STEP_BASES
    opt = torch.optim.Adam(predictor.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    predictor.train().requires_grad_(True)
    history = []
    with frozen(field):
        for epoch in range(epochs):
            order = torch.randperm(len(seeds), generator=gen)
            total, count = 0.0, 0
            for b in range(0, len(seeds), batch_size):
                idx = order[b:b + batch_size]
                batch_field = field.select(idx)         # per-sample conditions follow the samples
                for steps in steps_list:
                    t = torch.tensor(grids[steps], dtype=torch.float64)
                    plan = solver.plan(batch_field, t)
                    target = teach[[index[float(v)] for v in t]][:, idx]
                    total += _train_batch(solver, batch_field, plan, target, opt, loss, single)
                    count += 1
            history.append(total / max(count, 1))
            if log:
                log(f"epoch {epoch + 1}/{epochs}  loss {history[-1]:.6g}  ({time.perf_counter() - start:.0f}s)")
            if past_deadline():     # `tune auto`'s time for this candidate is up
                break
    predictor.eval().requires_grad_(False)
    corr.meta.update({"loss_history": history, "seconds": round(time.perf_counter() - start, 1)})


def _train_batch(solver, field, plan, target: torch.Tensor, opt, loss: str, single: bool) -> float:
    """One batch on one grid; returns the mean loss per step (step-wise) or the endpoint loss."""
    ev = Evaluator(field, {}, check_finite=False)
    x = target[0]
    state = solver.init(plan)
    if loss == "endpoint":
        with torch.enable_grad():
            for i in range(plan.steps):
                ev.step = i
                x, _, state = solver.step(ev, x, plan.points[i], plan.points[i + 1], state, plan.coeffs[i])
            value = (x - target[-1]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
        opt.step()
        return float(value.detach())
    losses = []
    for i in range(plan.steps):
        ev.step = i
        start = target[i] if single else x.detach()
        with torch.enable_grad():
            x, _, state = solver.step(ev, start, plan.points[i], plan.points[i + 1], state, plan.coeffs[i])
            value = (x - target[i + 1]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
        opt.step()
        state = _detach_state(state)
        losses.append(float(value.detach()))
    return sum(losses) / len(losses)


def fit_time_table(predictor: AMEDPredictor, tables: Sequence[tuple[Any, Any]], iters: int = 600,
                   log: Callable[[str], None] | None = None) -> float:
    """Make `predictor` reproduce per-step (r, c, a) rows with its feature branch off (no model calls).

    enc1 is zeroed (so any feature gives the same output at first) and the time branch and heads are fitted by Adam.

    Args:
        predictor: The predictor to fit, in place.
        tables: (TimeTable, schedule) pairs; the schedule maps the table's times to EDM sigmas.
        iters: Adam iterations (learning rate 0.01).
        log: Progress printer; None is silent.

    Returns:
        The final mean squared error.
    """
    with torch.no_grad():
        predictor.enc1.weight.zero_()
        predictor.enc1.bias.zero_()
    s0s, s1s, targets = [], [], []
    for table, schedule in tables:
        s = schedule.edm_sigma(torch.tensor(table.grid, dtype=torch.float64))
        for i, row in enumerate(table.rows):
            s0s.append(float(s[i]))
            s1s.append(float(s[i + 1]))
            targets.append(row)
    tgt = torch.tensor(targets, dtype=torch.float32)
    params = [p for n, p in predictor.named_parameters() if not n.startswith(("enc0", "enc1"))]
    opt = torch.optim.Adam(params, lr=1e-2)
    s0 = torch.tensor(s0s)
    s1 = torch.tensor(s1s)
    value = math.inf
    with torch.enable_grad():
        for _ in range(iters):
            r, c, a = predictor(None, s0, s1, batch=len(s0s))
            out = torch.stack([r, c, a], 1)
            loss = (out - tgt).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = float(loss.detach())
    if log:
        log(f"predictor fitted to {len(targets)} table rows: mse {value:.3g}")
    return value
