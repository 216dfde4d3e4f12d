"""A schedule from any pair of callables alpha(t), sigma(t)."""
from __future__ import annotations

from typing import Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.schedules.base import NoiseSchedule, Tensorish, as_f64


class CustomSchedule(NoiseSchedule):
    """Any pair of callables alpha(t), sigma(t) on [0, t_max]; derivatives by autograd, inverse by bisection.

    Args:
        alpha: alpha(t), a float64 tensor function.
        sigma: sigma(t), a float64 tensor function.
        t_min: the smallest time a grid uses (default 1e-3).
        t_max: the noisiest time (default 1).
        model_time: the network's time input as a function of t; None: t itself.
        name: the schedule's name.
        identity: a string naming these functions, so caches can key on them.

    Raises:
        InvalidArgument: unless 0 <= t_min < t_max, a non-string identity, or log(alpha/sigma) not decreasing.
    """

    name = "custom"
    default_grid = "logsnr_uniform"

    def __init__(self, alpha: Callable[[torch.Tensor], torch.Tensor], sigma: Callable[[torch.Tensor], torch.Tensor],
                 t_min: float = 1e-3, t_max: float = 1.0, model_time: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 name: str = "custom", identity: str | None = None):
        if not 0 <= t_min < t_max:
            raise InvalidArgument("need 0 <= t_min < t_max")
        self._alpha, self._sigma, self._model_time = alpha, sigma, model_time
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.name = name
        if identity is not None and not isinstance(identity, str):
            raise InvalidArgument(f"identity={identity!r}: must be a string that names these functions, or None")
        self._identity = identity
        probe = torch.linspace(self.t_min if self.t_min > 0 else self.t_max * 1e-3, self.t_max, 257, dtype=torch.float64)
        lam = self.lambda_(probe)
        if not torch.all(lam[1:] < lam[:-1]):
            raise InvalidArgument("custom schedule: log(alpha/sigma) must strictly decrease in t")

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """log of the given alpha(t)."""
        return torch.log(as_f64(self._alpha(as_f64(t))))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log of the given sigma(t)."""
        return torch.log(as_f64(self._sigma(as_f64(t))))

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The given model_time(t), or t."""
        return as_f64(t) if self._model_time is None else as_f64(self._model_time(as_f64(t)))

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        """t itself (the identity map).

        Raises:
            InvalidArgument: a custom model_time was given (it has no inverse here).
        """
        if self._model_time is not None:
            raise InvalidArgument("custom schedule with a custom model_time has no inverse map")
        return as_f64(tm)

    def __repr__(self) -> str:
        return f"CustomSchedule(name={self.name!r}, t_min={self.t_min:g}, t_max={self.t_max:g})"

    def identity(self) -> str | None:
        """The caller's identity string with the time range, or None without one (not cacheable)."""
        # Functions have no stable identity: two schedules with the same name may differ, so only a caller-given
        # identity string makes a custom schedule cacheable.
        if self._identity is None:
            return None
        return f"CustomSchedule({self._identity!r}, t_min={self.t_min!r}, t_max={self.t_max!r})"
