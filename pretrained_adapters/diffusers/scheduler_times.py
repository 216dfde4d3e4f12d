"""`DiffsolveScheduler`'s timesteps from a pipeline's arguments: `set_timesteps(timesteps=)`, `(sigmas=)` and flow
matching's `(sigmas=, mu=)` as diffsolve grids, each argument checked by name before the grid goes through the
Sampler's own validation (`make_grid`); the timestep a pipeline hands to `step` located in the listing; diffusers'
`sigmas` of a run. No diffusers import."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument, check_choice, check_float, check_int
from diffsolve.grids import from_sigmas, make_grid
from diffsolve.pretrained_adapters.diffusers.timesteps import times_from_timesteps
from diffsolve.schedules import NoiseSchedule, RectifiedFlow, VPDiscrete


def _values(name: str, values: Any) -> np.ndarray:
    """A non-empty 1-D list of finite numbers, each checked by name (`timesteps[2]=nan: ...`)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, np.ndarray):
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidArgument(f"{name}={values!r}: must be a list of numbers")
    if len(values) == 0:
        raise InvalidArgument(f"{name}=[]: must hold at least one value")
    return np.asarray([check_float(f"{name}[{i}]", v) for i, v in enumerate(values)], dtype=np.float64)


def _strictly_decreasing(name: str, v: np.ndarray) -> None:
    bad = np.nonzero(v[1:] >= v[:-1])[0]
    if bad.size:
        i = int(bad[0])
        what = "repeats" if v[i + 1] == v[i] else "is followed by the larger"
        raise InvalidArgument(f"{name}: {name}[{i}]={v[i]:g} {what} {name}[{i + 1}]={v[i + 1]:g}; the values must be "
                              "strictly decreasing (from noise to data), each listed once")


def custom_timesteps(schedule: VPDiscrete, timesteps: Any, num_train_timesteps: int, final: str,
                     repeated_end: str = "auto") -> torch.Tensor:
    """set_timesteps(timesteps=[...]): integer timesteps, largest first, inside [0, num_train_timesteps), then the
    config's final noise level (final_sigmas_type), as DPMSolverMultistepScheduler ends them.

    Args:
        schedule: the discrete VP schedule.
        timesteps: the pipeline's timesteps (a list, array or tensor).
        num_train_timesteps: the config's training timesteps.
        final: "zero" or "sigma_min", the end point.
        repeated_end: "step", "drop" or "auto" (default): a last timestep already at the end point
            (see `times_from_timesteps`).

    Returns:
        The validated float64 grid.

    Raises:
        InvalidArgument: an empty list, a non-finite or non-integer value, values not strictly decreasing, or
            out of [0, num_train_timesteps - 1].
    """
    ts = _values("timesteps", timesteps)
    if np.any(ts != np.round(ts)):
        raise InvalidArgument(f"timesteps={ts.tolist()}: must be integers (diffusers casts them to int64)")
    _strictly_decreasing("timesteps", ts)
    if ts[0] > num_train_timesteps - 1 or ts[-1] < 0:
        raise InvalidArgument(f"timesteps={ts.tolist()}: must lie in [0, {num_train_timesteps - 1}] "
                              f"(num_train_timesteps={num_train_timesteps})")
    return make_grid(times_from_timesteps(schedule, ts, None, final=final, repeated_end=repeated_end), None, schedule)


def custom_sigmas(schedule: VPDiscrete, sigmas: Any) -> torch.Tensor:
    """set_timesteps(sigmas=[...]): EDM noise levels, largest first, within the schedule (a final 0 optional).

    Args:
        schedule: the discrete VP schedule.
        sigmas: the pipeline's sigmas (a list, array or tensor).

    Returns:
        The validated float64 grid, ending at 0.

    Raises:
        InvalidArgument: an empty list, a non-finite value, values not strictly decreasing, the first above the
            schedule's sigma_max or the last below 0.
    """
    s = _values("sigmas", sigmas)
    _strictly_decreasing("sigmas", s)
    slack = 4 * 2.0 ** -23       # float32 sigmas computed from the same schedule
    if s[0] > schedule.sigma_max * (1 + slack):
        raise InvalidArgument(f"sigmas[0]={s[0]:g}: above the schedule's largest noise level {schedule.sigma_max:g}")
    if s[-1] < 0:
        raise InvalidArgument(f"sigmas[{s.size - 1}]={s[-1]:g}: noise levels are >= 0")
    grid = s.tolist() if s[-1] == 0 else s.tolist() + [0.0]
    return make_grid(from_sigmas(grid, schedule), None, schedule)


def flow_times(cfg: Mapping, schedule: RectifiedFlow, steps: int | None, sigmas: Any, mu: float | None) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler.set_timesteps with `sigmas=` and/or `mu=` (resolution-dependent shift).

    Args:
        cfg: the config (`num_train_timesteps`, `use_dynamic_shifting`, `shift`, `time_shift_type`).
        schedule: the RectifiedFlow schedule.
        steps: the number of steps (None with `sigmas=`; else it must match their count).
        sigmas: flow sigmas in (0, 1], from noise towards data; None: the training sigmas spaced over `steps`.
        mu: the dynamic shift; needed exactly when use_dynamic_shifting=True.

    Returns:
        The validated float64 grid (float32 sigmas as diffusers keeps them), ending at 0.

    Raises:
        InvalidArgument: `mu` missing or not wanted, no steps and no sigmas, sigmas of the wrong count or out of
            (0, 1], or an unknown time_shift_type.
    """
    n = int(cfg["num_train_timesteps"])
    dynamic = bool(cfg["use_dynamic_shifting"])
    if dynamic and mu is None:
        raise InvalidArgument("mu= is missing: this config shifts its timesteps by resolution "
                              "(use_dynamic_shifting=True); pass set_timesteps(..., mu=) as the pipeline does")
    if not dynamic and mu is not None:
        raise InvalidArgument("mu= applies only to configs with use_dynamic_shifting=True; this one shifts by "
                              f"shift={cfg['shift']}")
    if sigmas is None:
        if steps is None:
            raise InvalidArgument("set_timesteps needs num_inference_steps or sigmas=")
        # the training sigmas run from 1 to 1/n, shifted in advance only without dynamic shifting
        shift = 1.0 if dynamic else float(cfg["shift"])
        lo = shift * (1.0 / n) / (1.0 + (shift - 1.0) * (1.0 / n))
        s = np.linspace(n * 1.0, n * lo, steps) / n
    else:
        s = _values("sigmas", sigmas).astype(np.float32)
        if steps is not None and len(s) != steps:
            raise InvalidArgument(f"sigmas= holds {len(s)} values but num_inference_steps={steps}")
        if not np.all((s > 0) & (s <= 1)):
            raise InvalidArgument("sigmas= must be flow sigmas in (0, 1], from noise towards data")
    if dynamic:
        check_choice("time_shift_type", cfg["time_shift_type"], ("exponential", "linear"))
        mu = check_float("mu", mu)
        scale = np.exp(mu) if cfg["time_shift_type"] == "exponential" else mu
        s = scale / (scale + (1.0 / s - 1.0))
    else:
        s = cfg["shift"] * s / (1.0 + (cfg["shift"] - 1.0) * s)
    s = np.asarray(s, dtype=np.float32).astype(np.float64)         # diffusers keeps float32 sigmas
    return make_grid(torch.cat([torch.from_numpy(s), torch.zeros(1, dtype=torch.float64)]), None, schedule)


def check_steps(steps: Any) -> int | None:
    """num_inference_steps: None, or an integer >= 1 (Python or numpy).

    Args:
        steps: the value to check.

    Returns:
        None, or the step count as an int.

    Raises:
        InvalidArgument: not an integer >= 1.
    """
    return None if steps is None else check_int("num_inference_steps", steps, 1)


def timestep_value(timestep: Any) -> float | None:
    """The one timestep a pipeline hands to `step` (a number, or a tensor of equal values); None when None.

    Args:
        timestep: the timestep.

    Returns:
        Its value as a float, or None.

    Raises:
        InvalidArgument: an empty tensor, unequal values, or not a finite number.
    """
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        flat = timestep.detach().reshape(-1).cpu().to(torch.float64)
        if flat.numel() == 0 or not torch.all(flat == flat[0]):
            raise InvalidArgument(f"timestep={timestep!r}: must be one timestep (a number or equal values)")
        return float(flat[0])
    return check_float("timestep", timestep)


def same_timestep(a: float, b: float) -> bool:
    """Whether timesteps `a` and `b` are equal to 1e-6 relative to `b` (absolute below 1)."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def locate(listed: Sequence[float], first_calls: Sequence[bool], timestep: float) -> int:
    """Where a run starts when a pipeline's first timestep is `timestep` (diffusers' index_for_timestep): the
    listed timestep equal to it that starts a step (a timestep listed twice, Heun's, is the start of the later
    step); refused when it is not in the schedule or only inside a step.

    Args:
        listed: the listed timesteps.
        first_calls: per listed timestep: is it a step's first call?
        timestep: the pipeline's first timestep.

    Returns:
        The index into `listed`.

    Raises:
        InvalidArgument: the timestep is not listed, or listed only inside a step.
    """
    hits = [j for j, v in enumerate(listed) if same_timestep(v, timestep)]
    starts = [j for j in hits if first_calls[j]]
    if not hits:
        shown = ", ".join(f"{v:g}" for v in listed[:8]) + (", ..." if len(listed) > 8 else "")
        raise InvalidArgument(f"timestep={timestep:g} is not in the schedule set by set_timesteps ({shown})")
    if not starts:
        raise InvalidArgument(f"timestep={timestep:g} is listed only inside a step of this solver; a run must start at "
                              "the first timestep of a step")
    return starts[0]


def check_model_times(name: str, values: Any, schedule: NoiseSchedule, num_train_timesteps: int) -> torch.Tensor:
    """Model times for add_noise: finite, within [0, num_train_timesteps] (flow) or [0, num_train_timesteps - 1].

    Args:
        name: the argument's name, for the message.
        values: the model times.
        schedule: the schedule (a RectifiedFlow allows num_train_timesteps itself).
        num_train_timesteps: the config's training timesteps.

    Returns:
        The model times, a flat float64 CPU tensor.

    Raises:
        InvalidArgument: a value not finite or out of the range.
    """
    tm = torch.as_tensor(values, dtype=torch.float64).reshape(-1).cpu()
    hi = num_train_timesteps if isinstance(schedule, RectifiedFlow) else num_train_timesteps - 1
    bad = ~torch.isfinite(tm) | (tm < 0) | (tm > hi)
    if bool(bad.any()):
        v = float(tm[bad][0])
        raise InvalidArgument(f"{name} holds {v:g}: timesteps must lie in [0, {hi}] (num_train_timesteps="
                              f"{num_train_timesteps})")
    return tm


def diffusers_sigmas(schedule: NoiseSchedule, points: Sequence[Any], end: Any) -> torch.Tensor:
    """diffusers' `sigmas` of a run: the noise level of each listed timestep, then the final one (float32); EDM
    sigma = sigma / alpha on a VP path, the flow sigma on a flow-matching path.

    Args:
        schedule: the run's schedule.
        points: the evaluation point of each listed timestep.
        end: the run's final point.

    Returns:
        A float32 tensor of len(points) + 1 values.
    """
    def level(p: Any) -> float:
        if isinstance(schedule, RectifiedFlow):
            return float(p.sigma)
        return 0.0 if float(p.sigma) == 0.0 else float(p.sigma) / float(p.alpha)
    return torch.tensor([level(p) for p in points] + [level(end)], dtype=torch.float32)


__all__ = ["custom_timesteps", "custom_sigmas", "flow_times", "check_steps", "timestep_value", "same_timestep",
           "locate", "check_model_times", "diffusers_sigmas"]
