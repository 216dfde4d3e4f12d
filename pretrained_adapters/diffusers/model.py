"""diffusers networks (UNets, transformers) as diffsolve fields: `from_diffusers(unet, scheduler)` pairs the
network with its scheduler config's path and prediction type."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField
from diffsolve.pretrained_adapters.diffusers.config import config_of, prediction_of, schedule_from_diffusers


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


__all__ = ["DiffusersModel", "sample_shape_of", "from_diffusers"]
