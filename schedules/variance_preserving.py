"""Variance-preserving schedules (alpha^2 + sigma^2 = 1): discrete DDPM tables and the continuous score-SDE VP."""
from __future__ import annotations

import hashlib
import math

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.schedules.base import NoiseSchedule, Tensorish, as_f64, interp


class VPSchedule(NoiseSchedule):
    """Variance preserving: sigma = sqrt(1 - alpha^2)."""

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        """log sigma = log(1 - alpha^2) / 2, without cancellation (-inf at t = 0)."""
        la = self.log_alpha(t)
        # log(1 - e^{2 la}) without cancellation; at t = 0 exactly this is -inf (zero noise)
        return 0.5 * torch.log(-torch.expm1(2.0 * la))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        """d log sigma / dt from d log alpha / dt."""
        la = self.log_alpha(t)
        return -torch.exp(2.0 * la) / (-torch.expm1(2.0 * la)) * self.d_log_alpha(t)

    def prior_std(self, t: float | None = None) -> float:
        """1: alpha^2 + sigma^2 = 1 on a variance-preserving path."""
        return 1.0  # alpha^2 + sigma^2 = 1 on a variance-preserving path


class VPDiscrete(VPSchedule):
    """Discrete-time VP (DDPM): alphas_cumprod[n] at t_n = (n + 1) / N, log alpha piecewise-linear in t (DPM-Solver).

    Paper: Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; the interpolation is DPM-Solver's (Lu et
    al. 2022). Builders: `linear()`, `scaled_linear()`, `cosine()`, `geometric()`.

    Args:
        alphas_cumprod: the cumulative products of (1 - beta), strictly decreasing in (0, 1].
        betas: the betas instead (each in (0, 1)); give exactly one of the two.
        model_time_scale: index n is passed to the network as n * scale + offset; None: 1 (diffusers: n itself).
        model_time_offset: the offset of that map (default 0).

    Raises:
        InvalidArgument: neither or both tables, or a table out of range or not decreasing.
    """

    name = "vp_discrete"
    default_grid = "time_uniform"

    def __init__(self, alphas_cumprod: Tensorish | None = None, *, betas: Tensorish | None = None,
                 model_time_scale: float | None = None, model_time_offset: float = 0.0):
        if (alphas_cumprod is None) == (betas is None):
            raise InvalidArgument("VPDiscrete needs exactly one of alphas_cumprod= or betas=")
        if betas is not None:
            b = as_f64(betas)
            if b.ndim != 1 or not torch.all((b > 0) & (b < 1)):
                raise InvalidArgument("betas must be a 1-D array with values in (0, 1)")
            alphas_cumprod = torch.cumprod(1.0 - b, 0)
        ac = as_f64(alphas_cumprod)
        if ac.ndim != 1 or ac.numel() < 2 or not torch.all((ac > 0) & (ac <= 1)):
            raise InvalidArgument("alphas_cumprod must be a 1-D array of at least 2 values in (0, 1]")
        if not torch.all(ac[1:] < ac[:-1]):
            raise InvalidArgument("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        self.N = ac.numel()
        # Index n maps to the network's time input n * scale + offset (diffusers: the integer n itself).
        self.model_time_scale = 1.0 if model_time_scale is None else float(model_time_scale)
        self.model_time_offset = float(model_time_offset)
        t_nodes = torch.arange(1, self.N + 1, dtype=torch.float64) / self.N
        log_alpha_nodes = 0.5 * torch.log(ac)
        # The node (0, 0) makes t = 0 exactly noise-free, so a grid may end at zero noise.
        self._t = torch.cat([torch.zeros(1, dtype=torch.float64), t_nodes])
        self._la = torch.cat([torch.zeros(1, dtype=torch.float64), log_alpha_nodes])
        # log alpha decreases in t; flipped copies make it increasing for searchsorted
        self._la_inc = self._la.flip(0)
        self._t_by_la = self._t.flip(0)
        self.t_min = 1.0 / self.N
        self.t_max = 1.0

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """log alpha, piecewise-linear in t through (0, 0) and the table's nodes."""
        return interp(t, self._t, self._la)

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        """The slope of the piecewise-linear log alpha."""
        t = as_f64(t)
        idx = torch.searchsorted(self._t, t.reshape(-1).contiguous(), right=True).clamp(1, self._t.numel() - 1)
        slope = (self._la[idx] - self._la[idx - 1]) / (self._t[idx] - self._t[idx - 1])
        return slope.reshape(t.shape)

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """Exact inverse of the interpolant: lambda -> log alpha = -log(1 + e^{-2 lambda}) / 2 -> t (DPM-Solver)."""
        lam = as_f64(lam)
        la = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        t = interp(la, self._la_inc, self._t_by_la)
        return torch.where(torch.isposinf(lam), torch.zeros_like(t), t)

    def timestep_index(self, t: Tensorish) -> torch.Tensor:
        """Continuous index n(t) = N t - 1 into alphas_cumprod (the diffusers timestep).

        Args:
            t: schedule time(s).

        Returns:
            The float64 index (diffusers' timestep).
        """
        return as_f64(t) * self.N - 1.0

    def t_from_index(self, n: Tensorish) -> torch.Tensor:
        """Schedule time t = (n + 1) / N of table index n (inverse of timestep_index)."""
        return (as_f64(n) + 1.0) / self.N

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The network's time input: the index times model_time_scale plus model_time_offset."""
        return self.timestep_index(t) * self.model_time_scale + self.model_time_offset

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        """Schedule time from the network's time input (inverse of model_time)."""
        return self.t_from_index((as_f64(tm) - self.model_time_offset) / self.model_time_scale)

    def __repr__(self) -> str:
        ac = self.alphas_cumprod
        return (f"VPDiscrete(N={self.N}, abar[0]={float(ac[0]):.10g}, abar[-1]={float(ac[-1]):.10g}, "
                f"sum={float(ac.sum()):.12g}, model_time_scale={self.model_time_scale:g}, "
                f"model_time_offset={self.model_time_offset:g})")

    def identity(self) -> str:
        """The table's SHA-256 and the time map: equal for equal schedules."""
        digest = hashlib.sha256(self.alphas_cumprod.numpy().tobytes()).hexdigest()
        return (f"VPDiscrete(alphas_cumprod=sha256:{digest}, model_time_scale={self.model_time_scale!r}, "
                f"model_time_offset={self.model_time_offset!r})")

    # --- builders for the beta schedules seen in the wild ---------------------------------------
    @classmethod
    def linear(cls, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kw) -> "VPDiscrete":
        """DDPM linear betas (Ho et al. 2020).

        Args:
            N: the number of steps in the table.
            beta_start: the first beta.
            beta_end: the last beta.
            **kw: model_time_scale / model_time_offset.
        """
        return cls(betas=torch.linspace(beta_start, beta_end, N, dtype=torch.float64), **kw)

    @classmethod
    def scaled_linear(cls, N: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, **kw) -> "VPDiscrete":
        """Stable Diffusion's sqrt-linear betas.

        Args:
            N: the number of steps.
            beta_start: the first beta (the ramp is linear in sqrt(beta)).
            beta_end: the last beta.
            **kw: model_time_scale / model_time_offset.
        """
        b = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, N, dtype=torch.float64) ** 2
        return cls(betas=b, **kw)

    @classmethod
    def cosine(cls, N: int = 1000, s: float = 0.008, max_beta: float = 0.999, **kw) -> "VPDiscrete":
        """Improved DDPM cosine schedule (Nichol & Dhariwal 2021), betas clipped at max_beta.

        Args:
            N: the number of steps.
            s: the cosine's offset.
            max_beta: the cap on each beta.
            **kw: model_time_scale / model_time_offset.
        """
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        b = [min(1 - f((i + 1) / N) / f(i / N), max_beta) for i in range(N)]
        return cls(betas=b, **kw)

    @classmethod
    def geometric(cls, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kw) -> "VPDiscrete":
        """Betas spaced geometrically (log-linearly) from beta_start to beta_end.

        Args:
            N: the number of steps.
            beta_start: the first beta.
            beta_end: the last beta.
            **kw: model_time_scale / model_time_offset.
        """
        b = torch.exp(torch.linspace(math.log(beta_start), math.log(beta_end), N, dtype=torch.float64))
        return cls(betas=b, **kw)


class VPContinuous(VPSchedule):
    """Score-SDE VP with linear beta(t): log alpha = -(b1 - b0) t^2 / 4 - b0 t / 2 (Song et al. 2021).

    Paper: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations".

    Args:
        beta_min: beta(0) (default 0.1).
        beta_max: beta(1) (default 20).
        t_min: the smallest time a grid uses (default 1e-3).
        t_max: the noisiest time (default 1).
        model_time_scale: the network receives t * scale (default 1).

    Raises:
        InvalidArgument: unless 0 < beta_min < beta_max and 0 < t_min < t_max.
    """

    name = "vp_continuous"
    default_grid = "logsnr_uniform"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0,
                 model_time_scale: float = 1.0):
        if not 0 < beta_min < beta_max:
            raise InvalidArgument(f"need 0 < beta_min < beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")
        if not 0 < t_min < t_max:
            raise InvalidArgument(f"need 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")
        self.b0, self.b1 = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.model_time_scale = float(model_time_scale)

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """log alpha = -(b1 - b0) t^2 / 4 - b0 t / 2."""
        t = as_f64(t)
        return -0.25 * t ** 2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        """d log alpha / dt = -(b1 - b0) t / 2 - b0 / 2."""
        return -0.5 * as_f64(t) * (self.b1 - self.b0) - 0.5 * self.b0

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """The closed-form inverse of lambda (score-SDE VP)."""
        lam = as_f64(lam)
        tmp = 2.0 * (self.b1 - self.b0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.b0 ** 2 + tmp
        return tmp / (torch.sqrt(delta) + self.b0) / (self.b1 - self.b0)

    def model_time(self, t: Tensorish) -> torch.Tensor:
        """The network's time input: t * model_time_scale."""
        return as_f64(t) * self.model_time_scale

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        """Schedule time from the network's time input."""
        return as_f64(tm) / self.model_time_scale

    def __repr__(self) -> str:
        return f"VPContinuous(beta_min={self.b0:g}, beta_max={self.b1:g}, t_min={self.t_min:g}, t_max={self.t_max:g})"
