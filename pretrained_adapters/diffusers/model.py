"""diffusers networks (UNets, transformers) as diffsolve fields: `from_diffusers(unet, scheduler)` pairs the
network with its scheduler config's path and prediction type."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_float
from diffsolve.field import FieldOutput, FieldWrapper, VectorField, velocity_from_x0
from diffsolve.pretrained_adapters.diffusers.config import (
    config_of, is_flow_config, prediction_of, schedule_from_diffusers)


class DiffusersModel(torch.nn.Module):
    """`model(x, t, **kw)` for a diffusers network: timestep passed by keyword when it has one, `.sample` unwrapped.

    Args:
        model: the diffusers network (UNet, transformer) or any callable `model(x, t, **kw)`.
        timestep_scale: multiplies the time first (default 1.0: unchanged; Flux-style transformers take
            timestep / 1000).

    Raises:
        InvalidArgument: `model` is not callable.
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
        """Call the network on `x` at time `t`.

        Args:
            x: the network's input, batch first.
            t: the model time (scaled by `timestep_scale` first), passed as `timestep=` when the network takes it.
            **kwargs: passed to the network (e.g. `encoder_hidden_states`, `class_labels`).

        Returns:
            The network's output tensor: its `.sample`, or the first item of a tuple or list, or the output itself.
        """
        if self.timestep_scale != 1.0:
            t = t * self.timestep_scale
        out = self.inner(x, timestep=t, **kwargs) if self._by_keyword else self.inner(x, t, **kwargs)
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


def sample_shape_of(model: Any) -> tuple[int, ...] | None:
    """(channels, size, size) from a diffusers UNet/transformer config, when it says so.

    Args:
        model: a diffusers network (its `config`, a mapping or an object, gives `in_channels` and `sample_size`).

    Returns:
        The shape of one sample, or None when the model has no config or the config lacks either entry.
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    ch = cfg.get("in_channels") if isinstance(cfg, Mapping) else getattr(cfg, "in_channels", None)
    size = cfg.get("sample_size") if isinstance(cfg, Mapping) else getattr(cfg, "sample_size", None)
    if ch is None or size is None:
        return None
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(ch), *map(int, size))


def threshold_sample(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen) as diffusers applies it: per sample, s = the `ratio`
    quantile of |x0| clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s.

    Args:
        x0: the data prediction, batch first.
        ratio: the quantile of |x0| (diffusers' `dynamic_thresholding_ratio`), in [0, 1].
        max_value: the largest threshold s (diffusers' `sample_max_value`).

    Returns:
        The thresholded prediction, in x0's dtype and shape.
    """
    dtype, shape = x0.dtype, x0.shape
    flat = x0.reshape(shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()        # quantile needs a float32/64 input
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


class DynamicThresholding(FieldWrapper):
    """A config with thresholding=True: every data prediction the solver forms is thresholded (`threshold_sample`);
    a solver that asks for the velocity gets the one of the thresholded prediction, as diffusers' noise-prediction
    algorithms re-derive their noise from the thresholded data prediction.

    Args:
        field: the field to wrap.
        ratio: the config's `dynamic_thresholding_ratio` (default 0.995), a quantile in [0, 1].
        max_value: the config's `sample_max_value` (default 1.0), positive.

    Raises:
        InvalidArgument: `ratio` is not a number in [0, 1], or `max_value` is not a positive number.
    """

    def __init__(self, field: Any, ratio: float = 0.995, max_value: float = 1.0):
        super().__init__(field)
        self.ratio = check_float("dynamic_thresholding_ratio", ratio)
        if not 0 <= self.ratio <= 1:
            raise InvalidArgument(f"dynamic_thresholding_ratio={ratio!r}: must be in [0, 1] (a quantile)")
        self.max_value = check_float("sample_max_value", max_value, positive=True)

    def evaluate(self, x: torch.Tensor, p: Any, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner field's thresholded data prediction at state `x` and point `p`.

        Args:
            x: the state, batch first.
            p: the evaluation point.
            kind: "x0" for the thresholded data prediction, else the velocity computed from it.
            **kwargs: passed to the inner field (and on to the network).

        Returns:
            A FieldOutput with the value and the inner output's aux.
        """
        out = self.inner.evaluate(x, p, "x0", **kwargs)
        x0 = threshold_sample(out.value, self.ratio, self.max_value)
        return FieldOutput(x0 if kind == "x0" else velocity_from_x0(x, x0, p.path_for(x)), out.aux)

    def own_identity(self) -> str:
        """The identity string of this wrapper: its ratio and max value, for caches."""
        return f"dynamic_thresholding(ratio={self.ratio!r}, max={self.max_value!r})"


def from_diffusers(model: Callable[..., Any], scheduler_or_config: Any, *, prediction: str | None = None,
                   sample_shape: Sequence[int] | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   timestep_scale: float = 1.0) -> VectorField:
    """The VectorField of a diffusers network under its scheduler config (schedule, prediction type, model time).

    `clip_sample=True` clips the data prediction to +-`clip_sample_range`; `thresholding=True` wraps the field in
    DynamicThresholding instead (diffusers thresholds instead of clipping when both are set).

    Args:
        model: the diffusers network (or a callable `model(x, t, **kw)`).
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.
        prediction: the network's prediction type; None: the config's `prediction_type`.
        sample_shape: the shape of one sample (no batch); None: read from the network's config.
        model_kwargs: keyword arguments every network call gets.
        timestep_scale: multiplies the time the network gets (default 1.0; see DiffusersModel).

    Returns:
        The VectorField (a DynamicThresholding wrapper when the config thresholds).

    Raises:
        InvalidArgument: the config is not a diffusers config, thresholding is asked of a flow-matching config, or a
            setting does not fit.
    """
    cfg = config_of(scheduler_or_config)
    shape = tuple(sample_shape) if sample_shape is not None else sample_shape_of(model)
    if cfg.get("thresholding", False) and is_flow_config(cfg):
        raise InvalidArgument("thresholding=True (dynamic thresholding of the data prediction) applies to "
                              "diffusion configs; diffusers' flow-matching schedulers do not threshold either")
    clip = None
    if cfg.get("clip_sample", False) and not cfg.get("thresholding", False):   # diffusers: thresholding wins
        r = float(cfg.get("clip_sample_range", 1.0))
        clip = (-r, r)
    field = VectorField(DiffusersModel(model, timestep_scale), prediction=prediction or prediction_of(cfg),
                        schedule=schedule_from_diffusers(scheduler_or_config), sample_shape=shape,
                        model_kwargs=model_kwargs, clip_x0=clip)
    if cfg.get("thresholding", False):
        # diffusers thresholds instead of clipping when both are set
        field = DynamicThresholding(field, cfg.get("dynamic_thresholding_ratio", 0.995),
                                    cfg.get("sample_max_value", 1.0))
    return field


__all__ = ["DiffusersModel", "sample_shape_of", "from_diffusers", "threshold_sample", "DynamicThresholding"]
