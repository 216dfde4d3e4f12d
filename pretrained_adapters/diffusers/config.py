"""diffusers scheduler configs read as plain data: the config dict, its scheduler class, its prediction type and
its Gaussian path (betas -> alphas_cumprod -> `VPDiscrete`, or flow matching -> `RectifiedFlow`).

The diffusers library is imported only to name the class of a config that does not say it (`infer_class_name`).
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Mapping

import numpy as np
import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.schedules import NoiseSchedule, RectifiedFlow, VPDiscrete

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v", "flow_prediction": "velocity"}
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


def config_of(scheduler_or_config: Any) -> dict:
    """A plain dict from a diffusers scheduler, its `.config` (FrozenDict) or a config dict (JSON as loaded).

    A config without `_class_name` gets the scheduler object's class name, or the class `infer_class_name` finds.

    Args:
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.

    Returns:
        A new dict of the config.

    Raises:
        InvalidArgument: neither the object nor its `.config` is a mapping.
    """
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
    the scheduler object, or a config with `_class_name`, to name the class for sure.

    Args:
        cfg: the config (keys starting with "_" are ignored).

    Returns:
        The class name, or None.
    """
    keys = frozenset(k for k in cfg if not str(k).startswith("_"))
    return _class_of_signature().get(keys) if keys else None


def is_flow_config(cfg: Mapping) -> bool:
    """Flow matching (FlowMatch* schedulers, or a multistep solver with use_flow_sigmas).

    Args:
        cfg: the config (`_class_name`, `use_flow_sigmas`, `prediction_type`).

    Returns:
        True for a flow-matching config.
    """
    name = str(cfg.get("_class_name", ""))
    return name.startswith("FlowMatch") or bool(cfg.get("use_flow_sigmas", False)) or \
        cfg.get("prediction_type") == "flow_prediction"


def prediction_of(cfg: Mapping) -> str:
    """diffsolve's prediction name for the config's prediction_type (flow matching: velocity).

    Args:
        cfg: the config; a missing `prediction_type` is "epsilon".

    Returns:
        "eps", "x0", "v" or "velocity" (see PREDICTION_TYPES).

    Raises:
        InvalidArgument: the prediction_type is not one of PREDICTION_TYPES.
    """
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
    """The float32 betas a diffusers scheduler builds from this config (same arithmetic, same rounding).

    Args:
        cfg: the config: `trained_betas`, or `beta_schedule` ("linear", "scaled_linear", "squaredcos_cap_v2",
            "sigmoid") with `num_train_timesteps` (default 1000), `beta_start` (1e-4) and `beta_end` (0.02).

    Returns:
        The betas, a float32 tensor of num_train_timesteps values.

    Raises:
        InvalidArgument: `beta_schedule` is not one of the four.
    """
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


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Alg. 1, as diffusers applies it.

    Args:
        betas: the betas to rescale.

    Returns:
        The betas rescaled so that the last alphas_cumprod is zero (zero terminal SNR).
    """
    ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    a0, aT = ab[0].clone(), ab[-1].clone()
    ab = (ab - aT) * (a0 / (a0 - aT))
    ab2 = ab ** 2
    alphas = torch.cat([ab2[0:1], ab2[1:] / ab2[:-1]])
    return 1 - alphas


def alphas_cumprod_of(scheduler_or_config: Any) -> torch.Tensor:
    """alphas_cumprod as float64 holding diffusers' float32 values (the scheduler's own tensor when given one).

    Args:
        scheduler_or_config: a diffusers scheduler (its `alphas_cumprod` used as is), its config or a config
            mapping (betas built by `betas_of`, rescaled when `rescale_betas_zero_snr`, with the last value 2^-24).

    Returns:
        A float64 tensor on the CPU.

    Raises:
        InvalidArgument: not a diffusers scheduler or config, or an unknown `beta_schedule`.
    """
    ac = getattr(scheduler_or_config, "alphas_cumprod", None)
    if isinstance(ac, torch.Tensor):
        return ac.detach().to("cpu", torch.float64)
    cfg = config_of(scheduler_or_config)
    betas = betas_of(cfg)
    if cfg.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    ac = torch.cumprod(1.0 - betas, dim=0)
    if cfg.get("rescale_betas_zero_snr", False):
        ac[-1] = 2.0 ** -24      # diffusers' stand-in for zero terminal SNR, so that the first sigma is finite
    return ac.to(torch.float64)


def _decreasing_tail(ac: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod made strictly decreasing at its end.

    With zero terminal SNR diffusers replaces the last value by 2^-24, and a linear beta schedule has a few
    values just before it below that stand-in: there diffusers' noise level rises again above its first
    sigma. Those few nodes are raised just above the next one (they are listed only beyond ~250 steps)."""
    ac = ac.clone()
    for i in range(ac.numel() - 2, -1, -1):
        if float(ac[i]) > float(ac[i + 1]):
            break
        ac[i] = ac[i + 1] * (1.0 + 2.0 ** -10)
    return ac


def schedule_from_diffusers(scheduler_or_config: Any) -> NoiseSchedule:
    """VPDiscrete (model time = integer timestep n, alpha^2 = alphas_cumprod[n]) or RectifiedFlow (model time 1000 t).

    Args:
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.

    Returns:
        The NoiseSchedule of the config's Gaussian path.

    Raises:
        InvalidArgument: not a diffusers scheduler or config, or an unknown `beta_schedule`.
    """
    cfg = config_of(scheduler_or_config)
    if is_flow_config(cfg):
        n = int(cfg.get("num_train_timesteps", 1000))
        return RectifiedFlow(model_time_scale=float(n), t_min=min(1e-4, 0.5 / n))
    return VPDiscrete(alphas_cumprod=_decreasing_tail(alphas_cumprod_of(scheduler_or_config)), model_time_scale=1.0)


# DiffsolveScheduler's own config keys: they are not part of the config of the class it was written for
DIFFSOLVE_KEYS = ("solver", "solver_options", "source_class", "grid", "grid_options", "seed", "base_shift", "max_shift",
                  "base_image_seq_len", "max_image_seq_len", "invert_sigmas", "stochastic_sampling", "time_shift_type")


@functools.lru_cache(maxsize=None)
def _defaults_of_class(name: str) -> dict:
    """The default arguments of a diffusers scheduler class (empty without diffusers or for an unknown name)."""
    try:
        import diffusers
    except ImportError:
        return {}
    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type):
        return {}
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def used_defaults(cfg: Mapping) -> list:
    """The config's `_use_default_values` less the keys whose value is no longer its class's default: a pipeline
    that fixes an outdated config after construction (Stable Diffusion sets steps_offset=1, clip_sample=False)
    changes the value and leaves the key listed, so diffusers' from_config would bring the default back."""
    listed = list(cfg.get("_use_default_values") or ())
    defaults = _defaults_of_class(str(config_of(cfg).get("_class_name", "")))

    def unchanged(k: str) -> bool:
        if k not in defaults or k not in cfg:
            return True
        try:
            return bool(cfg[k] == defaults[k])
        except (TypeError, ValueError, RuntimeError):     # arrays and tensors: not a plain default
            return False

    return [k for k in listed if unchanged(k)]


def source_config_of(cfg: Mapping) -> dict:
    """For a DiffsolveScheduler config, the config of the scheduler class it was written for (`source_class`,
    by default DPMSolverMultistepScheduler), which fixes its path and timesteps; other configs as they are.

    A key the config left at its default (`_use_default_values`, as diffusers records it) takes the source
    class's default: a DDPM config's unset timestep_spacing is DDPM's 'leading'.

    Args:
        cfg: the config.

    Returns:
        A new dict: the source class's config (DIFFSOLVE_KEYS dropped, `_class_name` the source class), or a copy.
    """
    if cfg.get("_class_name") != "DiffsolveScheduler":
        return dict(cfg)
    source = cfg.get("source_class") or "DPMSolverMultistepScheduler"
    out = {k: v for k, v in cfg.items() if not str(k).startswith("_") and k not in DIFFSOLVE_KEYS}
    defaults = _defaults_of_class(source)
    out.update({k: defaults[k] for k in (cfg.get("_use_default_values") or ()) if k in defaults and k in out})
    out["_class_name"] = source
    if out.get("final_sigmas_type") is None:
        out.pop("final_sigmas_type", None)
    return out


def style_of(cfg: Mapping, style: str | None = None) -> str:
    """The timestep formula (`STYLES`) of the config's scheduler class, or `style` checked when given.

    Args:
        cfg: the config (its `_class_name`); an unlisted class is "flow" for flow configs, else "dpmsolver".
        style: a style to use instead; None: the class's.

    Returns:
        One of STYLES.

    Raises:
        InvalidArgument: `style` is not one of STYLES.
    """
    if style is None:
        style = _STYLE_OF_CLASS.get(str(cfg.get("_class_name", "")), "flow" if is_flow_config(cfg) else "dpmsolver")
    check_choice("style", style, STYLES)
    return style


__all__ = ["PREDICTION_TYPES", "STYLES", "config_of", "infer_class_name", "is_flow_config", "prediction_of",
           "betas_of", "rescale_zero_terminal_snr", "alphas_cumprod_of", "schedule_from_diffusers", "style_of", "DIFFSOLVE_KEYS", "source_config_of",
           "used_defaults"]
