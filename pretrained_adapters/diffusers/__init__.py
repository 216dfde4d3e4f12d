"""diffusers models and scheduler configs as diffsolve fields, grids and samplers (diffusers stays optional).

A diffusers scheduler config fixes three things diffsolve keeps apart: the Gaussian path (betas or
alphas_cumprod -> `VPDiscrete`; flow matching -> `RectifiedFlow` with model time 1000 sigma), what the network
predicts (`prediction_type`), and the inference timesteps (`timestep_spacing`, `steps_offset`, karras sigmas,
flow `shift`). `from_diffusers(unet, scheduler)` gives the field; `diffusers_grid` / `grid_from_scheduler` give
the diffusers timesteps as diffsolve times, so a diffsolve solver and a diffusers scheduler run on the same
points. diffusers itself is imported only where a scheduler object is built or stepped.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import FieldWrapper, VectorField
from diffsolve.grids import karras_sigmas
from diffsolve.schedules import NoiseSchedule, RectifiedFlow, VPDiscrete
from diffsolve.solvers.base import Plan, Solver, get_solver
from diffsolve.solvers.consistency import Consistency
from diffsolve.solvers.dpm_solver import DPMSolverSinglestep

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "velocity"}
SPACINGS = ("linspace", "leading", "trailing")
# Which timestep formula a diffusers scheduler class uses (they differ in 'linspace' and 'leading').
STYLES = ("dpmsolver", "ddim", "euler", "flow")
_STYLE_OF_CLASS = {
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddim", "PNDMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler", "HeunDiscreteScheduler": "euler",
    "LMSDiscreteScheduler": "euler", "KDPM2DiscreteScheduler": "euler", "KDPM2AncestralDiscreteScheduler": "euler",
    "DPMSolverMultistepScheduler": "dpmsolver", "DPMSolverSinglestepScheduler": "dpmsolver",
    "UniPCMultistepScheduler": "dpmsolver", "DEISMultistepScheduler": "dpmsolver",
    "FlowMatchEulerDiscreteScheduler": "flow", "FlowMatchHeunDiscreteScheduler": "flow",
}


# ------------------------------------------------------------------------------------------------
# Scheduler configs
# ------------------------------------------------------------------------------------------------
def config_of(scheduler_or_config: Any) -> dict:
    """A plain dict from a diffusers scheduler, its `.config` (FrozenDict) or a config dict (JSON as loaded)."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(cfg, Mapping):
        raise InvalidArgument(f"scheduler must be a diffusers scheduler or a config mapping, got "
                              f"{type(scheduler_or_config).__name__}")
    out = dict(cfg)
    if "_class_name" not in out and not isinstance(scheduler_or_config, Mapping):
        out["_class_name"] = type(scheduler_or_config).__name__
    elif "_class_name" not in out:
        # `scheduler.config` of a scheduler built in code carries no class name: its keys name the class
        name = infer_class_name(out)
        if name is not None:
            out["_class_name"] = name
    return out


# Classes whose __init__ takes the same arguments: the one listed here is assumed (same timesteps either way).
_PREFERRED_OF_SAME_SIGNATURE = ("DDIMScheduler", "DDPMScheduler", "LMSDiscreteScheduler",
                                "FlowMatchHeunDiscreteScheduler", "CogVideoXDDIMScheduler", "LCMScheduler")


@functools.lru_cache(maxsize=1)
def _class_of_signature() -> dict:
    try:
        import diffusers
    except ImportError:
        return {}
    table: dict = {}
    for name in sorted(dir(diffusers)):
        cls = getattr(diffusers, name, None)
        if not (name.endswith("Scheduler") and isinstance(cls, type)):
            continue
        try:
            keys = frozenset(k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "kwargs"))
        except (TypeError, ValueError):
            continue
        if keys not in table or name in _PREFERRED_OF_SAME_SIGNATURE:
            table[keys] = name
    return table


def infer_class_name(cfg: Mapping) -> str | None:
    """The diffusers scheduler class whose constructor takes exactly this config's keys (None if none or no diffusers).

    KDPM2, KDPM2Ancestral and LMS take the same arguments; such a config is read as LMS's (the same timesteps). Pass
    the scheduler object, or a config with `_class_name`, to name the class for sure."""
    keys = frozenset(k for k in cfg if not str(k).startswith("_"))
    return _class_of_signature().get(keys) if keys else None


def is_flow_config(cfg: Mapping) -> bool:
    """Flow matching (FlowMatch* schedulers, or a multistep solver with use_flow_sigmas)."""
    name = str(cfg.get("_class_name", ""))
    return name.startswith("FlowMatch") or bool(cfg.get("use_flow_sigmas", False)) or \
        cfg.get("prediction_type") == "flow_prediction"


def prediction_of(cfg: Mapping) -> str:
    """diffsolve's prediction name for the config's prediction_type (flow matching: velocity)."""
    if is_flow_config(cfg):
        return "velocity"
    ptype = cfg.get("prediction_type", "epsilon")
    check_choice("prediction_type", ptype, PREDICTION_TYPES)
    return PREDICTION_TYPES[ptype]


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """diffusers' betas_for_alpha_bar (Nichol & Dhariwal cosine), computed as diffusers does."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return torch.tensor([min(1 - f((i + 1) / n) / f(i / n), max_beta) for i in range(n)], dtype=torch.float32)


def betas_of(cfg: Mapping) -> torch.Tensor:
    """The float32 betas a diffusers scheduler builds from this config (same arithmetic, same rounding)."""
    n = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    trained = cfg.get("trained_betas")
    kind = cfg.get("beta_schedule", "linear")
    if trained is not None:
        return torch.as_tensor(np.asarray(trained), dtype=torch.float32).reshape(-1).clone()
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        return _cosine_betas(n)
    if kind == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start
    check_choice("beta_schedule", kind, ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"))
    raise AssertionError


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Alg. 1, as diffusers applies it."""
    ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    a0, aT = ab[0].clone(), ab[-1].clone()
    ab = (ab - aT) * (a0 / (a0 - aT))
    ab2 = ab ** 2
    alphas = torch.cat([ab2[0:1], ab2[1:] / ab2[:-1]])
    return 1 - alphas


def alphas_cumprod_of(scheduler_or_config: Any) -> torch.Tensor:
    """alphas_cumprod as float64 holding diffusers' float32 values (the scheduler's own tensor when given one)."""
    ac = getattr(scheduler_or_config, "alphas_cumprod", None)
    if isinstance(ac, torch.Tensor):
        return ac.detach().to("cpu", torch.float64)
    cfg = config_of(scheduler_or_config)
    betas = betas_of(cfg)
    if cfg.get("rescale_betas_zero_snr", False):
        betas = _rescale_zero_terminal_snr(betas)
    ac = torch.cumprod(1.0 - betas, dim=0)
    if cfg.get("rescale_betas_zero_snr", False):
        ac[-1] = 2.0 ** -24      # diffusers' stand-in for zero terminal SNR, so that the first sigma is finite
    return ac.to(torch.float64)


def schedule_from_diffusers(scheduler_or_config: Any) -> NoiseSchedule:
    """VPDiscrete (model time = integer timestep n, alpha^2 = alphas_cumprod[n]) or RectifiedFlow (model time 1000 t)."""
    cfg = config_of(scheduler_or_config)
    if is_flow_config(cfg):
        n = int(cfg.get("num_train_timesteps", 1000))
        return RectifiedFlow(model_time_scale=float(n), t_min=min(1e-4, 0.5 / n))
    return VPDiscrete(alphas_cumprod=alphas_cumprod_of(scheduler_or_config), model_time_scale=1.0)


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
class DiffusersModel(torch.nn.Module):
    """`model(x, t, **kw)` for a diffusers network: timestep passed by keyword when it has one, `.sample` unwrapped.

    `timestep_scale` multiplies the time first (Flux-style transformers take timestep / 1000).
    """

    def __init__(self, model: Callable[..., Any], timestep_scale: float = 1.0):
        super().__init__()
        if not callable(model):
            raise InvalidArgument(f"model must be callable, got {type(model).__name__}")
        self.inner = model
        self.timestep_scale = float(timestep_scale)
        fwd = getattr(model, "forward", model)
        try:
            params = inspect.signature(fwd).parameters
        except (TypeError, ValueError):
            params = {}
        self._by_keyword = "timestep" in params

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.timestep_scale != 1.0:
            t = t * self.timestep_scale
        out = self.inner(x, timestep=t, **kwargs) if self._by_keyword else self.inner(x, t, **kwargs)
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


def sample_shape_of(model: Any) -> tuple[int, ...] | None:
    """(channels, size, size) from a diffusers UNet/transformer config, when it says so."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    ch = cfg.get("in_channels") if isinstance(cfg, Mapping) else getattr(cfg, "in_channels", None)
    size = cfg.get("sample_size") if isinstance(cfg, Mapping) else getattr(cfg, "sample_size", None)
    if ch is None or size is None:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(ch), *map(int, size))


def from_diffusers(model: Callable[..., Any], scheduler_or_config: Any, *, prediction: str | None = None,
                   sample_shape: Sequence[int] | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   timestep_scale: float = 1.0) -> VectorField:
    """The VectorField of a diffusers network under its scheduler config (schedule, prediction type, model time)."""
    cfg = config_of(scheduler_or_config)
    shape = tuple(sample_shape) if sample_shape is not None else sample_shape_of(model)
    if cfg.get("thresholding", False):
        raise InvalidArgument("scheduler config has thresholding=True (dynamic thresholding), which diffsolve does "
                              "not reproduce; set it to False")
    clip = None
    if cfg.get("clip_sample", False):
        r = float(cfg.get("clip_sample_range", 1.0))
        clip = (-r, r)
    return VectorField(DiffusersModel(model, timestep_scale), prediction=prediction or prediction_of(cfg),
                       schedule=schedule_from_diffusers(scheduler_or_config), sample_shape=shape,
                       model_kwargs=model_kwargs, clip_x0=clip)


# ------------------------------------------------------------------------------------------------
# Grids: diffusers' inference timesteps as diffsolve times
# ------------------------------------------------------------------------------------------------
def _style(cfg: Mapping, style: str | None) -> str:
    if style is None:
        style = _STYLE_OF_CLASS.get(str(cfg.get("_class_name", "")), "flow" if is_flow_config(cfg) else "dpmsolver")
    check_choice("style", style, STYLES)
    return style


def discrete_timesteps(steps: int, num_train_timesteps: int, *, spacing: str = "linspace", steps_offset: int = 0,
                       style: str = "dpmsolver") -> np.ndarray:
    """diffusers' inference timesteps (float64, largest first) for one scheduler family (`style`)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidArgument(f"steps={steps!r}: must be an integer >= 1")
    check_choice("spacing", spacing, SPACINGS)
    check_choice("style", style, STYLES[:3])
    n = int(num_train_timesteps)
    if steps > n:
        raise InvalidArgument(f"steps={steps} exceeds num_train_timesteps={n}")
    if spacing == "trailing":
        return np.arange(n, 0, -n / steps).round() - 1
    if style == "dpmsolver":      # DPMSolver*/UniPC/DEIS: steps + 1 points, the last (0) dropped
        if spacing == "linspace":
            return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy()
        ratio = n // (steps + 1)
        return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1] + steps_offset
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, steps)
        # DDIM rounds; Euler-family schedulers keep the float32 values and interpolate sigma between nodes
        return ts.round()[::-1].copy() if style == "ddim" else ts.astype(np.float32).astype(np.float64)[::-1].copy()
    return (np.arange(0, steps) * (n // steps)).round()[::-1] + steps_offset


def _node_sigmas(ac: torch.Tensor) -> np.ndarray:
    # diffusers computes these from float32 alphas_cumprod with torch float32 arithmetic
    a = ac.to(torch.float32)
    return (((1 - a) / a) ** 0.5).numpy()


def times_from_timesteps(schedule: VPDiscrete, timesteps: Sequence[float], sigmas: Sequence[float] | None = None,
                         final: float | str = "zero") -> torch.Tensor:
    """diffsolve times for diffusers (timesteps, sigmas): t_from_index(n) at integer timesteps whose sigma is the
    node's own, otherwise the time whose EDM sigma is diffusers' sigma (the value its update uses)."""
    ts = np.asarray(timesteps, dtype=np.float64)
    t = schedule.t_from_index(torch.from_numpy(ts.copy()))
    if sigmas is not None:
        sg = np.asarray(sigmas, dtype=np.float64)[: ts.size]
        node = _node_sigmas(schedule.alphas_cumprod)
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
        # The last timestep is already the end point and diffusers takes a zero-length step there: a model call
        # that leaves the state as it is, but that counts in its lower-order-final rule (DEIS on karras sigmas).
        # One ulp below keeps the grid strictly decreasing while the step's coefficients are those of a zero step.
        return torch.cat([t, torch.nextafter(t[-1:], torch.zeros(1, dtype=t.dtype))])
    return torch.cat([t, end])


def diffusers_grid(steps: int, schedule: NoiseSchedule, *, style: str = "dpmsolver", timestep_spacing: str = "linspace",
                   steps_offset: int = 0, use_karras_sigmas: bool = False, final: str = "zero",
                   shift: float = 1.0, num_train_timesteps: int | None = None) -> torch.Tensor:
    """A diffsolve grid function (`Sampler(grid=diffusers_grid, grid_options=...)`) giving diffusers' timesteps.

    VP schedules: the spacing formulas of the scheduler family `style` ('dpmsolver': DPMSolver*, UniPC, DEIS;
    'ddim': DDIM/DDPM/PNDM; 'euler': Euler/Heun/LMS), optional karras sigmas; `final` 'zero' or 'sigma_min'.
    Flow matching (`style='flow'` or a RectifiedFlow schedule): FlowMatchEulerDiscreteScheduler's shifted
    sigmas s' = shift s / (1 + (shift - 1) s).
    """
    if isinstance(schedule, RectifiedFlow) or style == "flow":
        return flow_grid(steps, schedule, shift=shift,
                         num_train_timesteps=num_train_timesteps or int(getattr(schedule, "model_time_scale", 1000)))
    if not isinstance(schedule, VPDiscrete):
        raise InvalidArgument("diffusers_grid needs a VPDiscrete or RectifiedFlow schedule")
    check_choice("final", final, ("zero", "sigma_min"))
    n = num_train_timesteps or schedule.N
    ts = discrete_timesteps(steps, n, spacing=timestep_spacing, steps_offset=steps_offset, style=style)
    node = _node_sigmas(schedule.alphas_cumprod).astype(np.float64)
    sigmas = np.interp(ts, np.arange(node.size), node).astype(np.float32).astype(np.float64)
    if use_karras_sigmas:
        if style == "euler":
            lo, hi = float(sigmas[-1]), float(sigmas[0])
        else:
            lo, hi = float(node[0]), float(node[-1])
        sigmas = karras_sigmas(lo, hi, steps).numpy().astype(np.float32).astype(np.float64)   # diffusers stores float32
        # nearest integer timestep as a candidate node: sigmas equal to a node's map to its exact time
        ts = schedule.timestep_index(schedule.t_from_edm_sigma(torch.from_numpy(sigmas))).round().numpy()
    return times_from_timesteps(schedule, ts, sigmas, final=final)


def lcm_timesteps(steps: int, num_train_timesteps: int = 1000, original_inference_steps: int = 50) -> np.ndarray:
    """LCMScheduler.set_timesteps: `steps` evenly spaced indices into the skipping schedule k n - 1, n = 1..50."""
    from diffsolve.errors import check_int
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
    returns the prediction) or alphas_cumprod[0] (`final="sigma_min"`: TCD's last step ends there)."""
    if not isinstance(schedule, VPDiscrete):
        raise InvalidArgument("lcm_grid needs a VPDiscrete schedule")
    ts = lcm_timesteps(steps, num_train_timesteps or schedule.N, original_inference_steps)
    return times_from_timesteps(schedule, ts, final=final)


class LCMBoundary(FieldWrapper):
    """Latent consistency models' boundary condition, applied by diffusers' LCMScheduler to the network's data
    prediction: c_skip x + c_out x0_hat with c_skip = sd^2 / ((10 n)^2 + sd^2), c_out = 10 n / sqrt((10 n)^2 + sd^2),
    n the timestep and sd = 0.5 (Luo et al. 2023; `timestep_scaling` replaces the 10)."""

    def __init__(self, field: Any, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
        super().__init__(field)
        self.timestep_scaling, self.sigma_data = float(timestep_scaling), float(sigma_data)

    def evaluate(self, x: torch.Tensor, p: Any, kind: str = "x0", **kwargs: Any):
        from diffsolve.field import FieldOutput, per_sample, velocity_from_x0
        out = self.inner.evaluate(x, p, "x0", **kwargs)
        n = per_sample(p.model_time, x) * self.timestep_scaling
        sd2 = self.sigma_data ** 2
        if isinstance(n, torch.Tensor):
            c_skip, c_out = sd2 / (n * n + sd2), n / torch.sqrt(n * n + sd2)
        else:
            c_skip, c_out = sd2 / (n * n + sd2), n / math.sqrt(n * n + sd2)
        x0 = c_skip * x + c_out * out.value
        value = x0 if kind == "x0" else velocity_from_x0(x, x0, p.path_for(x))
        return FieldOutput(value, out.aux)

    def own_identity(self) -> str:
        return f"lcm_boundary(scaling={self.timestep_scaling!r}, sigma_data={self.sigma_data!r})"


class TCDSteps(Consistency):
    """TCDScheduler's loop (Zheng et al. 2024): from listed timestep n to n', a DDIM move to the timestep
    floor((1 - gamma) n') with the model's x0 and eps, then noise back up to n'; the last step ends at
    alphas_cumprod[0] without noise. `gamma` is the `eta` its pipeline passes to `step` (default 0.3)."""

    def __init__(self, gamma: float = 0.3, s_noise: float = 1.0):
        super().__init__(gamma, s_noise)
        self.name = "tcd_scheduler"

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        from diffsolve.solvers.consistency import consistency_coefficients
        self.check_field(field)
        sch = field.schedule
        if not isinstance(sch, VPDiscrete):
            raise InvalidArgument("TCDScheduler's loop needs a discrete VP schedule")
        pts = self.grid_points(field, t)
        zero = field.at(0.0)            # TCD's x0 prediction is the clean data: the boundary is s = 0
        coeffs = []
        for p, q in zip(pts[:-1], pts[1:]):
            n_next = float(sch.timestep_index(torch.tensor(float(q.t))))
            n_mid = math.floor((1.0 - self.gamma) * round(n_next))
            mid = field.at(float(sch.t_from_index(torch.tensor(float(n_mid)))))
            coeffs.append(consistency_coefficients(p, q, mid, zero, self.s_noise))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=self.count_calls(tuple(coeffs), field, pts))


def shift_sigmas(s: torch.Tensor | np.ndarray | float, shift: float):
    """SD3 / FlowMatchEuler timestep shift: s' = shift s / (1 + (shift - 1) s)."""
    return shift * s / (1 + (shift - 1) * s)


def flow_grid(steps: int, schedule: NoiseSchedule | None = None, *, shift: float = 1.0,
              num_train_timesteps: int = 1000, final: str = "zero") -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler.set_timesteps (static shift) as diffsolve times t = sigma, then 0."""
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
    """
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    f = float(getattr(sch, "init_noise_sigma", 1.0))
    cfg = config_of(scheduler)
    if _style(cfg, None) == "euler" and not is_flow_config(cfg):
        s0 = float(sch.sigmas[0])
        f /= math.sqrt(1.0 + s0 * s0)
    return f


def grid_options_of(scheduler_or_config: Any) -> tuple[Callable[..., torch.Tensor], dict]:
    """(grid function, grid_options) that reproduce the scheduler config's default timesteps in diffsolve."""
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
    style = _style(cfg, None)
    final = "zero" if cfg.get("set_alpha_to_one", True) else "sigma_min"
    if style != "ddim":
        # DEIS has no final_sigmas_type: it ends at alphas_cumprod[0]
        final = cfg.get("final_sigmas_type", "sigma_min" if "DEIS" in str(cfg.get("_class_name")) else "zero")
    return diffusers_grid, {"style": style, "timestep_spacing": cfg.get("timestep_spacing", "linspace"),
                            "steps_offset": int(cfg.get("steps_offset", 0) or 0),
                            "use_karras_sigmas": bool(cfg.get("use_karras_sigmas", False)), "final": final}


# ------------------------------------------------------------------------------------------------
# Sampler
# ------------------------------------------------------------------------------------------------
class UnmatchedScheduler(InvalidArgument):
    """A diffusers scheduler (or setting) that no diffsolve solver reproduces."""


def _dpmsolver_multistep(cfg: Mapping) -> tuple[str, dict]:
    algo, order = cfg.get("algorithm_type", "dpmsolver++"), int(cfg.get("solver_order", 2))
    if algo == "dpmsolver++":
        return {1: "euler", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order], ({"third_order": "reference"} if order == 3 else {})
    if algo == "sde-dpmsolver++" and order == 2:
        return "dpmpp_2m_sde", {"solver_type": cfg.get("solver_type", "midpoint")}
    raise UnmatchedScheduler(f"DPMSolverMultistepScheduler(algorithm_type={algo!r}, solver_order={order}) has no "
                             "diffsolve match (matched: dpmsolver++ orders 1-3, sde-dpmsolver++ order 2)")


def _dpmsolver_singlestep(cfg: Mapping) -> tuple[str, dict]:
    algo, order = cfg.get("algorithm_type", "dpmsolver++"), int(cfg.get("solver_order", 2))
    table = {"dpmsolver++": {1: "euler", 2: "dpmpp_2s", 3: "dpmpp_3s"},
             "dpmsolver": {1: "euler", 2: "dpm_solver_2", 3: "dpm_solver_3"}}
    if algo in table and order in table[algo]:
        return table[algo][order], {}
    raise UnmatchedScheduler(f"DPMSolverSinglestepScheduler(algorithm_type={algo!r}, solver_order={order}) has no "
                             "diffsolve match (matched: dpmsolver++ and dpmsolver, orders 1-3)")


def _ddpm(cfg: Mapping) -> tuple[str, dict]:
    vt = cfg.get("variance_type", "fixed_small")
    if vt == "fixed_small":
        return "ddpm", {}       # the posterior variance: DDIM with eta = 1 (Song et al. 2021, eq. 16)
    raise UnmatchedScheduler(f"DDPMScheduler(variance_type={vt!r}) has no diffsolve match (matched: 'fixed_small', "
                             "which is diffsolve's ancestral 'ddpm')")


def _unipc(cfg: Mapping) -> tuple[str, dict]:
    return ("unipc_bh1" if cfg.get("solver_type", "bh2") == "bh1" else "unipc_bh2"), {}


def _diffsolve(cfg: Mapping) -> tuple[str, dict]:
    return str(cfg.get("solver", "dpmpp_2m")), dict(cfg.get("solver_options") or {})


# diffusers scheduler class -> (diffsolve solver, options): a pair, or a function of the config giving one.
SCHEDULER_SOLVERS: dict[str, Any] = {
    "DDIMScheduler": ("ddim", {}),
    "DDPMScheduler": _ddpm,
    "EulerDiscreteScheduler": ("euler", {}),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", {}),
    "HeunDiscreteScheduler": ("heun", {}),
    "LMSDiscreteScheduler": ("lms", {}),
    "KDPM2DiscreteScheduler": ("dpm_solver_2", {}),
    "DPMSolverMultistepScheduler": _dpmsolver_multistep,
    "DPMSolverSinglestepScheduler": _dpmsolver_singlestep,
    "UniPCMultistepScheduler": _unipc,
    "DEISMultistepScheduler": lambda cfg: ("deis", {"order": int(cfg.get("solver_order", 2))}),
    "IPNDMScheduler": ("ipndm", {}),
    "FlowMatchEulerDiscreteScheduler": ("euler", {}),
    "FlowMatchHeunDiscreteScheduler": ("heun", {}),
    "LCMScheduler": ("consistency", {}),
    "TCDScheduler": ("tcd", {}),
    "DiffsolveScheduler": _diffsolve,
}
# Classes with no diffsolve counterpart, and why (refused with the list of supported classes).
UNMATCHED_SCHEDULERS = {
    "PNDMScheduler": "PNDM's pseudo-numerical warm start has no exact counterpart (solver='ipndm' is the closest)",
    "KDPM2AncestralDiscreteScheduler": "k-diffusion's dpm_2_ancestral is not implemented in diffsolve",
    "DPMSolverSDEScheduler": "k-diffusion's dpmpp_sde (Brownian-tree midpoint SDE) is not implemented in diffsolve",
    "EDMEulerScheduler": "EDM-parameterised diffusers configs are not read by this adapter",
    "EDMDPMSolverMultistepScheduler": "EDM-parameterised diffusers configs are not read by this adapter",
}


def solver_and_options_of(scheduler_or_config: Any) -> tuple[str, dict]:
    """(registered diffsolve solver, options) that do what this diffusers scheduler does; raises
    UnmatchedScheduler, listing the supported classes, for a scheduler without a match. A config with no class
    name (a partial dict) gets the default, dpmpp_2m."""
    cfg = config_of(scheduler_or_config)
    name = str(cfg.get("_class_name", ""))
    if not name:
        return "dpmpp_2m", {}
    entry = SCHEDULER_SOLVERS.get(name)
    if entry is None:
        why = UNMATCHED_SCHEDULERS.get(name, "no diffsolve solver reproduces it")
        raise UnmatchedScheduler(
            f"scheduler {name}: {why}. Supported scheduler classes: {', '.join(SCHEDULER_SOLVERS)}; or keep its path "
            "and timesteps and choose the update yourself: Sampler(unet, scheduler=..., solver='<name>')")
    solver, options = entry(cfg) if callable(entry) else entry
    return solver, dict(options)


def solver_of(scheduler_or_config: Any) -> str:
    """The registered diffsolve solver that does what this diffusers scheduler does (see SCHEDULER_SOLVERS)."""
    return solver_and_options_of(scheduler_or_config)[0]


def solver_options_of(scheduler_or_config: Any) -> dict:
    """Options that make `solver_of`'s solver take the scheduler's exact update (diffusers' 3M halves the x0'' term)."""
    return solver_and_options_of(scheduler_or_config)[1]


class _Unmatched(Solver):
    """Stands in for the solver of an unmatched scheduler: `Sampler(unet, scheduler=X)` raises the mapping's error
    when it looks at the solver, while `Sampler(unet, scheduler=X, solver=...)` never does."""

    name = "unmatched"

    def __init__(self, error: InvalidArgument):
        self.error = error

    @property
    def needs_schedule(self) -> bool:       # the first thing Sampler asks of its solver
        raise self.error

    def plan(self, field: Any, t: Any) -> Any:
        raise self.error


# ------------------------------------------------------------------------------------------------
# Each scheduler's own loop (the default of Sampler(unet, scheduler=...)), where it departs from a clean grid
# ------------------------------------------------------------------------------------------------
LOOPS = ("scheduler", "clean")
# Classes that round the timesteps of karras sigmas before feeding the network (the update keeps the sigma).
_ROUNDS_KARRAS_TIMESTEPS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                            "UniPCMultistepScheduler", "DEISMultistepScheduler")


def _sigma_to_timestep(sigma: float, log_sigmas: np.ndarray) -> float:
    """diffusers' `_sigma_to_t`: linear interpolation in log sigma between training nodes (float32 node sigmas)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = int(np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2).item())
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = float(np.clip((lo - log_sigma) / (lo - hi), 0, 1))
    return (1 - w) * low + w * (low + 1)


class RoundedModelTime(FieldWrapper):
    """The network gets the timestep diffusers feeds it at a noise level between training nodes: its
    `_sigma_to_t` rounded to an integer (DPMSolver*, UniPC and DEIS with karras sigmas). The update still uses
    the exact noise level, as diffusers' does."""

    def __init__(self, field: Any):
        super().__init__(field)
        sch = field.schedule
        node = _node_sigmas(sch.alphas_cumprod)
        self.log_sigmas = np.log(node)

    def evaluate(self, x: torch.Tensor, p: Any, kind: str = "x0", **kwargs: Any):
        if not p.per_sample and p.alpha > 0 and p.sigma > 0:
            mt = float(p.model_time)
            if abs(mt - round(mt)) > 1e-6:
                n = float(round(_sigma_to_timestep(np.float64(p.sigma / p.alpha), self.log_sigmas)))
                p = dataclasses.replace(p, model_time=n)
        return self.inner.evaluate(x, p, kind, **kwargs)

    def own_identity(self) -> str:
        return "rounded_model_time"


def singlestep_orders(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """DPMSolverSinglestepScheduler's order per listed timestep (its set_timesteps and get_order_list)."""
    lower_order_final = lower_order_final or steps % order != 0 or final_zero
    if lower_order_final:
        pattern = list(range(1, order + 1))
        full, rest = divmod(steps, order)
        if rest == 0 and order > 1:
            orders = pattern * (full - 1) + pattern[:-1] + [1]
        else:
            orders = pattern * full + pattern[:rest]
    else:
        orders = list(range(1, order + 1)) * (steps // order)
    if final_zero:
        orders[-1] = 1
    return orders


class SchedulerSinglestep(DPMSolverSinglestep):
    """DPMSolverSinglestepScheduler's own loop: each listed timestep is one model call, and a run of orders
    1, 2, .., k is one singlestep step from its first timestep to the timestep after its last, whose intermediate
    points are the listed timesteps in between (not DPM-Solver's r = 1/2 or 1/3, 2/3), with diffusers' update
    formulas for `algorithm_type` and `solver_type`."""

    def __init__(self, order: int = 2, algorithm_type: str = "dpmsolver++", solver_type: str = "midpoint",
                 lower_order_final: bool = False):
        check_choice("algorithm_type", algorithm_type, ("dpmsolver++", "dpmsolver"))
        check_choice("solver_type", solver_type, ("midpoint", "heun"))
        super().__init__(order if order > 1 else 2, "data" if algorithm_type == "dpmsolver++" else "noise")
        self.scheduler_order = int(order)
        self.algorithm_type, self.solver_type = algorithm_type, solver_type
        self.lower_order_final = bool(lower_order_final)
        self.name = f"scheduler_singlestep_{self.scheduler_order}"
        self.calls_per_step = 1

    def model_calls(self, steps: int, field: Any, ends_at_zero: bool) -> int:
        return steps        # one call per listed timestep, grouped into singlestep steps in plan()

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        self.check_field(field)
        pts = self.grid_points(field, t)
        n = len(pts) - 1
        orders = singlestep_orders(n, self.scheduler_order, self.lower_order_final, float(t[-1]) == 0.0)
        starts = [i for i, o in enumerate(orders) if o == 1] + [n]
        coeffs, bounds = [], []
        for a, b in zip(starts[:-1], starts[1:]):
            coeffs.append(self._group(pts[a:b + 1]))
            bounds.append(a)
        bounds.append(n)
        return Plan(t=t[bounds], points=tuple(pts[i] for i in bounds), coeffs=tuple(coeffs), nfe=n)

    def _group(self, pts: Sequence[Any]) -> Any:
        """The stages and final update of one group: points P0 (start), P1..P(k-1) (model calls), Pk (target)."""
        from diffsolve.solvers.dpm_solver import SinglestepCoefficients, lambda_of
        from diffsolve.solvers.euler import ddim_coefficients
        k = len(pts) - 1
        basis = np.eye(k + 1)
        states = [basis[0]]

        def output(j: int) -> np.ndarray:      # diffusers' converted model output at P_j, as a basis vector
            if self.algorithm_type == "dpmsolver++":
                return basis[1 + j]
            return (states[j] - pts[j].alpha * basis[1 + j]) / pts[j].sigma

        for j in range(1, k + 1):
            q = pts[j]
            if j == 1:
                a, b = ddim_coefficients(pts[0], q)
                states.append(a * basis[0] + b * basis[1])
                continue
            s0, lt = pts[0], lambda_of(q)
            h = lt - lambda_of(s0)
            ms = [output(i) for i in range(j)]
            rs = [(lambda_of(pts[i]) - lambda_of(s0)) / h for i in range(1, j)]
            if self.algorithm_type == "dpmsolver++":
                lin, phi = (q.sigma / s0.sigma) * basis[0], math.expm1(-h)
                first, second = -q.alpha * phi, q.alpha * (phi / h + 1.0)
                third = -q.alpha * ((phi + h) / h ** 2 - 0.5)
                half = -0.5 * q.alpha * phi
            else:
                lin, phi = (q.alpha / s0.alpha) * basis[0], math.expm1(h)
                first, second = -q.sigma * phi, -q.sigma * (phi / h - 1.0)
                third = -q.sigma * ((phi - h) / h ** 2 - 0.5)
                half = -0.5 * q.sigma * phi
            if j == 2:
                d1 = (ms[1] - ms[0]) / rs[0]
                x = lin + first * ms[0] + (half if self.solver_type == "midpoint" else second) * d1
            else:
                r1, r0 = rs[0], rs[1]
                d1_0, d1_1 = (ms[1] - ms[0]) / r1, (ms[2] - ms[0]) / r0
                if self.solver_type == "midpoint":
                    x = lin + first * ms[0] + second * d1_1
                else:
                    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
                    x = lin + first * ms[0] + second * d1 + third * d2
            states.append(x)
        stages = tuple(tuple(float(v) for v in u[: i + 2]) for i, u in enumerate(states[1:-1]))
        return SinglestepCoefficients(tuple(pts[1:-1]), stages, tuple(float(v) for v in states[-1]))

    def options(self) -> dict:
        return {"order": self.scheduler_order, "algorithm_type": self.algorithm_type,
                "solver_type": self.solver_type, "lower_order_final": self.lower_order_final}


class DDIMStepTargets(Solver):
    """DDIMScheduler's loop: each step goes from its listed timestep n to n - T // steps, and the next step starts
    at the next listed timestep as if the state were there. With 'linspace' spacing the two differ (999 steps to
    899 but the next call is at 888), and with 'trailing' whenever T / steps is not an integer (6 steps: 999 to
    833, next call at 832); `loop="clean"` steps to the next listed timestep instead."""

    def __init__(self, inner: Solver, num_train_timesteps: int, final_t: float):
        if not hasattr(type(inner), "coefficients") or type(inner).coefficients is Solver.coefficients:
            raise InvalidArgument(f"solver {inner.name!r} plans whole grids; DDIM's step targets need a single-step "
                                  "solver (ddim, euler, ddim_eta, ddpm, euler_ancestral) or loop='clean'")
        self.inner, self.T, self.final_t = inner, int(num_train_timesteps), float(final_t)
        self.name, self.order, self.calls_per_step = inner.name, inner.order, inner.calls_per_step

    @property
    def deterministic(self) -> bool:   # type: ignore[override]
        return self.inner.deterministic

    def plan(self, field: Any, t: torch.Tensor) -> Plan:
        self.inner.check_field(field)
        pts = self.inner.grid_points(field, t)
        steps = len(pts) - 1
        sch = field.schedule
        coeffs = []
        for i in range(steps):
            n = float(sch.timestep_index(torch.tensor(pts[i].t)))
            target = round(n) - self.T // steps
            q = field.at(float(sch.t_from_index(torch.tensor(float(target)))) if target >= 0 else self.final_t)
            coeffs.append(self.inner.coefficients(field, pts[i], q))
        return Plan(t=t, points=pts, coeffs=tuple(coeffs), nfe=self.inner.count_calls(tuple(coeffs), field, pts))

    def init(self, plan: Plan) -> Any:
        return self.inner.init(plan)

    def step(self, ev: Any, x: torch.Tensor, t0: Any, t1: Any, state: Any, coeffs: Any):
        return self.inner.step(ev, x, t0, t1, state, coeffs)

    def model_calls(self, steps: int, field: Any, ends_at_zero: bool) -> int:
        return self.inner.model_calls(steps, field, ends_at_zero)


def _scheduler_loop(cfg: Mapping, field: VectorField, solver: Any, options: dict, loop: str):
    """(field, solver) reproducing the scheduler's own loop where it departs from a clean grid."""
    check_choice("loop", loop, LOOPS)
    name = str(cfg.get("_class_name", ""))
    if loop == "clean" or not isinstance(field.schedule, VPDiscrete):
        return field, solver
    if name in _ROUNDS_KARRAS_TIMESTEPS and cfg.get("use_karras_sigmas", False) and \
            cfg.get("beta_schedule", "linear") != "squaredcos_cap_v2":
        field = RoundedModelTime(field)
    if name == "DDIMScheduler":      # every spacing: with trailing, T / steps need not be an integer either
        inner = solver if isinstance(solver, Solver) else get_solver(solver, **options)
        if hasattr(type(inner), "coefficients") and type(inner).coefficients is not Solver.coefficients:
            final_t = 0.0 if cfg.get("set_alpha_to_one", True) else float(field.schedule.t_from_index(
                torch.tensor(0.0)))
            return field, DDIMStepTargets(inner, int(cfg.get("num_train_timesteps", 1000)), final_t)
    return field, solver


def sampler_parts(model: Callable[..., Any], scheduler: Any, *, prediction: str | None = None,
                  sample_shape: Sequence[int] | None = None, timestep_scale: float = 1.0,
                  loop: str = "scheduler", solver: Any = None) -> "SamplerParts | None":
    """What `Sampler(model, scheduler=...)` needs from a diffusers scheduler (or its config): the field, the
    matching solver and its options, and the grid that reproduces the scheduler's timesteps. None when
    `scheduler` is not a diffusers scheduler or config.

    `loop="scheduler"` (the default) reproduces the scheduler's own loop where it departs from a clean grid:
    DDIM with 'linspace' spacing steps to t - T // steps (not to the next listed timestep), and DPMSolver*,
    UniPC and DEIS feed the network rounded timesteps on karras sigmas. `loop="clean"` steps grid point to grid
    point with the exact model time. `solver=` picks the update (the scheduler's path and timesteps kept)."""
    from diffsolve.sampler import SamplerParts
    try:
        config_of(scheduler)
    except InvalidArgument:
        return None
    field = from_diffusers(model, scheduler, prediction=prediction, sample_shape=sample_shape,
                           timestep_scale=timestep_scale)
    cfg = config_of(scheduler)
    if str(cfg.get("_class_name", "")) == "LCMScheduler":
        field = LCMBoundary(field, float(cfg.get("timestep_scaling", 10.0)))    # part of the model, in every loop
    grid, grid_options = grid_options_of(scheduler)
    options: dict = {}
    if solver is None:
        try:
            solver, options = solver_and_options_of(scheduler)
        except UnmatchedScheduler as e:
            return SamplerParts(field, _Unmatched(e), {}, grid, grid_options)
        if loop == "scheduler" and cfg.get("_class_name") == "TCDScheduler":
            solver, options = TCDSteps(), {}
        if loop == "scheduler" and cfg.get("_class_name") == "DPMSolverSinglestepScheduler":
            solver, options = SchedulerSinglestep(int(cfg.get("solver_order", 2)),
                                                  cfg.get("algorithm_type", "dpmsolver++"),
                                                  cfg.get("solver_type", "midpoint"),
                                                  bool(cfg.get("lower_order_final", False))), {}
    field, solver = _scheduler_loop(config_of(scheduler), field, solver, options, loop)
    if isinstance(solver, DDIMStepTargets):
        options = {}
    return SamplerParts(field, solver, options, grid, grid_options)


def sampler_from_diffusers(model: Callable[..., Any], scheduler: Any, solver: Any = None, *, grid: Any = None,
                           grid_options: Mapping[str, Any] | None = None, prediction: str | None = None,
                           sample_shape: Sequence[int] | None = None, timestep_scale: float = 1.0,
                           loop: str = "scheduler", **sampler_kwargs: Any):
    """`Sampler` for a diffusers network + scheduler: same path, prediction and (by default) the same timesteps.

    `solver=None` picks the diffsolve solver matching the scheduler class (`solver_of`).
    """
    from diffsolve.sampler import Sampler
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
    if isinstance(parts.solver, _Unmatched):
        raise parts.solver.error
    solver = parts.solver
    if not isinstance(solver, Solver):
        sampler_kwargs = {**parts.solver_options, **solver_options, **sampler_kwargs}
    return Sampler(parts.field, solver, grid, grid_options=opts, **sampler_kwargs)


__all__ = ["DiffusersModel", "from_diffusers", "schedule_from_diffusers", "prediction_of", "alphas_cumprod_of",
           "diffusers_grid", "flow_grid", "shift_sigmas", "grid_from_scheduler", "grid_options_of",
           "times_from_timesteps", "discrete_timesteps", "noise_scale_of", "sampler_from_diffusers", "sampler_parts", "solver_of", "solver_options_of", "config_of",
           "SCHEDULER_SOLVERS", "UNMATCHED_SCHEDULERS", "UnmatchedScheduler", "solver_and_options_of",
           "infer_class_name"]


def _register() -> None:
    from diffsolve.sampler import register_scheduler_adapter
    register_scheduler_adapter(sampler_parts)


_register()


def __getattr__(name: str) -> Any:
    # The outbound scheduler needs the diffusers library: built on first access, so this module stays importable.
    if name in ("DiffsolveScheduler", "SchedulerRun", "supported_solvers"):
        from diffsolve.pretrained_adapters.diffusers import scheduler as diffusers_scheduler
        return getattr(diffusers_scheduler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
