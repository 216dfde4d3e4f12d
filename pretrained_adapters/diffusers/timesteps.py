"""diffusers' inference timesteps as diffsolve times: the spacing formulas of each scheduler family, karras
sigmas, LCM / TCD skipping schedules and flow-matching shifted sigmas, as grid functions
(`Sampler(grid=diffusers_grid, grid_options=...)`), plus `grid_options_of` (a config's default grid) and
`grid_from_scheduler` (a scheduler object's own `set_timesteps`, run on a copy).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument, check_choice, check_int
from diffsolve.grids import karras_sigmas
from diffsolve.pretrained_adapters.diffusers.config import (
    STYLES, config_of, is_flow_config, schedule_from_diffusers, style_of)
from diffsolve.schedules import NoiseSchedule, RectifiedFlow, VPDiscrete

SPACINGS = ("linspace", "leading", "trailing")
# diffusers' multistep schedulers lower their order on the last steps only for fewer steps than this
LOWER_ORDER_FINAL_BELOW = 15
# Noise-level spacings of DPMSolverMultistepScheduler (config flag -> name), at most one of them set
SIGMA_SPACINGS = {"use_karras_sigmas": "karras", "use_lu_lambdas": "lu", "use_exponential_sigmas": "exponential",
                  "use_beta_sigmas": "beta"}


def discrete_timesteps(steps: int, num_train_timesteps: int, *, spacing: str = "linspace", steps_offset: int = 0,
                       style: str = "dpmsolver") -> np.ndarray:
    """diffusers' inference timesteps (float64, largest first) for one scheduler family (`style`).

    Args:
        steps: the number of inference steps, >= 1 (at most num_train_timesteps except for "dpmsolver").
        num_train_timesteps: the config's training timesteps.
        spacing: "linspace", "leading" or "trailing" (the config's `timestep_spacing`).
        steps_offset: the config's `steps_offset`, added with "leading" spacing.
        style: "dpmsolver" (DPMSolver*, UniPC, DEIS; repeated timesteps listed once), "ddim" or "euler".

    Returns:
        The timesteps, a float64 numpy array.

    Raises:
        InvalidArgument: `steps` is not an integer >= 1 (or exceeds num_train_timesteps), or `spacing` or `style`
            is not one of the allowed names.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidArgument(f"steps={steps!r}: must be an integer >= 1")
    check_choice("spacing", spacing, SPACINGS)
    check_choice("style", style, STYLES[:3])
    n = int(num_train_timesteps)
    if style == "dpmsolver":
        # DPMSolver*/UniPC/DEIS take any count; from num_train_timesteps steps on, rounding repeats timesteps (a
        # zero-length step each): they are listed once
        return _once(_dpmsolver_timesteps(steps, n, spacing, steps_offset))
    if steps > n:
        raise InvalidArgument(f"steps={steps} exceeds num_train_timesteps={n}")
    if spacing == "trailing":
        return np.arange(n, 0, -n / steps).round() - 1
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, steps)
        # DDIM rounds; Euler-family schedulers keep the float32 values and interpolate sigma between nodes
        return ts.round()[::-1].copy() if style == "ddim" else ts.astype(np.float32).astype(np.float64)[::-1].copy()
    return (np.arange(0, steps) * (n // steps)).round()[::-1] + steps_offset


def _dpmsolver_timesteps(steps: int, n: int, spacing: str, steps_offset: int) -> np.ndarray:
    """DPMSolver*/UniPC/DEIS: steps + 1 points, the last (0) dropped."""
    if spacing == "trailing":
        return np.arange(n, 0, -n / steps).round() - 1
    if spacing == "linspace":
        return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy()
    ratio = n // (steps + 1)
    return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1] + steps_offset


def _once(ts: np.ndarray) -> np.ndarray:
    """Each timestep once, in the order listed."""
    _, first = np.unique(ts, return_index=True)
    return ts[np.sort(first)]


def node_sigmas(ac: torch.Tensor) -> np.ndarray:
    """The EDM sigma of each training timestep, sqrt((1 - ac) / ac), in float32 arithmetic as diffusers has it.

    Args:
        ac: alphas_cumprod, one value per training timestep.

    Returns:
        The sigmas, a float32 numpy array.
    """
    a = ac.to(torch.float32)
    return (((1 - a) / a) ** 0.5).numpy()


def times_from_timesteps(schedule: VPDiscrete, timesteps: Sequence[float], sigmas: Sequence[float] | None = None,
                         final: float | str = "zero", repeated_end: str = "step") -> torch.Tensor:
    """diffsolve times for diffusers (timesteps, sigmas): t_from_index(n) at integer timesteps whose sigma is the
    node's own, otherwise the time whose EDM sigma is diffusers' sigma (the value its update uses).

    A last timestep already at the end point (karras sigmas ending at sigma_min) is a zero-length step in
    diffusers: `repeated_end="step"` keeps it (one ulp long), `"drop"` removes the repeated end point, and
    `"auto"` drops it from 15 steps on, where diffusers' lower-order-final rule no longer counts it and the step
    only returns its input (a second-order diffsolve step would divide by its zero length).

    Args:
        schedule: the discrete VP schedule.
        timesteps: diffusers' timesteps, largest first.
        sigmas: diffusers' sigmas at those timesteps; None: every timestep is read as a node's.
        final: the end point appended: "zero", "sigma_min" (the time of index 0) or "none" (nothing appended).
        repeated_end: "step", "drop" or "auto", as above.

    Returns:
        The float64 times, decreasing.

    Raises:
        InvalidArgument: `final` or `repeated_end` is not one of the allowed values.
    """
    check_choice("repeated_end", repeated_end, ("step", "drop", "auto"))
    ts = np.asarray(timesteps, dtype=np.float64)
    t = schedule.t_from_index(torch.from_numpy(ts.copy()))
    if sigmas is not None:
        sg = np.asarray(sigmas, dtype=np.float64)[: ts.size]
        node = node_sigmas(schedule.alphas_cumprod)
        for i, (n, s) in enumerate(zip(ts, sg)):
            on_node = float(n).is_integer() and 0 <= n < node.size and abs(node[int(n)] - s) <= 1e-6 * s
            if not on_node:
                t[i] = schedule.t_from_edm_sigma(float(s))
    if final == "zero":
        end = torch.zeros(1, dtype=torch.float64)
    elif final == "sigma_min":
        end = schedule.t_from_index(torch.zeros(1, dtype=torch.float64))
    elif final == "none":
        return t
    else:
        raise InvalidArgument(f"final={final!r}; allowed values: 'zero', 'sigma_min', 'none'")
    if float(t[-1]) <= float(end[0]):
        if repeated_end == "drop" or (repeated_end == "auto" and t.numel() >= LOWER_ORDER_FINAL_BELOW):
            return t if t.numel() >= 2 else torch.cat([t, torch.nextafter(t[-1:], torch.zeros(1, dtype=t.dtype))])
        # The last timestep is already the end point and diffusers takes a zero-length step there: a model call
        # that leaves the state as it is, but that counts in its lower-order-final rule (DEIS on karras sigmas).
        # One ulp below keeps the grid strictly decreasing while the step's coefficients are those of a zero step.
        return torch.cat([t, torch.nextafter(t[-1:], torch.zeros(1, dtype=t.dtype))])
    return torch.cat([t, end])


def spaced_sigmas(kind: str, lo: float, hi: float, steps: int) -> np.ndarray:
    """`steps` noise levels from hi down to lo as DPMSolverMultistepScheduler spaces them (`SIGMA_SPACINGS`).

    Args:
        kind: "karras", "lu" (uniform in log sigma), "exponential" or "beta" (Beta(0.6, 0.6) quantiles; needs scipy).
        lo: the smallest sigma.
        hi: the largest sigma.
        steps: the number of sigmas.

    Returns:
        The sigmas, a numpy array from hi to lo.

    Raises:
        InvalidArgument: `kind` is not one of the four.
    """
    if kind == "karras":
        return karras_sigmas(lo, hi, steps).numpy()
    if kind == "lu":            # uniform in log sigma, written as Lu et al.'s lambda ramp with rho = 1
        lam_lo, lam_hi = float(np.log(np.float32(lo))), float(np.log(np.float32(hi)))   # float32 logs, as diffusers
        return np.exp(lam_hi + np.linspace(0, 1, steps) * (lam_lo - lam_hi))
    if kind == "exponential":
        return np.exp(np.linspace(math.log(hi), math.log(lo), steps))
    if kind == "beta":          # quantiles of Beta(0.6, 0.6) (Lee et al. 2024)
        import scipy.stats      # optional dependency, needed only here
        q = scipy.stats.beta.ppf(1 - np.linspace(0, 1, steps), 0.6, 0.6)
        return np.array([lo + v * (hi - lo) for v in q])
    check_choice("sigma spacing", kind, tuple(SIGMA_SPACINGS.values()))
    raise AssertionError


def diffusers_grid(steps: int, schedule: NoiseSchedule, *, style: str = "dpmsolver", timestep_spacing: str = "linspace",
                   steps_offset: int = 0, use_karras_sigmas: bool = False, use_lu_lambdas: bool = False,
                   use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False, final: str = "zero",
                   shift: float = 1.0, num_train_timesteps: int | None = None,
                   repeated_end: str = "step") -> torch.Tensor:
    """A diffsolve grid function (`Sampler(grid=diffusers_grid, grid_options=...)`) giving diffusers' timesteps.

    VP schedules: the spacing formulas of the scheduler family `style` ('dpmsolver': DPMSolver*, UniPC, DEIS;
    'ddim': DDIM/DDPM/PNDM; 'euler': Euler/Heun/LMS), optional karras, Lu (log-uniform), exponential or beta
    sigmas; `final` 'zero' or 'sigma_min'; `repeated_end` as in `times_from_timesteps`.
    Flow matching (`style='flow'` or a RectifiedFlow schedule): FlowMatchEulerDiscreteScheduler's shifted
    sigmas s' = shift s / (1 + (shift - 1) s).

    Args:
        steps: the number of steps.
        schedule: a VPDiscrete or RectifiedFlow schedule.
        style: the scheduler family, as above (default "dpmsolver").
        timestep_spacing: "linspace", "leading" or "trailing".
        steps_offset: the config's `steps_offset`.
        use_karras_sigmas: karras-spaced sigmas (at most one of the four spacing flags).
        use_lu_lambdas: Lu's log-uniform sigmas.
        use_exponential_sigmas: exponentially spaced sigmas.
        use_beta_sigmas: Beta(0.6, 0.6)-spaced sigmas.
        final: "zero" or "sigma_min", the last time.
        shift: the flow-matching shift (default 1.0: none).
        num_train_timesteps: the training timesteps; None: the schedule's.
        repeated_end: "step", "drop" or "auto".

    Returns:
        The float64 times, decreasing.

    Raises:
        InvalidArgument: another schedule, two spacing flags set, or a name or count out of its range.
    """
    if isinstance(schedule, RectifiedFlow) or style == "flow":
        return flow_grid(steps, schedule, shift=shift,
                         num_train_timesteps=num_train_timesteps or int(getattr(schedule, "model_time_scale", 1000)))
    if not isinstance(schedule, VPDiscrete):
        raise InvalidArgument("diffusers_grid needs a VPDiscrete or RectifiedFlow schedule")
    check_choice("final", final, ("zero", "sigma_min"))
    flags = {"use_karras_sigmas": use_karras_sigmas, "use_lu_lambdas": use_lu_lambdas,
             "use_exponential_sigmas": use_exponential_sigmas, "use_beta_sigmas": use_beta_sigmas}
    kinds = [SIGMA_SPACINGS[k] for k, v in flags.items() if v]
    if len(kinds) > 1:
        raise InvalidArgument(f"{' and '.join(k for k, v in flags.items() if v)} are all set; diffusers takes only "
                              "one noise-level spacing at a time")
    n = num_train_timesteps or schedule.N
    ts = discrete_timesteps(steps, n, spacing=timestep_spacing, steps_offset=steps_offset, style=style)
    node = node_sigmas(schedule.alphas_cumprod).astype(np.float64)
    sigmas = np.interp(ts, np.arange(node.size), node).astype(np.float32).astype(np.float64)
    if kinds:
        if style == "euler":
            lo, hi = float(sigmas[-1]), float(sigmas[0])
        else:
            lo, hi = float(node[0]), float(node[-1])
        sigmas = spaced_sigmas(kinds[0], lo, hi, steps).astype(np.float32).astype(np.float64)  # diffusers: float32
        # nearest integer timestep as a candidate node: sigmas equal to a node's map to its exact time
        ts = schedule.timestep_index(schedule.t_from_edm_sigma(torch.from_numpy(sigmas))).round().numpy()
    return times_from_timesteps(schedule, ts, sigmas, final=final, repeated_end=repeated_end)


def lcm_timesteps(steps: int, num_train_timesteps: int = 1000, original_inference_steps: int = 50) -> np.ndarray:
    """LCMScheduler.set_timesteps: `steps` evenly spaced indices into the skipping schedule k n - 1, n = 1..50.

    Args:
        steps: the number of steps, 1 to original_inference_steps.
        num_train_timesteps: the training timesteps (default 1000).
        original_inference_steps: the length of the skipping schedule (default 50), 1 to num_train_timesteps.

    Returns:
        The timesteps, an integer numpy array, largest first.

    Raises:
        InvalidArgument: a count out of its range.
    """
    steps = check_int("steps", steps, 1)
    original = check_int("original_inference_steps", original_inference_steps, 1, num_train_timesteps)
    if steps > original:
        raise InvalidArgument(f"steps={steps}: an LCM schedule takes at most original_inference_steps={original} steps")
    k = num_train_timesteps // original
    origin = (np.arange(1, original + 1) * k - 1)[::-1]
    return origin[np.floor(np.linspace(0, origin.size, num=steps, endpoint=False)).astype(np.int64)]


def lcm_grid(steps: int, schedule: NoiseSchedule, *, original_inference_steps: int = 50,
             num_train_timesteps: int | None = None, final: str = "zero") -> torch.Tensor:
    """A diffsolve grid function giving LCMScheduler's and TCDScheduler's timesteps, then 0 (LCM: its last step
    returns the prediction) or alphas_cumprod[0] (`final="sigma_min"`: TCD's last step ends there).

    Args:
        steps: the number of steps.
        schedule: the discrete VP schedule.
        original_inference_steps: the length of the skipping schedule (default 50).
        num_train_timesteps: the training timesteps; None: the schedule's.
        final: "zero" or "sigma_min".

    Returns:
        The float64 times, decreasing.

    Raises:
        InvalidArgument: the schedule is not a VPDiscrete, or a count or `final` out of its range.
    """
    if not isinstance(schedule, VPDiscrete):
        raise InvalidArgument("lcm_grid needs a VPDiscrete schedule")
    ts = lcm_timesteps(steps, num_train_timesteps or schedule.N, original_inference_steps)
    return times_from_timesteps(schedule, ts, final=final)


def shift_sigmas(s: torch.Tensor | np.ndarray | float, shift: float):
    """SD3 / FlowMatchEuler timestep shift: s' = shift s / (1 + (shift - 1) s).

    Args:
        s: the sigmas (a tensor, an array or a float).
        shift: the shift factor.

    Returns:
        (Tensor | ndarray | float): the shifted sigmas, of the input's type.
    """
    return shift * s / (1 + (shift - 1) * s)


def flow_grid(steps: int, schedule: NoiseSchedule | None = None, *, shift: float = 1.0,
              num_train_timesteps: int = 1000, final: str = "zero") -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler.set_timesteps (static shift) as diffsolve times t = sigma, then 0.

    Args:
        steps: the number of steps, >= 1.
        schedule: the schedule (not used; the grid function's signature).
        shift: the static shift, > 0 (default 1.0: none).
        num_train_timesteps: the training timesteps (default 1000), which fix sigma_min.
        final: only "zero".

    Returns:
        The float64 times (float32 sigmas as diffusers stores them), decreasing, ending at 0.

    Raises:
        InvalidArgument: `steps` not an integer >= 1, `shift` not > 0, or `final` not "zero".
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidArgument(f"steps={steps!r}: must be an integer >= 1")
    if not shift > 0:
        raise InvalidArgument(f"shift={shift!r}: must be > 0")
    check_choice("final", final, ("zero",))
    n = int(num_train_timesteps)
    # diffusers shifts its float32 training sigmas once in __init__ (giving sigma_min), then the float64
    # inference sigmas again, and stores float32: reproduce each rounding so the model sees the same times
    s_min = float(shift_sigmas(torch.tensor(1.0, dtype=torch.float32) / n, float(shift)))
    base = np.linspace(1.0 * n, s_min * n, steps) / n
    sig = shift_sigmas(base, shift).astype(np.float32).astype(np.float64)
    return torch.cat([torch.from_numpy(sig), torch.zeros(1, dtype=torch.float64)])


def grid_from_scheduler(scheduler: Any, steps: int, schedule: NoiseSchedule | None = None,
                        **set_timesteps_kwargs: Any) -> torch.Tensor:
    """Run (a copy of) a diffusers scheduler's set_timesteps and return its points as diffsolve times.

    Multi-stage schedulers (Heun) list points twice; the distinct ones are returned. DDIM steps to
    t - num_train_timesteps // steps, which is the next listed timestep only for 'leading' spacing.

    Args:
        scheduler: the diffusers scheduler object (left unchanged).
        steps: the number of inference steps.
        schedule: the schedule; None: `schedule_from_diffusers(scheduler)`.
        **set_timesteps_kwargs: passed to `set_timesteps`.

    Returns:
        The float64 times, decreasing.

    Raises:
        InvalidArgument: the schedule is neither a VPDiscrete nor a RectifiedFlow.
    """
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps, **set_timesteps_kwargs)
    cfg = config_of(scheduler)
    schedule = schedule or schedule_from_diffusers(scheduler)
    ts = sch.timesteps.detach().to("cpu", torch.float64).numpy()
    sig = getattr(sch, "sigmas", None)
    if isinstance(schedule, RectifiedFlow):
        s = sig.detach().to("cpu", torch.float64)
        s = torch.unique_consecutive(s)
        return s if float(s[-1]) == 0.0 else torch.cat([s, torch.zeros(1, dtype=torch.float64)])
    if not isinstance(schedule, VPDiscrete):
        raise InvalidArgument("grid_from_scheduler needs a VPDiscrete or RectifiedFlow schedule")
    if sig is None:       # DDIM / DDPM / PNDM: alphas_cumprod at the timesteps, then the final alpha
        final = "zero" if cfg.get("set_alpha_to_one", True) else "sigma_min"
        return times_from_timesteps(schedule, np.unique(ts)[::-1], None, final=final)
    sg = sig.detach().to("cpu", torch.float64).numpy()
    # keep each distinct (timestep, sigma) once, in order (Heun repeats interior points)
    keep_t, keep_s = [ts[0]], [sg[0]]
    for n, s in zip(ts[1:], sg[1:ts.size]):
        if s != keep_s[-1]:
            keep_t.append(n)
            keep_s.append(s)
    last = float(sg[-1])
    final = "zero" if last == 0.0 else "sigma_min"
    return times_from_timesteps(schedule, keep_t, keep_s, final=final)


def noise_scale_of(scheduler: Any, steps: int) -> float:
    """Factor f such that `Sampler.run(noise=f * noise)` starts where the diffusers loop starts from `noise`.

    diffusers' Euler-family schedulers integrate x~ = x / alpha and start from `noise * init_noise_sigma`; with
    'linspace' / 'trailing' spacing that factor is sigma_max rather than sqrt(sigma_max^2 + 1), so their x_T has
    standard deviation sigma(t_max) < 1 instead of diffsolve's VP prior std 1.

    Args:
        scheduler: the diffusers scheduler object (a copy runs set_timesteps).
        steps: the number of inference steps.

    Returns:
        The factor f.
    """
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    f = float(getattr(sch, "init_noise_sigma", 1.0))
    cfg = config_of(scheduler)
    if style_of(cfg) == "euler" and not is_flow_config(cfg):
        s0 = float(sch.sigmas[0])
        f /= math.sqrt(1.0 + s0 * s0)
    return f


def grid_options_of(scheduler_or_config: Any) -> tuple[Callable[..., torch.Tensor], dict]:
    """(grid function, grid_options) that reproduce the scheduler config's default timesteps in diffsolve.

    Args:
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.

    Returns:
        flow_grid, lcm_grid or diffusers_grid, and its keywords.

    Raises:
        InvalidArgument: not a diffusers config, or `use_dynamic_shifting=True` (pass grid=flow_grid with
            shift=exp(mu) instead).
    """
    cfg = config_of(scheduler_or_config)
    if is_flow_config(cfg) and str(cfg.get("_class_name", "")).startswith("FlowMatch"):
        if cfg.get("use_dynamic_shifting", False):
            raise InvalidArgument("use_dynamic_shifting=True needs mu per resolution; pass grid=flow_grid with "
                                  "shift=exp(mu) instead")
        return flow_grid, {"shift": float(cfg.get("shift", 1.0)),
                           "num_train_timesteps": int(cfg.get("num_train_timesteps", 1000))}
    if str(cfg.get("_class_name", "")) in ("LCMScheduler", "TCDScheduler"):
        return lcm_grid, {"original_inference_steps": int(cfg.get("original_inference_steps", 50)),
                          "num_train_timesteps": int(cfg.get("num_train_timesteps", 1000)),
                          "final": "zero" if cfg.get("_class_name") == "LCMScheduler" else "sigma_min"}
    style = style_of(cfg)
    final = "zero" if cfg.get("set_alpha_to_one", True) else "sigma_min"
    if style != "ddim":
        # DEIS has no final_sigmas_type: it ends at alphas_cumprod[0]
        final = cfg.get("final_sigmas_type", "sigma_min" if "DEIS" in str(cfg.get("_class_name")) else "zero")
    opts = {"style": style, "timestep_spacing": cfg.get("timestep_spacing", "linspace"),
            "steps_offset": int(cfg.get("steps_offset", 0) or 0),
            "use_karras_sigmas": bool(cfg.get("use_karras_sigmas", False)), "final": final}
    # the other spacings are passed only when set, so that grid options stay as they were for other configs
    opts.update({k: True for k in SIGMA_SPACINGS if k != "use_karras_sigmas" and cfg.get(k, False)})
    return diffusers_grid, opts


__all__ = ["SPACINGS", "SIGMA_SPACINGS", "LOWER_ORDER_FINAL_BELOW", "spaced_sigmas", "discrete_timesteps", "node_sigmas", "times_from_timesteps", "diffusers_grid", "lcm_timesteps",
           "lcm_grid", "shift_sigmas", "flow_grid", "grid_from_scheduler", "noise_scale_of", "grid_options_of"]
