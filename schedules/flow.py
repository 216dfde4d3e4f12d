"""Rectified flow / flow matching: the straight path alpha = 1 - t, sigma = t."""
from __future__ import annotations

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.schedules.base import NoiseSchedule, Tensorish, as_f64


class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t, t = 1 pure noise.

    Papers: Liu et al. 2022, "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified
    Flow"; Lipman et al. 2023, "Flow Matching for Generative Modeling".

    Args:
        model_time_scale: maps t to the network's input (SD3 and Flux take 1000 t; default 1).
        t_max: the noisiest time (default 1, pure noise).
        t_min: the smallest time a grid uses (default 1e-4).

    Raises:
        InvalidArgument: unless 0 < t_min < t_max <= 1.
    """

    name = "rectified_flow"
    default_grid = "time_uniform"

    def __init__(self, model_time_scale: float = 1.0, t_max: float = 1.0, t_min: float = 1e-4):
        if not 0 < t_min < t_max <= 1:
            raise InvalidArgument(f"need 0 < t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
        self.model_time_scale = float(model_time_scale)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """log(1 - t)."""
        return torch.log1p(-as_f64(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log t."""
        return torch.log(as_f64(t))

    def alpha(self, t: Tensorish) -> torch.Tensor:
        """1 - t."""
        return 1.0 - as_f64(t)

    def sigma(self, t: Tensorish) -> torch.Tensor:
        """t."""
        return as_f64(t)

    def d_alpha(self, t: Tensorish) -> torch.Tensor:
        """-1."""
        return torch.full_like(as_f64(t), -1.0)

    def d_sigma(self, t: Tensorish) -> torch.Tensor:
        """1."""
        return torch.ones_like(as_f64(t))

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        """-1 / (1 - t)."""
        return -1.0 / (1.0 - as_f64(t))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        """1 / t."""
        return 1.0 / as_f64(t)

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """sigmoid(-lambda)."""
        return torch.sigmoid(-as_f64(lam))

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        """s / (1 + s); s = inf gives t = 1."""
        s = as_f64(s)
        return torch.where(torch.isinf(s), torch.ones_like(s), s / (1.0 + s))

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The network's time input: t * model_time_scale."""
        return as_f64(t) * self.model_time_scale

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        """Schedule time from the network's time input."""
        return as_f64(tm) / self.model_time_scale

    def __repr__(self) -> str:
        return f"RectifiedFlow(model_time_scale={self.model_time_scale:g}, t_min={self.t_min:g}, t_max={self.t_max:g})"
