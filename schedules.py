"""Noise schedules as sets of float64 functions: alpha(t), sigma(t), lambda(t), its inverse, and the model's time input.

Convention (DPM-Solver, Lu et al. 2022): `x_t = alpha(t) x0 + sigma(t) eps`, time runs the diffusion way
(t = 0 clean data, t = t_max most noise) and `lambda(t) = log(alpha / sigma)` decreases in t. The EDM frame
uses `s = sigma / alpha` (Karras et al. 2022), so `lambda = -log s`. Every function takes and returns float64
tensors (Python floats are accepted); they are evaluated on the host, before a sampling loop, never inside it.
"""
from __future__ import annotations

import hashlib

import math
from typing import Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument

Tensorish = torch.Tensor | float | Sequence[float]


def _f64(t: Tensorish) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of (xp, fp), xp increasing, extrapolating linearly past both ends."""
    x = _f64(x)
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
        lam = _f64(lam)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.t_max)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            above = self.lambda_(mid) > lam   # lambda decreases in t: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        s = _f64(s)
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
        return _f64(t)

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        return _f64(tm)

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
        tt = _f64(t).detach().clone().requires_grad_(True)
        y = fn(tt)
        (g,) = torch.autograd.grad(y.sum(), tt)
    return g.detach()


# ----------------------------------------------------------------------------------------------
# Variance preserving
# ----------------------------------------------------------------------------------------------
class VPSchedule(NoiseSchedule):
    """Variance preserving: sigma = sqrt(1 - alpha^2)."""

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        la = self.log_alpha(t)
        # log(1 - e^{2 la}) without cancellation; at t = 0 exactly this is -inf (zero noise)
        return 0.5 * torch.log(-torch.expm1(2.0 * la))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        la = self.log_alpha(t)
        return -torch.exp(2.0 * la) / (-torch.expm1(2.0 * la)) * self.d_log_alpha(t)

    def prior_std(self, t: float | None = None) -> float:
        return 1.0  # alpha^2 + sigma^2 = 1 on a variance-preserving path


class VPDiscrete(VPSchedule):
    """Discrete-time VP (DDPM): alphas_cumprod[n] at t_n = (n + 1) / N, log alpha piecewise-linear in t (DPM-Solver)."""

    name = "vp_discrete"
    default_grid = "time_uniform"

    def __init__(self, alphas_cumprod: Tensorish | None = None, *, betas: Tensorish | None = None,
                 model_time_scale: float | None = None, model_time_offset: float = 0.0):
        if (alphas_cumprod is None) == (betas is None):
            raise InvalidArgument("VPDiscrete needs exactly one of alphas_cumprod= or betas=")
        if betas is not None:
            b = _f64(betas)
            if b.ndim != 1 or not torch.all((b > 0) & (b < 1)):
                raise InvalidArgument("betas must be a 1-D array with values in (0, 1)")
            alphas_cumprod = torch.cumprod(1.0 - b, 0)
        ac = _f64(alphas_cumprod)
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
        return interp(t, self._t, self._la)

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        t = _f64(t)
        idx = torch.searchsorted(self._t, t.reshape(-1).contiguous(), right=True).clamp(1, self._t.numel() - 1)
        slope = (self._la[idx] - self._la[idx - 1]) / (self._t[idx] - self._t[idx - 1])
        return slope.reshape(t.shape)

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        """Exact inverse of the interpolant: lambda -> log alpha = -log(1 + e^{-2 lambda}) / 2 -> t (DPM-Solver)."""
        lam = _f64(lam)
        la = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        t = interp(la, self._la_inc, self._t_by_la)
        return torch.where(torch.isposinf(lam), torch.zeros_like(t), t)

    def timestep_index(self, t: Tensorish) -> torch.Tensor:
        """Continuous index n(t) = N t - 1 into alphas_cumprod (the diffusers timestep)."""
        return _f64(t) * self.N - 1.0

    def t_from_index(self, n: Tensorish) -> torch.Tensor:
        return (_f64(n) + 1.0) / self.N

    def model_time(self, t: Tensorish) -> torch.Tensor:
        return self.timestep_index(t) * self.model_time_scale + self.model_time_offset

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        return self.t_from_index((_f64(tm) - self.model_time_offset) / self.model_time_scale)

    def __repr__(self) -> str:
        ac = self.alphas_cumprod
        return (f"VPDiscrete(N={self.N}, abar[0]={float(ac[0]):.10g}, abar[-1]={float(ac[-1]):.10g}, "
                f"sum={float(ac.sum()):.12g}, model_time_scale={self.model_time_scale:g}, "
                f"model_time_offset={self.model_time_offset:g})")

    def identity(self) -> str:
        digest = hashlib.sha256(self.alphas_cumprod.numpy().tobytes()).hexdigest()
        return (f"VPDiscrete(alphas_cumprod=sha256:{digest}, model_time_scale={self.model_time_scale!r}, "
                f"model_time_offset={self.model_time_offset!r})")

    # --- builders for the beta schedules seen in the wild ---------------------------------------
    @classmethod
    def linear(cls, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kw) -> "VPDiscrete":
        """DDPM linear betas (Ho et al. 2020)."""
        return cls(betas=torch.linspace(beta_start, beta_end, N, dtype=torch.float64), **kw)

    @classmethod
    def scaled_linear(cls, N: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, **kw) -> "VPDiscrete":
        """Stable Diffusion's sqrt-linear betas."""
        b = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, N, dtype=torch.float64) ** 2
        return cls(betas=b, **kw)

    @classmethod
    def cosine(cls, N: int = 1000, s: float = 0.008, max_beta: float = 0.999, **kw) -> "VPDiscrete":
        """Improved DDPM cosine schedule (Nichol & Dhariwal 2021), betas clipped at max_beta."""
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        b = [min(1 - f((i + 1) / N) / f(i / N), max_beta) for i in range(N)]
        return cls(betas=b, **kw)

    @classmethod
    def geometric(cls, N: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kw) -> "VPDiscrete":
        """Betas spaced geometrically (log-linearly) from beta_start to beta_end."""
        b = torch.exp(torch.linspace(math.log(beta_start), math.log(beta_end), N, dtype=torch.float64))
        return cls(betas=b, **kw)


class VPContinuous(VPSchedule):
    """Score-SDE VP with linear beta(t): log alpha = -(b1 - b0) t^2 / 4 - b0 t / 2 (Song et al. 2021)."""

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
        t = _f64(t)
        return -0.25 * t ** 2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        return -0.5 * _f64(t) * (self.b1 - self.b0) - 0.5 * self.b0

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        lam = _f64(lam)
        tmp = 2.0 * (self.b1 - self.b0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.b0 ** 2 + tmp
        return tmp / (torch.sqrt(delta) + self.b0) / (self.b1 - self.b0)

    def model_time(self, t: Tensorish) -> torch.Tensor:
        return _f64(t) * self.model_time_scale

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        return _f64(tm) / self.model_time_scale

    def __repr__(self) -> str:
        return f"VPContinuous(beta_min={self.b0:g}, beta_max={self.b1:g}, t_min={self.t_min:g}, t_max={self.t_max:g})"


# ----------------------------------------------------------------------------------------------
# Variance exploding, EDM, flows
# ----------------------------------------------------------------------------------------------
class VESchedule(NoiseSchedule):
    """Variance exploding (NCSN / score-SDE): alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t for t > 0."""

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
        return torch.zeros_like(_f64(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        t = _f64(t)
        ls = math.log(self.smin) + t * math.log(self.smax / self.smin)
        return torch.where(t == 0, torch.full_like(t, -math.inf), ls)

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        return torch.zeros_like(_f64(t))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.full_like(_f64(t), math.log(self.smax / self.smin))

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        lam = _f64(lam)
        return (-lam - math.log(self.smin)) / math.log(self.smax / self.smin)

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        s = _f64(s)
        t = (torch.log(s.clamp_min(1e-300)) - math.log(self.smin)) / math.log(self.smax / self.smin)
        return torch.where(s == 0, torch.zeros_like(t), t)

    def model_time(self, t: Tensorish) -> torch.Tensor:
        return self.sigma(t) if self.model_input == "sigma" else _f64(t)

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        return self.t_from_edm_sigma(tm) if self.model_input == "sigma" else _f64(tm)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.smin:g}, sigma_max={self.smax:g}, model_input={self.model_input!r})"


class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022): alpha = 1, sigma = t; the network receives sigma."""

    name = "edm"
    default_grid = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise InvalidArgument(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, "
                                  f"sigma_max={sigma_max!r}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        return torch.zeros_like(_f64(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.log(_f64(t))

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        return torch.zeros_like(_f64(t))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        return 1.0 / _f64(t)

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        return torch.exp(-_f64(lam))

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        return _f64(s)

    def __repr__(self) -> str:
        return f"EDMSchedule(sigma_min={self.t_min:g}, sigma_max={self.t_max:g})"


class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching: alpha = 1 - t, sigma = t, t = 1 pure noise (Liu et al. 2022; Lipman et al. 2023).

    `model_time_scale` maps t to the network's input (SD3 and Flux take 1000 t).
    """

    name = "rectified_flow"
    default_grid = "time_uniform"

    def __init__(self, model_time_scale: float = 1.0, t_max: float = 1.0, t_min: float = 1e-4):
        if not 0 < t_min < t_max <= 1:
            raise InvalidArgument(f"need 0 < t_min < t_max <= 1, got t_min={t_min!r}, t_max={t_max!r}")
        self.model_time_scale = float(model_time_scale)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        return torch.log1p(-_f64(t))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.log(_f64(t))

    def alpha(self, t: Tensorish) -> torch.Tensor:
        return 1.0 - _f64(t)

    def sigma(self, t: Tensorish) -> torch.Tensor:
        return _f64(t)

    def d_alpha(self, t: Tensorish) -> torch.Tensor:
        return torch.full_like(_f64(t), -1.0)

    def d_sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.ones_like(_f64(t))

    def d_log_alpha(self, t: Tensorish) -> torch.Tensor:
        return -1.0 / (1.0 - _f64(t))

    def d_log_sigma(self, t: Tensorish) -> torch.Tensor:
        return 1.0 / _f64(t)

    def t_from_lambda(self, lam: Tensorish) -> torch.Tensor:
        return torch.sigmoid(-_f64(lam))

    def t_from_edm_sigma(self, s: Tensorish) -> torch.Tensor:
        s = _f64(s)
        return torch.where(torch.isinf(s), torch.ones_like(s), s / (1.0 + s))

    def model_time(self, t: Tensorish) -> torch.Tensor:
        return _f64(t) * self.model_time_scale

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        return _f64(tm) / self.model_time_scale

    def __repr__(self) -> str:
        return f"RectifiedFlow(model_time_scale={self.model_time_scale:g}, t_min={self.t_min:g}, t_max={self.t_max:g})"


class CustomSchedule(NoiseSchedule):
    """Any pair of callables alpha(t), sigma(t) on [0, t_max]; derivatives by autograd, inverse by bisection."""

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
        return torch.log(_f64(self._alpha(_f64(t))))

    def log_sigma(self, t: Tensorish) -> torch.Tensor:
        return torch.log(_f64(self._sigma(_f64(t))))

    def model_time(self, t: Tensorish) -> torch.Tensor:
        return _f64(t) if self._model_time is None else _f64(self._model_time(_f64(t)))

    def t_from_model_time(self, tm: Tensorish) -> torch.Tensor:
        if self._model_time is not None:
            raise InvalidArgument("custom schedule with a custom model_time has no inverse map")
        return _f64(tm)

    def __repr__(self) -> str:
        return f"CustomSchedule(name={self.name!r}, t_min={self.t_min:g}, t_max={self.t_max:g})"

    def identity(self) -> str | None:
        # Functions have no stable identity: two schedules with the same name may differ, so only a caller-given
        # identity string makes a custom schedule cacheable.
        if self._identity is None:
            return None
        return f"CustomSchedule({self._identity!r}, t_min={self.t_min!r}, t_max={self.t_max!r})"


SCHEDULES = {
    "vp_linear": VPDiscrete.linear,
    "vp_scaled_linear": VPDiscrete.scaled_linear,
    "vp_cosine": VPDiscrete.cosine,
    "vp_geometric": VPDiscrete.geometric,
    "vp_continuous": VPContinuous,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "rectified_flow": RectifiedFlow,
}


def get_schedule(schedule: "str | NoiseSchedule") -> NoiseSchedule:
    """A schedule object from a name in SCHEDULES, or the object itself."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    from diffsolve.errors import unknown_name
    raise unknown_name("schedule", schedule, SCHEDULES)
