"""The noise-schedule interface: float64 functions alpha(t), sigma(t), lambda(t), its inverse, and the model's
time input.

Convention (DPM-Solver, Lu et al. 2022): `x_t = alpha(t) x0 + sigma(t) eps`, time runs the diffusion way
(t = 0 clean data, t = t_max most noise) and `lambda(t) = log(alpha / sigma)` decreases in t. The EDM frame
uses `s = sigma / alpha` (Karras et al. 2022), so `lambda = -log s`. Every function takes and returns float64
tensors (Python floats are accepted); they are evaluated on the host, before a sampling loop, never inside it.

The concrete schedules live beside this module (variance_preserving, exploding, flow, custom).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Tensorish = torch.Tensor | float | Sequence[float]


def as_f64(t: Tensorish) -> torch.Tensor:
    """A float64 tensor of t (Python floats, sequences and tensors of any dtype)."""
    return torch.as_tensor(t, dtype=torch.float64)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp), xp increasing, extrapolating linearly past both ends."""
    x = as_f64(x)
    xp, fp = xp.to(x.device), fp.to(x.device)     # per-sample times may live on the device
    idx = torch.searchsorted(xp, x.reshape(-1).contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    out = f0 + (x.reshape(-1) - x0) * (f1 - f0) / (x1 - x0)
    return out.reshape(x.shape)


class NoiseSchedule:
    """A Gaussian path `x_t = alpha(t) x0 + sigma(t) eps` for t in [0, t_max]; subclasses give log_alpha and log_sigma."""

    name = "schedule"
    t_min: float = 0.0      # smallest time a grid may use apart from the exact end point t = 0
    t_max: float = 1.0
    default_grid = "time_uniform"

    # --- the defining functions -------------------------------------------------------------
    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        raise NotImplementedError

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        raise NotImplementedError

    # --- derived, shared by all schedules -------------------------------------------------
    def alpha(self, t: Tensorish) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t: Tensorish) -> torch.Tensor:
        """Half log-SNR, log(alpha / sigma)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def edm_sigma(self, t: Tensorish) -> torch.Tensor:
        """The EDM-frame noise level s = sigma / alpha (inf where alpha = 0)."""
        return torch.exp(-self.lambda_(t))

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """Inverse of lambda_(t); the default bisects in float64 (subclasses give closed forms)."""
        lam = as_f64(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = self.lambda_(mid) > lam   # lambda decreases in t: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        s = as_f64(s)
        t = self.t_from_lambda(-torch.log(s.clamp_min(1e-300)))
        return torch.where(s == 0, torch.zeros_like(t), t)

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        return _autograd(self.log_alpha, t)

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        return _autograd(self.log_sigma, t)

    def d_alpha(self, t: Tensorish) -> torch.Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t: Tensorish) -> torch.Tensor:
        return self.sigma(t) * self.d_log_sigma(t)

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The time value the network was trained to receive at schedule time t."""
        return as_f64(t)

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        return as_f64(tm)

    def prior_std(self, t: float | None = None) -> float:
        """Standard deviation of the initial noise sample at time t (default t_max): sigma(t), the data's share ignored."""
        return float(self.sigma(self.t_max if t is None else t))

    @property
    def sigma_min(self) -> float:
        return float(self.edm_sigma(self.t_min)) if self.t_min > 0 else 0.0

    @property
    def sigma_max(self) -> float:
        return float(self.edm_sigma(self.t_max))

    @property
    def reaches_pure_noise(self) -> bool:
        """True when alpha(t_max) = 0, as for rectified flow: the EDM frame is singular there."""
        return float(self.alpha(self.t_max)) == 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def identity(self) -> str | None:
        """A stable string that identifies the schedule (for caches); None when it cannot be identified."""
        return repr(self)


def _autograd(fn: Callable[[torch.Tensor], torch.Tensor], t: Tensorish) -> torch.Tensor:
    with torch.enable_grad():
        tt = as_f64(t).detach().clone().requires_grad_(True)
        y = fn(tt)
        (g,) = torch.autograd.grad(y.sum(), tt)
    return g.detach()
