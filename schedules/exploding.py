"""Schedules with alpha = 1 (the noise is added, never scaled in): variance exploding (NCSN) and EDM."""
from __future__ import annotations

import math

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.schedules.base import NoiseSchedule, Tensorish, as_f64


class VESchedule(NoiseSchedule):
    """Variance exploding (NCSN / score-SDE): alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t for t > 0.

    Papers: Song and Ermon 2019, "Generative Modeling by Estimating Gradients of the Data Distribution" (NCSN);
    Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations".

    Args:
        sigma_min: sigma as t -> 0 (default 0.01).
        sigma_max: sigma at t = 1 (default 50).
        model_input: what the network receives: "sigma" (default) or "t".

    Raises:
        InvalidArgument: unless 0 < sigma_min < sigma_max, or an unknown model_input.
    """

    name = "ve"
    default_grid = "karras"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, model_input: str = "sigma"):
        if not 0 < sigma_min < sigma_max:
            raise InvalidArgument(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, "
                                  f"sigma_max={sigma_max!r}")
        if model_input not in ("sigma", "t"):
            raise InvalidArgument(f"model_input={model_input!r}; allowed values: 'sigma', 't'")
        self.smin, self.smax = float(sigma_min), float(sigma_max)
        self.model_input = model_input
        self.t_min, self.t_max = 1e-5, 1.0

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """0: alpha = 1."""
        return torch.zeros_like(as_f64(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log sigma_min + t log(sigma_max / sigma_min); -inf at t = 0."""
        t = as_f64(t)
        ls = math.log(self.smin) + t * math.log(self.smax / self.smin)
        return torch.where(t == 0, torch.full_like(t, -math.inf), ls)

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        """0."""
        return torch.zeros_like(as_f64(t))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log(sigma_max / sigma_min), constant."""
        return torch.full_like(as_f64(t), math.log(self.smax / self.smin))

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """The closed-form inverse of lambda = -log sigma."""
        lam = as_f64(lam)
        return (-lam - math.log(self.smin)) / math.log(self.smax / self.smin)

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        """The closed-form inverse of sigma (s = 0 gives t = 0)."""
        s = as_f64(s)
        t = (torch.log(s.clamp_min(1e-300)) - math.log(self.smin)) / math.log(self.smax / self.smin)
        return torch.where(s == 0, torch.zeros_like(t), t)

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The network's input: sigma(t) or t, as model_input says."""
        return self.sigma(t) if self.model_input == "sigma" else as_f64(t)

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        """Schedule time from the network's input."""
        return self.t_from_edm_sigma(tm) if self.model_input == "sigma" else as_f64(tm)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.smin:g}, sigma_max={self.smax:g}, model_input={self.model_input!r})"


class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022): alpha = 1, sigma = t; the network receives sigma.

    Paper: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models".

    Args:
        sigma_min: t_min, the smallest noise level (default 0.002).
        sigma_max: t_max, the largest noise level (default 80).

    Raises:
        InvalidArgument: unless 0 < sigma_min < sigma_max.
    """

    name = "edm"
    default_grid = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise InvalidArgument(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, "
                                  f"sigma_max={sigma_max!r}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """0: alpha = 1."""
        return torch.zeros_like(as_f64(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log t."""
        return torch.log(as_f64(t))

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        """0."""
        return torch.zeros_like(as_f64(t))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        """1 / t."""
        return 1.0 / as_f64(t)

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """exp(-lambda)."""
        return torch.exp(-as_f64(lam))

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        """s itself: t = sigma = s."""
        return as_f64(s)

    def __repr__(self) -> str:
        return f"EDMSchedule(sigma_min={self.t_min:g}, sigma_max={self.t_max:g})"
