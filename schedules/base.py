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
    """A float64 tensor of t (Python floats, sequences and tensors of any dtype).

    Args:
        t: the value(s) to convert.

    Returns:
        A float64 tensor (on t's device when t is a tensor).
    """
    return torch.as_tensor(t, dtype=torch.float64)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp), xp increasing, extrapolating linearly past both ends.

    Args:
        x: where to evaluate.
        xp: the increasing nodes.
        fp: the values at the nodes.

    Returns:
        A float64 tensor of x's shape.
    """
    x = as_f64(x)
    xp, fp = xp.to(x.device), fp.to(x.device)     # per-sample times may live on the device
    idx = torch.searchsorted(xp, x.reshape(-1).contiguous()).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    out = f0 + (x.reshape(-1) - x0) * (f1 - f0) / (x1 - x0)
    return out.reshape(x.shape)


class NoiseSchedule:
    """A Gaussian path `x_t = alpha(t) x0 + sigma(t) eps` for t in [0, t_max]; subclasses give log_alpha and log_sigma.

    Attributes:
        name: the schedule's name.
        t_min: the smallest time a grid may use apart from the exact end t = 0.
        t_max: the noisiest time.
        default_grid: the grid a Sampler uses when none is named.
    """

    name = "schedule"
    t_min: float = 0.0      # smallest time a grid may use apart from the exact end point t = 0
    t_max: float = 1.0
    default_grid = "time_uniform"

    # --- the defining functions -------------------------------------------------------------
    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """log alpha(t), the data's log scale (each subclass defines it).
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        raise NotImplementedError

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log sigma(t), the noise's log scale (each subclass defines it).
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        raise NotImplementedError

    # --- derived, shared by all schedules -------------------------------------------------
    def alpha(self, t: Tensorish) -> torch.Tensor:
        """alpha(t), the data's scale on the path.
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensorish) -> torch.Tensor:
        """sigma(t), the noise's scale on the path.
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return torch.exp(self.log_sigma(t))

    def lambda_(self, t: Tensorish) -> torch.Tensor:
        """Half log-SNR, log(alpha / sigma).

        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return self.log_alpha(t) - self.log_sigma(t)

    def edm_sigma(self, t: Tensorish) -> torch.Tensor:
        """The EDM-frame noise level s = sigma / alpha (inf where alpha = 0).

        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return torch.exp(-self.lambda_(t))

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """Inverse of lambda_(t); the default bisects in float64 (subclasses give closed forms).

        Args:
            lam: half log-SNR value(s).

        Returns:
            The float64 times with lambda_(t) = lam.
        """
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
        """The time with EDM noise level s = sigma / alpha (inverse of edm_sigma; s = 0 gives t = 0).

        Args:
            s: EDM noise level(s), >= 0.

        Returns:
            The float64 times.
        """
        s = as_f64(s)
        t = self.t_from_lambda(-torch.log(s.clamp_min(1e-300)))
        return torch.where(s == 0, torch.zeros_like(t), t)

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        """d log alpha / dt (by autograd unless a subclass gives it in closed form).
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return _autograd(self.log_alpha, t)

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        """d log sigma / dt (by autograd unless a subclass gives it in closed form).
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return _autograd(self.log_sigma, t)

    def d_alpha(self, t: Tensorish) -> torch.Tensor:
        """d alpha / dt.
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t: Tensorish) -> torch.Tensor:
        """d sigma / dt.
        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return self.sigma(t) * self.d_log_sigma(t)

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The time value the network was trained to receive at schedule time t.

        Args:
            t: times in [0, t_max]: a float, a sequence or a tensor of any dtype.

        Returns:
            A float64 tensor of t's shape.
        """
        return as_f64(t)

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        """Schedule time from the network's time input (inverse of model_time).

        Args:
            tm: the network's time input(s).

        Returns:
            The float64 schedule times.
        """
        return as_f64(tm)

    def prior_std(self, t: float | None = None) -> float:
        """Standard deviation of the initial noise sample at time t (default t_max): sigma(t), the data's share ignored.

        Args:
            t: the time; None: t_max.

        Returns:
            sigma(t) as a float.
        """
        return float(self.sigma(self.t_max if t is None else t))

    @property
    def sigma_min(self) -> float:
        """The EDM noise level at t_min (0 when t_min = 0)."""
        return float(self.edm_sigma(self.t_min)) if self.t_min > 0 else 0.0

    @property
    def sigma_max(self) -> float:
        """The EDM noise level at t_max (inf where alpha(t_max) = 0)."""
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
