"""k-diffusion and EDM denoisers as diffsolve fields (inbound).

`from_k_diffusion(model)` (also `VectorField.from_k_diffusion`, and what `Sampler(model)` detects) reads a
k-diffusion denoiser wrapper (`sigma_min`/`sigma_max` or a `sigmas` buffer: `DiscreteEpsDDPMDenoiser`,
`CompVisDenoiser`, `VDenoiser`, ...) or an EDM / EDM2 preconditioned network (`net(x, sigma, class_labels)` with
`label_dim`, as NVlabs' `EDMPrecond` / EDM2 `Precond`) as a `VectorField` on the EDM path (alpha = 1, sigma = t).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField, model_spec_of, register_model_adapter
from diffsolve.schedules import EDMSchedule


class Denoiser(torch.nn.Module):
    """`model(x, sigma, **kw)` as a module (so the field finds its dtype and device).

    Args:
        model: the denoiser, `model(x, sigma, **kw)` -> the denoised sample.
    """

    def __init__(self, model: Callable[..., Any]):
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> Any:
        """The wrapped denoiser at `x` and noise level `sigma`, `**kwargs` passed on.

        Returns:
            Whatever the wrapped model returns (the denoised sample).
        """
        return self.inner(x, sigma, **kwargs)


# ------------------------------------------------------------------------------------------------
# Inbound: k-diffusion denoiser wrappers and EDM preconditioned networks
# ------------------------------------------------------------------------------------------------
def _float(v: Any) -> float:
    return float(v.detach().float().cpu()) if isinstance(v, torch.Tensor) else float(v)


def is_k_diffusion_denoiser(model: Any) -> bool:
    """A k-diffusion denoiser wrapper: `sigma_min` and `sigma_max`, or a `sigmas` tensor, and a callable.

    Args:
        model: the object to test (one that declares a diffsolve model spec is not one).

    Returns:
        True for a k-diffusion denoiser wrapper.
    """
    if not callable(model) or model_spec_of(model) is not None:
        return False
    has_range = hasattr(model, "sigma_min") and hasattr(model, "sigma_max")
    return has_range or isinstance(getattr(model, "sigmas", None), torch.Tensor)


def is_edm_network(model: Any) -> bool:
    """An NVlabs EDM / EDM2 preconditioned network: `net(x, sigma, class_labels)` with label_dim and img_resolution.

    Args:
        model: the object to test (callable, with `label_dim` and `img_resolution` or `sigma_data`, no diffsolve spec).

    Returns:
        True for such a network.
    """
    return (callable(model) and model_spec_of(model) is None and hasattr(model, "label_dim")
            and (hasattr(model, "img_resolution") or hasattr(model, "sigma_data")))


class EDMNetwork(torch.nn.Module):
    """`net(x, sigma, class_labels)` as `model(x, sigma, class_labels=None, **kw)`: class labels by keyword, or
    none for an unconditional net (label_dim = 0); an integer label tensor is one-hot encoded to label_dim.

    Args:
        net: the EDM / EDM2 preconditioned network (its `label_dim`, 0 when missing).
    """

    def __init__(self, net: Callable[..., Any]):
        super().__init__()
        self.net = net
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Any = None, **kwargs: Any):
        """The network's denoised sample at `x` and noise level `sigma`.

        Args:
            x: the state, batch first.
            sigma: the noise level per sample.
            class_labels: one-hot [batch, label_dim] or integer labels (one-hot encoded here); None: unconditional.
            **kwargs: passed to the network.

        Returns:
            (Tensor): the network's output (the first item of a tuple or list).

        Raises:
            InvalidArgument: the network is class-conditional and `class_labels` is None.
        """
        if class_labels is not None and self.label_dim and not torch.is_floating_point(class_labels):
            class_labels = torch.nn.functional.one_hot(class_labels.long(), self.label_dim).to(x.dtype)
        if self.label_dim and class_labels is None:
            raise InvalidArgument(f"this EDM network is class-conditional (label_dim={self.label_dim}); pass "
                                  "class_labels= (one-hot [batch, label_dim] or integer labels) to run()")
        out = self.net(x, sigma, class_labels, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def edm_sigma_range(model: Any, default: tuple[float, float] = (0.002, 80.0)) -> tuple[float, float]:
    """(sigma_min, sigma_max): the model's, clipped to EDM's sampling range when it says 0 / inf (EDMPrecond).

    Args:
        model: the denoiser wrapper or network (its `sigma_min`/`sigma_max`, or the ends of its `sigmas` buffer).
        default: the range used where the model has none, or says 0 / inf (default EDM's (0.002, 80)).

    Returns:
        The two noise levels as floats.
    """
    sigmas = getattr(model, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and not (hasattr(model, "sigma_min") and hasattr(model, "sigma_max")):
        return _float(sigmas.min()), _float(sigmas.max())
    lo = _float(getattr(model, "sigma_min", default[0]))
    hi = _float(getattr(model, "sigma_max", default[1]))
    lo = lo if lo > 0 else default[0]
    hi = hi if math.isfinite(hi) else default[1]
    return lo, hi


def from_k_diffusion(model: Any, *, sigma_min: float | None = None, sigma_max: float | None = None,
                     sample_shape: tuple[int, ...] | None = None,
                     model_kwargs: Mapping[str, Any] | None = None) -> VectorField:
    """The VectorField of a k-diffusion denoiser wrapper or an EDM preconditioned network (EDM path, alpha = 1).

    The network gets `(x, sigma)` in the EDM frame and returns the denoised sample; initial noise is scaled
    by sigma_max (diffsolve's `Sampler.run` does that itself from unit noise). The default grid is karras.

    Args:
        model: the k-diffusion denoiser wrapper or EDM network.
        sigma_min: the smallest noise level; None: the model's (`edm_sigma_range`).
        sigma_max: the largest noise level; None: the model's.
        sample_shape: the shape of one sample; None: (img_channels, img_resolution, img_resolution) when the model
            has them.
        model_kwargs: keyword arguments every network call gets.

    Returns:
        The VectorField (prediction "denoiser", an EDMSchedule).

    Raises:
        InvalidArgument: `model` is not callable, or the sigma range is invalid.
    """
    if not callable(model):
        raise InvalidArgument(f"model must be callable, got {type(model).__name__}")
    lo, hi = edm_sigma_range(model)
    lo = lo if sigma_min is None else float(sigma_min)
    hi = hi if sigma_max is None else float(sigma_max)
    net = EDMNetwork(model) if is_edm_network(model) else Denoiser(model)
    if sample_shape is None and hasattr(model, "img_resolution") and hasattr(model, "img_channels"):
        r = int(model.img_resolution)
        sample_shape = (int(model.img_channels), r, r)
    return VectorField(net, prediction="denoiser", schedule=EDMSchedule(sigma_min=lo, sigma_max=hi),
                       sample_shape=sample_shape, model_kwargs=model_kwargs)


def detect(model: Any, **given: Any):
    """The model adapter `Sampler(model)` consults: a field for k-diffusion denoisers and EDM networks, else None.

    Args:
        model: the model given to the Sampler.
        **given: the Sampler's description of it (`prediction`, `schedule`, `sample_shape`); a given prediction or
            schedule means the model is not read as a denoiser.

    Returns:
        (VectorField | None): the field, or None when this adapter does not apply.
    """
    if given.get("prediction") is not None or given.get("schedule") is not None:
        return None
    if is_edm_network(model) or is_k_diffusion_denoiser(model):
        return from_k_diffusion(model, sample_shape=given.get("sample_shape"))
    return None


def _register() -> None:
    register_model_adapter(detect)
    if not hasattr(VectorField, "from_k_diffusion"):
        # `VectorField.from_k_diffusion(model)`: the adapter's function, attached here (field.py never imports it)
        VectorField.from_k_diffusion = staticmethod(from_k_diffusion)


_register()

__all__ = ["Denoiser", "from_k_diffusion", "is_k_diffusion_denoiser", "is_edm_network", "EDMNetwork",
           "edm_sigma_range", "detect"]
