"""diffusers models and scheduler configs as diffsolve fields, grids and samplers (diffusers stays optional).

A diffusers scheduler config fixes three things diffsolve keeps apart: the Gaussian path (betas or
alphas_cumprod -> `VPDiscrete`; flow matching -> `RectifiedFlow` with model time 1000 sigma), what the network
predicts (`prediction_type`), and the inference timesteps (`timestep_spacing`, `steps_offset`, karras sigmas,
flow `shift`). `from_diffusers(unet, scheduler)` gives the field; `diffusers_grid` / `grid_from_scheduler` give
the diffusers timesteps as diffsolve times, so a diffsolve solver and a diffusers scheduler run on the same
points. diffusers itself is imported only where a scheduler object is built or stepped.

The modules, inbound (diffusers -> diffsolve) first: `config` (configs, class, prediction, path), `timesteps`
(grids), `model` (networks as fields), `folder` (a local pipeline or UNet folder as a field), `solver_map`
(scheduler class -> solver), `loops` (each scheduler's own loop), `sampling` (`Sampler(unet, scheduler=...)`,
registered on import); outbound: `scheduler` (`DiffsolveScheduler`, a diffsolve solver as a diffusers scheduler;
needs the diffusers library).
"""
from __future__ import annotations

from typing import Any

from diffsolve.pretrained_adapters.diffusers.config import (
    PREDICTION_TYPES, STYLES, alphas_cumprod_of, betas_of, config_of, infer_class_name, is_flow_config, prediction_of,
    schedule_from_diffusers, style_of)
from diffsolve.pretrained_adapters.diffusers.ddim import DDIMStepTargets
from diffsolve.pretrained_adapters.diffusers.loops import (
    LOOPS, LCMBoundary, RoundedModelTime, SchedulerSinglestep, TCDSteps, singlestep_orders)
from diffsolve.pretrained_adapters.diffusers.model import DiffusersModel, from_diffusers, sample_shape_of
from diffsolve.pretrained_adapters.diffusers.folder import folder_parts, is_diffusers_folder, load_diffusers_folder
from diffsolve.pretrained_adapters.diffusers.sampling import sampler_from_diffusers, sampler_parts
from diffsolve.pretrained_adapters.diffusers.solver_map import (
    SCHEDULER_SOLVERS, UNMATCHED_SCHEDULERS, UnmatchedScheduler, solver_and_options_of, solver_of, solver_options_of)
from diffsolve.pretrained_adapters.diffusers.timesteps import (
    SPACINGS, diffusers_grid, discrete_timesteps, flow_grid, grid_from_scheduler, grid_options_of, lcm_grid,
    lcm_timesteps, noise_scale_of, shift_sigmas, times_from_timesteps)

# The outbound scheduler subclasses diffusers' SchedulerMixin, so its module imports the diffusers library.
_NEED_DIFFUSERS = ("DiffsolveScheduler", "SchedulerRun", "supported_solvers")

__all__ = ["DiffusersModel", "from_diffusers", "schedule_from_diffusers", "prediction_of", "alphas_cumprod_of",
           "diffusers_grid", "flow_grid", "shift_sigmas", "grid_from_scheduler", "grid_options_of",
           "times_from_timesteps", "discrete_timesteps", "noise_scale_of", "sampler_from_diffusers", "sampler_parts",
           "solver_of", "solver_options_of", "config_of", "SCHEDULER_SOLVERS", "UNMATCHED_SCHEDULERS",
           "UnmatchedScheduler", "solver_and_options_of", "infer_class_name", "PREDICTION_TYPES", "SPACINGS",
           "STYLES", "LOOPS", "betas_of", "is_flow_config", "style_of", "sample_shape_of", "lcm_grid",
           "lcm_timesteps", "LCMBoundary", "TCDSteps", "RoundedModelTime", "singlestep_orders", "SchedulerSinglestep",
           "DDIMStepTargets", "load_diffusers_folder", "is_diffusers_folder", "folder_parts"]


def __getattr__(name: str) -> Any:
    # Defers the diffusers library (optional) to the first use of the outbound scheduler's names.
    if name in _NEED_DIFFUSERS:
        from diffsolve.pretrained_adapters.diffusers import scheduler
        return getattr(scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
