"""`Sampler(unet, scheduler=...)` for diffusers schedulers: `sampler_parts` (registered with
`diffsolve.sampler.register_scheduler_adapter` when this module is imported) gives the field, the matching solver
and the grid that reproduce a scheduler's run; `sampler_from_diffusers` builds the Sampler directly."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.pretrained_adapters.diffusers.config import config_of, is_flow_config, source_config_of
from diffsolve.pretrained_adapters.diffusers.ddim import DDIMModelNoise, DDIMStepTargets
from diffsolve.pretrained_adapters.diffusers.loops import (
    LOOPS, DropZeroLengthEnd, LCMBoundary, RoundedModelTime, SchedulerSinglestep, TCDSteps, model_time_rounding,
    scheduler_loop)
from diffsolve.pretrained_adapters.diffusers.model import from_diffusers
from diffsolve.pretrained_adapters.diffusers.solver_map import (
    UnmatchedScheduler, UnmatchedSolver, solver_and_options_of)
from diffsolve.pretrained_adapters.diffusers.timesteps import grid_options_of
from diffsolve.sampler import Sampler, SamplerParts, register_scheduler_adapter
from diffsolve.schedules import VPDiscrete
from diffsolve.solvers.base import Solver, get_solver


def sampler_parts(model: Callable[..., Any], scheduler: Any, *, prediction: str | None = None,
                  sample_shape: Sequence[int] | None = None, timestep_scale: float = 1.0,
                  loop: str = "scheduler", solver: Any = None) -> SamplerParts | None:
    """What `Sampler(model, scheduler=...)` needs from a diffusers scheduler (or its config): the field, the
    matching solver and its options, and the grid that reproduces the scheduler's timesteps.

    `loop="scheduler"` (the default) reproduces the scheduler's own loop where it departs from a clean grid:
    DDIM with 'linspace' spacing steps to t - T // steps (not to the next listed timestep), and DPMSolver*,
    UniPC and DEIS feed the network rounded timesteps on karras sigmas. `loop="clean"` steps grid point to grid
    point with the exact model time.

    Args:
        model: the diffusers network.
        scheduler: a diffusers scheduler or its config.
        prediction: the prediction type; None: the config's.
        sample_shape: the shape of one sample; None: from the network's config.
        timestep_scale: multiplies the time the network gets (default 1.0).
        loop: "scheduler" or "clean", as above.
        solver: picks the update (the scheduler's path and timesteps kept); None: the scheduler class's match.

    Returns:
        The SamplerParts, with an UnmatchedSolver (raising when run) for a scheduler no solver matches; None when
            `scheduler` is not a diffusers scheduler or config.

    Raises:
        InvalidArgument: `loop` is not in LOOPS, or the config's settings do not fit.
    """
    try:
        cfg = config_of(scheduler)
    except InvalidArgument:
        return None
    field = from_diffusers(model, scheduler, prediction=prediction, sample_shape=sample_shape,
                           timestep_scale=timestep_scale)
    if str(cfg.get("_class_name", "")) == "LCMScheduler":
        field = LCMBoundary(field, float(cfg.get("timestep_scaling", 10.0)))    # part of the model, in every loop
    source = source_config_of(cfg)        # a DiffsolveScheduler's timesteps are those of its source class
    if is_flow_config(source) and source.get("use_dynamic_shifting", False):
        grid, grid_options = mu_needed, {}       # refused only when used: a grid= given in its place needs no mu
    else:
        grid, grid_options = grid_options_of(source)
    if cfg.get("_class_name") == "DiffsolveScheduler":
        grid_options = {**grid_options, **_diffsolve_grid_options(cfg)}
        if cfg.get("grid") is not None:
            grid, grid_options = cfg["grid"], dict(cfg.get("grid_options") or {})
    options: dict = {}
    if solver is None:
        try:
            solver, options = solver_and_options_of(scheduler)
        except UnmatchedScheduler as e:
            return SamplerParts(field, UnmatchedSolver(e), {}, grid, grid_options)
        if loop == "scheduler" and cfg.get("_class_name") == "TCDScheduler":
            solver, options = TCDSteps(), {}
        if loop == "scheduler" and cfg.get("_class_name") == "DPMSolverSinglestepScheduler":
            solver, options = SchedulerSinglestep(int(cfg.get("solver_order", 2)),
                                                  cfg.get("algorithm_type", "dpmsolver++"),
                                                  cfg.get("solver_type", "midpoint"),
                                                  bool(cfg.get("lower_order_final", False))), {}
    check_choice("loop", loop, LOOPS)
    if cfg.get("_class_name") == "DiffsolveScheduler":
        # the scheduler's own loop: its solver steps grid point to grid point; only the timesteps it feeds the
        # network are its source class's
        rounding = model_time_rounding(source, spaced_like_dpmsolver=True) if loop == "scheduler" else None
        if rounding is not None and isinstance(field.schedule, VPDiscrete):
            field = RoundedModelTime(field, rounding)
    else:
        field, solver = scheduler_loop(cfg, field, solver, options, loop)
    if isinstance(solver, (DDIMModelNoise, DDIMStepTargets, DropZeroLengthEnd)):
        options = {}       # built into the wrapped solver
    return SamplerParts(field, solver, options, grid, grid_options)


def mu_needed(steps: Any, schedule: Any, **options: Any) -> Any:
    """The default grid of a flow-matching config with use_dynamic_shifting=True: its shift depends on mu, which
    the pipeline computes per resolution, so it is refused; an explicit grid (the scheduler's sigmas after the
    pipeline's set_timesteps) or flow_grid with shift=exp(mu) replaces it."""
    raise InvalidArgument("use_dynamic_shifting=True needs mu per resolution; pass grid=flow_grid with "
                          "grid_options={'shift': exp(mu)}, or grid=<the scheduler's sigmas after set_timesteps>")


def _diffsolve_grid_options(cfg: Mapping) -> dict:
    """A DiffsolveScheduler config's own changes to its source class's grid: its final_sigmas_type, when set, and
    its grid_options."""
    out = {} if cfg.get("final_sigmas_type") is None else {"final": cfg["final_sigmas_type"]}
    return {**out, **dict(cfg.get("grid_options") or {})}


def sampler_from_diffusers(model: Callable[..., Any], scheduler: Any, solver: Any = None, *, grid: Any = None,
                           grid_options: Mapping[str, Any] | None = None, prediction: str | None = None,
                           sample_shape: Sequence[int] | None = None, timestep_scale: float = 1.0,
                           loop: str = "scheduler", **sampler_kwargs: Any) -> Sampler:
    """`Sampler` for a diffusers network + scheduler: same path, prediction and (by default) the same timesteps.

    Args:
        model: the diffusers network.
        scheduler: a diffusers scheduler or its config.
        solver: a registry name or a Solver; None: the diffsolve solver matching the scheduler class (`solver_of`).
        grid: the grid; None: the scheduler's timesteps (`grid_options` then update the scheduler's options).
        grid_options: keywords of the grid.
        prediction: the prediction type; None: the config's.
        sample_shape: the shape of one sample; None: from the network's config.
        timestep_scale: multiplies the time the network gets (default 1.0).
        loop: "scheduler" (the scheduler's own loop) or "clean" (see `sampler_parts`).
        **sampler_kwargs: `check_finite`, `progress`, `time_convention` go to the Sampler; the others are the
            solver's options.

    Returns:
        The Sampler.

    Raises:
        InvalidArgument: `scheduler` is not a diffusers scheduler or config, or an option is refused.
        UnmatchedScheduler: no diffsolve solver matches the scheduler class and `solver` is None.
    """
    solver_options = {k: sampler_kwargs.pop(k) for k in list(sampler_kwargs)
                      if k not in ("check_finite", "progress", "time_convention")}
    chosen = solver if solver is None or isinstance(solver, Solver) or not solver_options else \
        get_solver(solver, **solver_options)
    parts = sampler_parts(model, scheduler, prediction=prediction, sample_shape=sample_shape,
                          timestep_scale=timestep_scale, loop=loop, solver=chosen)
    if parts is None:
        raise InvalidArgument(f"scheduler={type(scheduler).__name__} is not a diffusers scheduler or config")
    if grid is None:
        grid, opts = parts.grid, {**parts.grid_options, **(grid_options or {})}
    else:
        opts = dict(grid_options or {})
    if isinstance(parts.solver, UnmatchedSolver):
        raise parts.solver.error
    solver = parts.solver
    if not isinstance(solver, Solver):
        sampler_kwargs = {**parts.solver_options, **solver_options, **sampler_kwargs}
    return Sampler(parts.field, solver, grid, grid_options=opts, **sampler_kwargs)


register_scheduler_adapter(sampler_parts)

__all__ = ["sampler_parts", "sampler_from_diffusers"]
