"""JAX / Flax networks as diffsolve fields, through DLPack (jax stays optional: `pip install diffsolve[jax]`).

`from_jax(fn, prediction=..., schedule=...)` wraps `fn(x, t, **kw) -> array` (or a Flax module with `params=`,
called as `module.apply(params, x, t, **kw)`) so that diffsolve calls it with torch tensors: inputs go to JAX and
outputs come back through DLPack, without copies where the two share a device. The JAX function is jit-compiled
once (`jit=False` to skip). Sampling does not differentiate through a JAX network (no torch autograd across
the boundary). `Sampler(jax_fn, prediction=..., schedule=...)` detects a jitted function or a Flax module too.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField, register_model_adapter


def _jax():
    try:
        import jax
    except ImportError as e:
        raise InvalidArgument("JAX models need the jax package: pip install 'diffsolve[jax]'") from e
    return jax


def to_jax(value: Any) -> Any:
    """A torch tensor as a JAX array (DLPack); other values unchanged.

    Args:
        value: a torch tensor (detached and made contiguous first) or any other value.

    Returns:
        The JAX array, or `value` itself.

    Raises:
        InvalidArgument: a tensor is given and jax is not installed.
    """
    if isinstance(value, torch.Tensor):
        jax = _jax()
        return jax.dlpack.from_dlpack(value.detach().contiguous())
    return value


def to_torch(value: Any) -> torch.Tensor:
    """A JAX array as a torch tensor (DLPack).

    Args:
        value: the JAX array.

    Returns:
        The torch tensor sharing its memory where the device allows.
    """
    return torch.from_dlpack(value)


class JaxModel:
    """`model(x, t, **kw)` on torch tensors for a JAX function or a Flax module (with its params).

    Args:
        fn: a JAX function `fn(x, t, **kw) -> array`, or a Flax module (called as `fn.apply(params, x, t, **kw)`).
        params: the parameters; with a plain function it is called as `fn(params, x, t, **kw)`. None: `fn` alone.
        jit: jit-compile the call once (default True).

    Raises:
        InvalidArgument: jax is not installed, or `fn` is neither callable nor has `apply`.
    """

    def __init__(self, fn: Callable[..., Any], params: Any = None, *, jit: bool = True):
        jax = _jax()
        if not callable(fn) and not hasattr(fn, "apply"):
            raise InvalidArgument(f"fn must be a JAX function or a Flax module, got {type(fn).__name__}")
        if params is not None:
            apply = getattr(fn, "apply", None)
            if apply is None:
                call = lambda x, t, **kw: fn(params, x, t, **kw)  # noqa: E731
            else:
                call = lambda x, t, **kw: apply(params, x, t, **kw)  # noqa: E731
        else:
            call = fn
        self.fn = jax.jit(call) if jit else call

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The network at torch `x` and `t` (`**kwargs` converted too), its output back as a torch tensor on x's device.
        """
        out = self.fn(to_jax(x), to_jax(t), **{k: to_jax(v) for k, v in kwargs.items()})
        return to_torch(out).to(x.device)


def from_jax(fn: Callable[..., Any], prediction: str | None = None, schedule: Any = None, *, params: Any = None,
             jit: bool = True, **field_kwargs: Any) -> VectorField:
    """The VectorField of a JAX / Flax network (`prediction=` and `schedule=` as for any VectorField).

    Args:
        fn: a JAX function or a Flax module (see JaxModel).
        prediction: what the network predicts ("eps", "x0", "v", "velocity", ...).
        schedule: the noise schedule (a name or a NoiseSchedule).
        params: the Flax module's (or function's) parameters; None: none.
        jit: jit-compile the call (default True).
        **field_kwargs: the other VectorField keywords (sample_shape, time_convention, ...).

    Returns:
        The VectorField.

    Raises:
        InvalidArgument: jax is not installed, `fn` is not a JAX callable, or the field's arguments are refused.
    """
    return VectorField(JaxModel(fn, params, jit=jit), prediction=prediction, schedule=schedule, **field_kwargs)


def is_jax_callable(model: Any) -> bool:
    """A jitted JAX function or a Flax module (decided without importing jax).

    Args:
        model: the object to test.

    Returns:
        True when jax is imported and the object is a callable from jax, jaxlib or flax.
    """
    if "jax" not in sys.modules:
        return False
    mod = type(model).__module__ or ""
    return mod.split(".")[0] in ("jax", "jaxlib", "flax") and callable(model)


def detect(model: Any, **given: Any):
    """The model adapter `Sampler(model)` consults: a JAX callable as a field, else None.

    Args:
        model: the model given to the Sampler.
        **given: the Sampler's description of it (`prediction`, `schedule`, ...), passed to `from_jax`.

    Returns:
        (VectorField | None): the field, or None for a model that is not a JAX callable.
    """
    if not is_jax_callable(model):
        return None
    return from_jax(model, **given)


def _register() -> None:
    register_model_adapter(detect)


_register()

__all__ = ["from_jax", "JaxModel", "to_jax", "to_torch", "is_jax_callable", "detect"]
