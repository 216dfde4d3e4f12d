"""Step grids: plain functions that return float64 times t (decreasing noise) in the schedule's own time.

Sampling grids decrease in noise. An inversion (data to noise, `Sampler.invert`) runs a grid reversed:
`validate_grid(t, schedule, direction="increasing")` accepts it; only deterministic fixed-step solvers take one.

For the EDM schedule t is the EDM sigma, so `karras(...)` returns k-diffusion's `get_sigmas_karras` values.
`final="zero"` appends the exact noise-free end t = 0; `final="min"` ends at the schedule's smallest noise.
Every grid function returns steps + 1 float64 times, decreasing, and raises InvalidArgument for a bad option or
a schedule that does not fit (none, or no finite range).
"""
from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice, check_float, check_int, unknown_name
from diffsolve.schedules import NoiseSchedule, VPDiscrete, as_f64, interp

FINALS = ("zero", "min")

# Align Your Steps, Stable Diffusion 1.5 (Sabour et al. 2024; the 10-step list as diffusers ships it).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.0)


def _count(steps: int, final: str) -> int:
    """How many points precede the appended t = 0 (or end the grid, for final='min')."""
    steps = check_int("steps", steps, 1)          # numpy integers are integers
    check_choice("final", final, FINALS)
    return steps if final == "zero" else steps + 1


def _finish(t: torch.Tensor, final: str) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(1)]) if final == "zero" else t


def _need(schedule: NoiseSchedule | None, grid: str) -> NoiseSchedule:
    if schedule is None:
        raise InvalidArgument(f"grid={grid!r} needs a noise schedule; a plain velocity field takes 'time_uniform' "
                              "or an explicit list of times")
    return schedule


def _levels(lo_name: str, lo: Any, hi_name: str, hi: Any, lo_default: float, hi_default: float, *,
            positive: bool = True, within: tuple[float, float] | None = None) -> tuple[float, float]:
    """A grid's range options: numbers (not strings), positive (times: >= 0 and `within` the schedule's
    [t_min, t_max]), the low one below the high one."""
    lo = lo_default if lo is None else check_float(lo_name, lo, positive=positive, nonnegative=not positive)
    hi = hi_default if hi is None else check_float(hi_name, hi, positive=True)
    if within is not None:
        tol = 1e-9 * max(1.0, abs(within[1]))
        for name, v in ((lo_name, lo), (hi_name, hi)):
            if not within[0] - tol <= v <= within[1] + tol:
                raise InvalidArgument(f"{name}={v!r} lies outside the schedule's times [{within[0]:g}, "
                                      f"{within[1]:g}]")
    if not lo < hi:
        raise InvalidArgument(f"{lo_name}={lo!r} must be below {hi_name}={hi!r}")
    return lo, hi


def _rho(rho: Any) -> float:
    return check_float("rho", rho, positive=True)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0, *,
                  ramp: torch.Tensor | None = None) -> torch.Tensor:
    """n EDM noise levels from sigma_max down to sigma_min, uniform in s^(1/rho) (Karras et al. 2022, eq. 5);
    `ramp` (positions in [0, 1], 0 at sigma_max) places them elsewhere on the same curve.

    Args:
        sigma_min: the smallest level.
        sigma_max: the largest level.
        n: how many.
        rho: the curve's exponent.
        ramp: positions in [0, 1] instead of n uniform ones.

    Returns:
        The float64 levels, decreasing.

    Raises:
        InvalidArgument: rho so small that sigma_max ** (1 / rho) overflows.
    """
    if ramp is None:
        ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    try:
        hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    except OverflowError:
        raise InvalidArgument(f"rho={rho!r} is too small for noise levels up to {sigma_max:g}: "
                              f"sigma_max ** (1 / rho) overflows") from None
    return (hi + ramp * (lo - hi)) ** rho


def karras(steps: int, schedule: NoiseSchedule, *, sigma_min: float | None = None, sigma_max: float | None = None,
           rho: float = 7.0, final: str = "zero") -> torch.Tensor:
    """EDM polynomial noise levels, uniform in s^(1/rho) (Karras et al. 2022, eq. 5).

    Args:
        steps: the number of steps.
        schedule: the noise schedule (required).
        sigma_min: the smallest EDM noise level; None: the schedule's.
        sigma_max: the largest EDM noise level; None: the schedule's.
        rho: the exponent (default 7).

        final: "zero" (append the exact t = 0) or "min" (end at the smallest level).
    """
    sch = _need(schedule, "karras")
    n = _count(steps, final)
    rho = _rho(rho)
    smin, smax = _levels("sigma_min", sigma_min, "sigma_max", sigma_max, sch.sigma_min, sch.sigma_max)
    if not math.isfinite(smax):
        raise InvalidArgument("grid='karras' needs a finite sigma_max; this schedule reaches pure noise, "
                              "pass sigma_max= or use grid='time_uniform'")
    return _finish(sch.t_from_edm_sigma(karras_sigmas(smin, smax, n, rho)), final)


def karras_index(steps: int, schedule: NoiseSchedule, *, indices: Sequence[int] | None = None, points: int = 40,
                 sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
                 final: str = "min") -> torch.Tensor:
    """Levels picked by index from a `points`-level karras grid ending at sigma_min, as consistency models'
    multistep samplers choose them (Song et al. 2023; e.g. indices (0, 22, 39) of 40); by default spread evenly.

    Args:
        steps: the number of steps.
        schedule: the noise schedule (required).
        indices: strictly increasing indices into the `points` levels; None: spread evenly.
        points: the levels of the underlying karras grid (default 40).
        sigma_min: as in `karras`.
        sigma_max: as in `karras`.
        rho: as in `karras`.
        final: "zero" (append the exact t = 0) or "min" (end at the smallest level). Default "min".
    """
    sch = _need(schedule, "karras_index")
    n = _count(steps, final)
    points = check_int("points", points, 2)
    if indices is None:
        if n > points:
            raise InvalidArgument(f"steps={steps} needs {n} levels, more than points={points}")
        idx = torch.linspace(0, points - 1, n, dtype=torch.float64).round().long()
    else:
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise InvalidArgument(f"indices={indices!r}: must be a sequence of integers")
        idx = torch.tensor([check_int(f"indices[{i}]", v, 0, points - 1) for i, v in enumerate(indices)])
        if idx.numel() != n:
            raise InvalidArgument(f"indices={list(indices)} hold {idx.numel()} levels; steps={steps} needs {n}")
        if not torch.all(idx[1:] > idx[:-1]):
            raise InvalidArgument(f"indices={list(indices)}: must be strictly increasing (from high to low noise)")
    rho = _rho(rho)
    smin, smax = _levels("sigma_min", sigma_min, "sigma_max", sigma_max, sch.sigma_min, sch.sigma_max)
    if not math.isfinite(smax):
        raise InvalidArgument("grid='karras_index' needs a finite sigma_max; pass sigma_max=")
    return _finish(sch.t_from_edm_sigma(karras_sigmas(smin, smax, points, rho)[idx]), final)


def logsnr_uniform(steps: int, schedule: NoiseSchedule, *, t_min: float | None = None, t_max: float | None = None,
                   final: str = "zero") -> torch.Tensor:
    """Uniform in lambda = log(alpha/sigma) (DPM-Solver skip_type='logSNR').

    Args:
        steps: the number of steps.
        schedule: the noise schedule (required).
        t_min: the earliest time, within the schedule's range; None: the schedule's t_min.
        t_max: the latest time, within the schedule's range; None: the schedule's t_max.
        final: "zero" (append the exact t = 0) or "min" (end at the smallest level).
    """
    sch = _need(schedule, "logsnr_uniform")
    n = _count(steps, final)
    lo, hi = _levels("t_min", t_min, "t_max", t_max, sch.t_min, sch.t_max, positive=False,
                     within=(sch.t_min, sch.t_max))
    lam = torch.linspace(float(sch.lambda_(hi)), float(sch.lambda_(lo)), n, dtype=torch.float64)
    if not torch.isfinite(lam).all():
        raise InvalidArgument("grid='logsnr_uniform' needs finite log-SNR at both ends; pass t_max= below pure noise")
    t = sch.t_from_lambda(lam)
    t[0], t[-1] = hi, lo   # exact ends, free of inverse round-off
    return _finish(t, final)


def time_uniform(steps: int, schedule: NoiseSchedule | None, *, t_min: float | None = None,
                 t_max: float | None = None, final: str = "zero") -> torch.Tensor:
    """Uniform in the schedule's time (DPM-Solver 'time_uniform'; flow matching's default).

    Args:
        steps: the number of steps.
        schedule: the noise schedule; None for a plain velocity field (range [0, 1]).
        t_min: the earliest time; None: the schedule's t_min (0 without a schedule).
        t_max: the latest time; None: the schedule's t_max (1 without a schedule).
        final: "zero" (append the exact t = 0) or "min" (end at the smallest level).
    """
    _count(steps, final)
    lo, hi = _levels("t_min", t_min, "t_max", t_max, schedule.t_min if schedule is not None else 0.0,
                     schedule.t_max if schedule is not None else 1.0, positive=False)
    lo = 0.0 if final == "zero" else lo
    return torch.linspace(hi, lo, steps + 1, dtype=torch.float64)


def time_quadratic(steps: int, schedule: NoiseSchedule, *, t_min: float | None = None, t_max: float | None = None,
                   final: str = "zero") -> torch.Tensor:
    """Uniform in sqrt(t) (DDIM's quadratic spacing; DPM-Solver 'time_quadratic').

    Args:
        steps: the number of steps.
        schedule: the noise schedule (required).
        t_min: the earliest time, within the schedule's range; None: the schedule's t_min.
        t_max: the latest time, within the schedule's range; None: the schedule's t_max.
        final: "zero" (append the exact t = 0) or "min" (end at the smallest level).
    """
    sch = _need(schedule, "time_quadratic")
    n = _count(steps, final)
    lo, hi = _levels("t_min", t_min, "t_max", t_max, sch.t_min, sch.t_max, positive=False,
                     within=(sch.t_min, sch.t_max))
    return _finish(torch.linspace(hi ** 0.5, lo ** 0.5, n, dtype=torch.float64) ** 2, final)


def discrete(steps: int, schedule: NoiseSchedule, *, spacing: str = "trailing", steps_offset: int = 0,
             final: str = "zero") -> torch.Tensor:
    """diffusers' integer timestep spacings ('linspace', 'leading', 'trailing') on a discrete VP schedule.

    Args:
        steps: the number of steps, at most the schedule's N.
        schedule: a VPDiscrete schedule.
        spacing: "linspace", "leading" or "trailing" (default).
        steps_offset: diffusers' offset ("leading").
        final: "zero" or "min" (diffusers' final_sigmas_type="sigma_min": one more step to the first timestep).
    """
    sch = _need(schedule, "discrete")
    if not isinstance(sch, VPDiscrete):
        raise InvalidArgument("grid='discrete' needs a VPDiscrete schedule (integer timesteps)")
    check_choice("spacing", spacing, ("linspace", "leading", "trailing"))
    steps_offset = check_int("steps_offset", steps_offset, 0)
    _count(steps, "zero")
    N = sch.N
    if steps > N:
        raise InvalidArgument(f"steps={steps} exceeds the {N} discrete timesteps of the schedule")
    if spacing == "linspace":
        idx = torch.linspace(0, N - 1, steps, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        ratio = N // steps
        idx = (torch.arange(0, steps, dtype=torch.float64) * ratio).round().flip(0) + steps_offset
    else:
        ratio = N / steps
        idx = torch.round(torch.arange(N, 0, -ratio, dtype=torch.float64)) - 1
    t = sch.t_from_index(idx)
    if final == "min":
        # diffusers' final_sigmas_type='sigma_min': one more step, to the first training timestep
        if float(t[-1]) <= sch.t_min:
            raise InvalidArgument(f"spacing={spacing!r} already ends at the first training timestep; "
                                  "use final='zero' or another spacing")
        return torch.cat([t, t.new_full((1,), sch.t_min)])
    return _finish(t, final)


def align_your_steps(steps: int, schedule: NoiseSchedule, *, sigmas: Sequence[float] = AYS_SD15,
                     final: str = "zero") -> torch.Tensor:
    """Align Your Steps noise levels, log-linearly interpolated to any count (Sabour et al. 2024).

    Args:
        steps: the number of steps.
        schedule: the noise schedule (required).
        sigmas: the published EDM noise levels to interpolate (default: Stable Diffusion 1.5's).
        final: "zero" (append the exact t = 0) or "min" (end at the smallest level).
    """
    sch = _need(schedule, "ays")
    n = _count(steps, final)
    if isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, (Sequence, torch.Tensor)):
        raise InvalidArgument(f"sigmas={sigmas!r}: must be a sequence of noise levels")
    levels = [check_float(f"sigmas[{i}]", v, nonnegative=True) for i, v in enumerate(sigmas)]
    if sum(v > 0 for v in levels) < 2:
        raise InvalidArgument(f"sigmas={list(sigmas)!r}: needs at least 2 positive noise levels")
    base = as_f64([s for s in levels if s > 0])
    xs = torch.linspace(0, 1, base.numel(), dtype=torch.float64)
    new = torch.linspace(0, 1, n, dtype=torch.float64)
    # The published values are rounded (SD's sigma_max is 14.6146): keep them inside the schedule's range.
    s = torch.exp(interp(new, xs, torch.log(base))).clamp(max=sch.sigma_max)
    return _finish(sch.t_from_edm_sigma(s), final)


def from_sigmas(sigmas: Sequence[float], schedule: NoiseSchedule) -> torch.Tensor:
    """A user list of EDM noise levels s = sigma/alpha (k-diffusion `sigmas`) as schedule times.

    Levels within a few float32 ulps outside the schedule's [sigma_min, sigma_max] (k-diffusion computes its
    karras sigmas in float32) are taken as the range's ends; a final 0 stays 0.

    Args:
        sigmas: the EDM noise levels.
        schedule: the noise schedule (required).

    Returns:
        The float64 schedule times.
    """
    sch = _need(schedule, "sigmas")
    s = as_f64(torch.as_tensor(sigmas).detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas).clone()
    lo, hi, slack = sch.sigma_min, sch.sigma_max, 4 * 2.0 ** -23
    s = torch.where((s > hi) & (s <= hi * (1 + slack)), torch.full_like(s, hi), s)
    s = torch.where((s > 0) & (s < lo) & (s >= lo * (1 - slack)), torch.full_like(s, lo), s)
    return sch.t_from_edm_sigma(s)


# Grids optimized for one network (GITS, learned): name -> resolver that takes (field, solver) and returns a grid
# function for that field's model. The corrections package registers its resolvers when it is imported.
FIELD_GRIDS: dict[str, Callable[[Any, Any], Any]] = {}


def register_field_grid(name: str, resolve: Callable[[Any, Any], Any]) -> None:
    """Make `grid=name` mean a grid tuned for the model: `resolve(field, solver)` returns it (or raises).

    Args:
        name: the grid name (not a built-in one).
        resolve: `resolve(field, solver) -> grid function`.

    Raises:
        InvalidArgument: an empty or taken name.
    """
    if not isinstance(name, str) or not name or name in GRIDS or name in FIELD_GRIDS:
        raise InvalidArgument(f"register_field_grid: name {name!r} is empty or taken")
    FIELD_GRIDS[name] = resolve


def resolve_field_grid(grid, field, solver):
    """A model-specific grid name (FIELD_GRIDS) as the grid function for this field; other grids as given.

    Args:
        grid: what `Sampler(grid=)` was given.
        field: the field sampled.
        solver: the solver used.

    Returns:
        The grid to use.
    """
    if isinstance(grid, str) and grid in FIELD_GRIDS and grid not in GRIDS:
        return FIELD_GRIDS[grid](field, solver)
    return grid


GRIDS: dict[str, Callable[..., torch.Tensor]] = {
    "karras": karras,
    "karras_index": karras_index,
    "logsnr_uniform": logsnr_uniform,
    "time_uniform": time_uniform,
    "time_quadratic": time_quadratic,
    "discrete": discrete,
    "ays": align_your_steps,
}


def make_grid(grid: str | Callable[..., torch.Tensor] | Sequence[float] | torch.Tensor, steps: int | None,
              schedule: NoiseSchedule | None, **options) -> torch.Tensor:
    """Times for `steps` steps from a grid name, a grid function, or an explicit list of times; validated
    (strictly decreasing: a sampling grid).

    Args:
        grid: a name in GRIDS, a function `(steps, schedule, **options) -> times`, or a list of times.
        steps: the number of steps; None for an explicit list (its own count).
        schedule: the noise schedule, or None for a plain velocity field.
        **options: the grid's keyword options (refused for an explicit list).

    Returns:
        The float64 times, strictly decreasing.

    Raises:
        InvalidArgument: an unknown name (with the nearest ones), options the grid does not take, a count that
            does not match, or times that fail `validate_grid`.
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise unknown_name("grid", grid, [*GRIDS, *FIELD_GRIDS])
        t = _call_grid(grid, GRIDS[grid], steps, schedule, options)
    elif callable(grid):
        name = getattr(grid, "__name__", "custom")
        t = as_times(_call_grid(name, grid, steps, schedule, options), f"grid function {name!r} returned")
        if steps is not None and t.ndim == 1 and t.numel() != steps + 1:
            raise InvalidArgument(f"grid function {getattr(grid, '__name__', grid)!r} returned {t.numel()} times for "
                                  f"steps={steps}; a grid for n steps holds n + 1 times")
    else:
        if options:
            raise InvalidArgument(f"grid options {sorted(options)} do not apply to an explicit list of times")
        t = as_times(grid, "grid=")
        if steps is not None and t.numel() - 1 != steps:
            raise InvalidArgument(f"steps={steps} does not match the explicit grid of {t.numel() - 1} steps")
    validate_grid(t, schedule)
    return t


def takes_option(grid: Any, option: str) -> bool:
    """Whether a grid name or grid function names `option` among its keyword-only parameters (a built-in grid's
    `final`); a function that only takes **options is not assumed to understand it (optimized grids refuse all)."""
    fn = GRIDS.get(grid) if isinstance(grid, str) else grid
    if not callable(fn):
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return option in params and params[option].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                         inspect.Parameter.POSITIONAL_OR_KEYWORD)


def as_times(value: Any, what: str) -> torch.Tensor:
    """A float64 tensor of times from a tensor, array or sequence of real numbers; InvalidArgument for anything
    else (None, strings: "80" is not a time).

    Args:
        value: the times.
        what: how the message names the value's source.

    Returns:
        The float64 tensor, on the CPU.

    Raises:
        InvalidArgument: not real numbers.
    """
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        t = torch.as_tensor(value)
        if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype.is_signed or
                                                             t.dtype == torch.uint8):
            raise InvalidArgument(f"{what} a tensor of dtype {t.dtype}; times must be real numbers")
        return t.detach().cpu().to(torch.float64)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgument(f"{what} {value!r}; times must be a 1-D sequence or tensor of real numbers")
    items = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in value]
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Real)]
    if bad:
        raise InvalidArgument(f"{what} {list(value)!r}; times must be real numbers, not {bad[0]!r}")
    return torch.tensor([float(v) for v in items], dtype=torch.float64)


def _call_grid(name: str, fn: Callable[..., torch.Tensor], steps, schedule, options: dict) -> torch.Tensor:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    known = [k for k, v in params.items() if v.kind == v.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if known and unknown and not any(v.kind == v.VAR_KEYWORD for v in params.values()):
        raise InvalidArgument(f"grid {name!r} does not take option(s) {unknown}; its options are {known}")
    return fn(steps, schedule, **options)


DIRECTIONS = ("decreasing", "increasing")

# Why a sampler may refuse to run from data to noise (solvers set `Solver.invertible` and this reason).
NOT_INVERTIBLE = ("it is stochastic: each step draws fresh noise (a reverse-time SDE), so running its steps from "
                  "data to noise is not the inverse of sampling; only the probability-flow ODE is a deterministic "
                  "bijection between data and noise. Invert with a deterministic solver (euler/ddim, heun, rk4, "
                  "dpmpp_2m, unipc_bh2, deis, ...)")


def is_increasing(t: torch.Tensor) -> bool:
    """True for a grid that runs from low to high noise (an inversion grid)."""
    return t.numel() >= 2 and float(t[-1]) > float(t[0])


def refuse_increasing(who: str, why: str) -> InvalidArgument:
    """The error for an increasing grid handed to a solver that cannot run backwards."""
    return InvalidArgument(f"grid must be strictly decreasing in noise for solver {who!r}: {why}")


def validate_grid(t: torch.Tensor, schedule: NoiseSchedule | None, direction: str = "decreasing") -> None:
    """Finite, 1-D, strictly monotone times inside [t_min, t_max] (an exact 0 is allowed at the data end).

    `direction="decreasing"` (sampling, noise to data) or `"increasing"` (inversion, data to noise).

    Args:
        t: the grid.
        schedule: its schedule (None: the range [0, 1]).
        direction: as above.

    Raises:
        InvalidArgument: naming the first time out of order or out of range.
    """
    check_choice("direction", direction, DIRECTIONS)
    if t.ndim != 1 or t.numel() < 2:
        raise InvalidArgument(f"grid must be a 1-D sequence of at least 2 times, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InvalidArgument("grid contains NaN or Inf")
    if direction == "increasing":
        if not torch.all(t[1:] > t[:-1]):
            bad = int(torch.nonzero(t[1:] <= t[:-1])[0])
            raise InvalidArgument(f"an inversion grid must be strictly increasing in noise; t[{bad}]="
                                  f"{float(t[bad]):.6g} is followed by t[{bad + 1}]={float(t[bad + 1]):.6g}")
        t = t.flip(0)
    elif not torch.all(t[1:] < t[:-1]):
        bad = int(torch.nonzero(t[1:] >= t[:-1])[0])
        hint = ("; to integrate from data to noise use Sampler.invert" if is_increasing(t) else "")
        raise InvalidArgument(f"grid must be strictly decreasing in noise; t[{bad}]={float(t[bad]):.6g} "
                              f"is followed by t[{bad + 1}]={float(t[bad + 1]):.6g}{hint}")
    lo = schedule.t_min if schedule is not None else 0.0
    hi = schedule.t_max if schedule is not None else 1.0
    tol = 1e-9 * max(1.0, abs(hi))
    noisiest = "starts" if direction == "decreasing" else "ends"
    if float(t[0]) > hi + tol:
        raise InvalidArgument(f"grid {noisiest} at t={float(t[0]):.6g}, above the schedule's t_max={hi:.6g}")
    inner = t[:-1] if float(t[-1]) == 0.0 else t
    if float(inner.min()) < lo - tol or float(t[-1]) < 0:
        raise InvalidArgument(f"grid reaches t={float(inner.min()):.6g}, below the schedule's t_min={lo:.6g} "
                              "(only an exact 0 at the data end may lie below it)")
