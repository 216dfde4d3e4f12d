"""Analytic problems with exact denoisers: a Gaussian (closed-form probability-flow solution) and a Gaussian mixture.

Both are models in the diffsolve sense: `model(x, t_model) -> x0_hat` with a `diffsolve_spec`, so
`Sampler(GaussianMixtureProblem.default())` works with no other argument.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import ModelSpec
from diffsolve.schedules import EDMSchedule, NoiseSchedule, get_schedule


def _path(schedule: NoiseSchedule, t: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(t, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    shape = (-1,) + (1,) * (like.ndim - 1) if a.ndim == 1 else ()
    return a.reshape(shape).to(like), s.reshape(shape).to(like)


class GaussianProblem(torch.nn.Module):
    """Data x0 ~ N(mean, diag(var)): E[x0 | x_t] is linear and z = (x - alpha mean) / sqrt(alpha^2 var + sigma^2)
    is constant along the probability-flow ODE, so every trajectory is known exactly.

    Args:
        mean: the data mean, 1-D.
        var: the per-dimension variances (positive), same length.
        schedule: a NoiseSchedule or its name; None: EDMSchedule().

    Raises:
        InvalidArgument: mean and var not 1-D of one length, or a variance not positive.
    """

    def __init__(self, mean: Sequence[float] | torch.Tensor, var: Sequence[float] | torch.Tensor,
                 schedule: NoiseSchedule | str | None = None):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        var = torch.as_tensor(var, dtype=torch.float64)
        if mean.shape != var.shape or mean.ndim != 1:
            raise InvalidArgument("mean and var must be 1-D of the same length")
        if not torch.all(var > 0):
            raise InvalidArgument("var must be positive")
        self.register_buffer("mean", mean)
        self.register_buffer("var", var)
        self.schedule = get_schedule(schedule) if schedule is not None else EDMSchedule()

    @classmethod
    def default(cls, dim: int = 8, schedule: NoiseSchedule | str | None = None, seed: int = 0) -> "GaussianProblem":
        """A seeded problem: mean ~ N(0, I), variances log-spaced from 0.25 to 4.

        Args:
            dim: the dimension (default 8).
            schedule: as in the constructor.
            seed: the seed of the mean.

        Returns:
            The GaussianProblem.
        """
        g = torch.Generator().manual_seed(seed)
        mean = torch.randn(dim, generator=g, dtype=torch.float64)
        var = torch.exp(torch.linspace(math.log(0.25), math.log(4.0), dim, dtype=torch.float64))
        return cls(mean, var, schedule)

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The ModelSpec: a data prediction ('x0') on its schedule, samples of shape (dim,)."""
        return ModelSpec(prediction="x0", schedule=self.schedule, sample_shape=(self.mean.numel(),))

    def identity(self) -> str:
        """A stable string naming the problem (dimension, sums of mean and var, schedule)."""
        return f"GaussianProblem(dim={self.mean.numel()}, sum_mean={float(self.mean.sum()):.12g}, " \
               f"sum_var={float(self.var.sum()):.12g}, schedule={self.schedule.identity()})"

    def forward(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        """The exact data prediction at the network's time input.

        Args:
            x: the state [B, dim].
            t_model: the network's time input per sample.

        Returns:
            E[x0 | x_t], [B, dim].
        """
        t = self.schedule.t_from_model_time(t_model.to(torch.float64))
        return self.denoise(x, t)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The exact data prediction E[x0 | x_t] at schedule time t.

        Args:
            x: the state [B, dim].
            t: the time (a float, or one per sample).

        Returns:
            E[x0 | x_t], in x's dtype.
        """
        a, s = _path(self.schedule, t, x)
        m, v = self.mean.to(x), self.var.to(x)
        return m + a * v / (a * a * v + s * s) * (x - a * m)

    def ode_solution(self, x_from: torch.Tensor, t_from: float, t_to: float) -> torch.Tensor:
        """Exact probability-flow transport of x_from at time t_from to time t_to.

        Args:
            x_from: the state at t_from.
            t_from: the schedule time of x_from.
            t_to: the schedule time to transport to.

        Returns:
            The state at t_to.
        """
        a0, s0 = _path(self.schedule, t_from, x_from)
        a1, s1 = _path(self.schedule, t_to, x_from)
        m, v = self.mean.to(x_from), self.var.to(x_from)
        z = (x_from - a0 * m) / torch.sqrt(a0 * a0 * v + s0 * s0)
        return a1 * m + torch.sqrt(a1 * a1 * v + s1 * s1) * z

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact data samples.

        Args:
            n: how many.
            generator: the torch.Generator to draw from; None: the global one.

        Returns:
            A float64 tensor [n, dim].
        """
        eps = torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64)
        return self.mean + eps * self.var.sqrt()

    def marginal_log_prob(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Exact log density of x_t = alpha x0 + sigma eps at time t: N(alpha mean, alpha^2 var + sigma^2)
        ([B, d] -> [B]).

        Args:
            x: the states [B, d].
            t: the schedule time.

        Returns:
            The float64 log densities [B].
        """
        a, s = (float(v) for v in _path(self.schedule, t, torch.zeros((), dtype=torch.float64)))
        var = a * a * self.var + s * s
        z = x.to(torch.float64) - a * self.mean
        return (-0.5 * z * z / var - 0.5 * torch.log(2 * math.pi * var)).sum(-1)


class GaussianMixtureProblem(torch.nn.Module):
    """Data x0 ~ sum_k w_k N(mu_k, var_k I) in any dimension; exact denoiser, density and samples.

    Args:
        means: the component means [K, dim].
        variances: one variance per component, or one for all.
        weights: the component weights (normalized here); None: uniform.
        schedule: a NoiseSchedule or its name; None: EDMSchedule().

    Raises:
        InvalidArgument: means not [K, dim], or variances or weights not one positive value per component.
    """

    def __init__(self, means: torch.Tensor, variances: Sequence[float] | torch.Tensor,
                 weights: Sequence[float] | torch.Tensor | None = None, schedule: NoiseSchedule | str | None = None):
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise InvalidArgument("means must be [K, dim]")
        K = means.shape[0]
        variances = torch.as_tensor(variances, dtype=torch.float64).reshape(-1)
        if variances.numel() == 1:
            variances = variances.expand(K).clone()
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else \
            torch.as_tensor(weights, dtype=torch.float64)
        if variances.numel() != K or weights.numel() != K or not torch.all(variances > 0) or not torch.all(weights > 0):
            raise InvalidArgument("variances and weights need one positive value per component")
        self.register_buffer("means", means)
        self.register_buffer("variances", variances)
        self.register_buffer("weights", weights / weights.sum())
        self.schedule = get_schedule(schedule) if schedule is not None else EDMSchedule()

    @classmethod
    def default(cls, dim: int = 16, components: int = 8, schedule: NoiseSchedule | str | None = None,
                seed: int = 0) -> "GaussianMixtureProblem":
        """A fixed, seeded mixture: means spread on a sphere of radius 3, component std 0.3 to 0.6.

        Args:
            dim: the dimension (default 16).
            components: K (default 8).
            schedule: as in the constructor.
            seed: the seed of means, stds and weights.

        Returns:
            The GaussianMixtureProblem.
        """
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(components, dim, generator=g, dtype=torch.float64)
        means = 3.0 * means / means.norm(dim=1, keepdim=True)
        std = 0.3 + 0.3 * torch.rand(components, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
        return cls(means, std ** 2, weights, schedule)

    @property
    def dim(self) -> int:
        """The data dimension."""
        return self.means.shape[1]

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The ModelSpec: a data prediction ('x0') on its schedule, samples of shape (dim,)."""
        return ModelSpec(prediction="x0", schedule=self.schedule, sample_shape=(self.dim,))

    def identity(self) -> str:
        """A stable string naming the mixture (sizes, sums of its parameters, schedule)."""
        return (f"GaussianMixtureProblem(K={self.means.shape[0]}, dim={self.dim}, "
                f"sum_means={float(self.means.sum()):.12g}, sum_var={float(self.variances.sum()):.12g}, "
                f"sum_w2={float((self.weights ** 2).sum()):.12g}, schedule={self.schedule.identity()})")

    def forward(self, x: torch.Tensor, t_model: torch.Tensor) -> torch.Tensor:
        """The exact data prediction at the network's time input.

        Args:
            x: the state [B, dim].
            t_model: the network's time input per sample.

        Returns:
            E[x0 | x_t], [B, dim].
        """
        t = self.schedule.t_from_model_time(t_model.to(torch.float64))
        return self.denoise(x, t)

    def _responsibilities(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [B, d]; a, s: [B, 1] or scalars. Component k of x_t is N(a mu_k, (a^2 v_k + s^2) I).
        mu = self.means.to(x)
        v = self.variances.to(x)
        tot = a * a * v + s * s                                                   # [B, K]
        d2 = ((x[:, None, :] - a[..., None] * mu[None]) ** 2).sum(-1) if a.ndim else \
            ((x[:, None, :] - a * mu[None]) ** 2).sum(-1)
        logp = torch.log(self.weights.to(x)) - 0.5 * d2 / tot - 0.5 * self.dim * torch.log(2 * math.pi * tot)
        return torch.softmax(logp, dim=1), tot

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The exact data prediction E[x0 | x_t]: the posterior-weighted component means.

        Args:
            x: the state [B, dim].
            t: the time (a float, or one per sample).

        Returns:
            E[x0 | x_t], in x's dtype.
        """
        a, s = _path(self.schedule, t, x)
        a2 = a.reshape(-1, 1) if a.ndim else a
        s2 = s.reshape(-1, 1) if s.ndim else s
        r, tot = self._responsibilities(x, a2, s2)                                # [B, K]
        mu = self.means.to(x)
        v = self.variances.to(x)
        gain = a2 * v / tot                                                        # [B, K]
        a3 = a2[..., None] if a2.ndim else a2
        post = mu[None] + gain[..., None] * (x[:, None, :] - a3 * mu[None])       # [B, K, d]
        return (r[..., None] * post).sum(1)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log density of the data distribution at x0 ([B, d] -> [B]).

        Args:
            x0: the points [B, d].

        Returns:
            The float64 log densities [B].
        """
        x0 = x0.to(torch.float64)
        mu, v, w = self.means, self.variances, self.weights
        d2 = ((x0[:, None, :] - mu[None]) ** 2).sum(-1)
        logp = torch.log(w) - 0.5 * d2 / v - 0.5 * self.dim * torch.log(2 * math.pi * v)
        return torch.logsumexp(logp, dim=1)

    def marginal_log_prob(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Exact log density of x_t at time t: the mixture of N(alpha mu_k, (alpha^2 v_k + sigma^2) I) ([B, d] -> [B]).

        Args:
            x: the states [B, d].
            t: the schedule time.

        Returns:
            The float64 log densities [B].
        """
        a, s = (float(v) for v in _path(self.schedule, t, torch.zeros((), dtype=torch.float64)))
        x = x.to(torch.float64)
        tot = a * a * self.variances + s * s                                       # [K]
        d2 = ((x[:, None, :] - a * self.means[None]) ** 2).sum(-1)                # [B, K]
        logp = torch.log(self.weights) - 0.5 * d2 / tot - 0.5 * self.dim * torch.log(2 * math.pi * tot)
        return torch.logsumexp(logp, dim=1)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact data samples.

        Args:
            n: how many.
            generator: the torch.Generator to draw from; None: the global one.

        Returns:
            A float64 tensor [n, dim].
        """
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + eps * self.variances[k].sqrt()[:, None]


class LinearFlowProblem(torch.nn.Module):
    """A plain velocity field with a known solution: dx/dtau = M (x - p(tau)) + p'(tau) in 2-D, tau = 1 - t the
    flow's time (0 at the source, 1 at the data), p(tau) = (sin(w1 tau), cos(w2 tau)) and M a rotating
    contraction. Its solution is x(tau) = p(tau) + exp(M (tau - tau0)) (x(tau0) - p(tau0)): smooth in time and
    state, time-dependent, for checking solvers' orders on a field without a noise schedule (any source).

    Args:
        decay: M's contraction rate (default 0.5).
        rotation: its rotation rate (default 2).
        w1: the frequency of p's first coordinate (default 2).
        w2: the frequency of its second (default 3).
    """

    def __init__(self, decay: float = 0.5, rotation: float = 2.0, w1: float = 2.0, w2: float = 3.0):
        super().__init__()
        self.register_buffer("M", torch.tensor([[-decay, rotation], [-rotation, -decay]], dtype=torch.float64))
        self.register_buffer("w", torch.tensor([w1, w2], dtype=torch.float64))

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The ModelSpec: a plain velocity field (no schedule), flow time, samples (2,)."""
        return ModelSpec(prediction="velocity", schedule=None, sample_shape=(2,), time_convention="flow")

    def p(self, tau: torch.Tensor) -> torch.Tensor:
        """The path p(tau) = (sin(w1 tau), cos(w2 tau)), [..., 2]."""
        w = self.w.to(tau.dtype)
        return torch.stack([torch.sin(w[0] * tau), torch.cos(w[1] * tau)], -1)

    def dp(self, tau: torch.Tensor) -> torch.Tensor:
        """Its derivative p'(tau), [..., 2]."""
        w = self.w.to(tau.dtype)
        return torch.stack([w[0] * torch.cos(w[0] * tau), -w[1] * torch.sin(w[1] * tau)], -1)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The velocity dx/dtau at x.

        Args:
            x: the state [B, 2].
            tau: the flow time (a scalar or one per sample).

        Returns:
            The velocity [B, 2].
        """
        tau = tau.to(x.dtype).reshape(-1).expand(x.shape[0])
        return (x - self.p(tau)) @ self.M.to(x.dtype).T + self.dp(tau)

    def ode_solution(self, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
        """The exact state at diffsolve time t1 from x at t0 (tau = 1 - t).

        Args:
            x: the state at t0 [B, 2].
            t0: the diffsolve time of x.
            t1: the diffsolve time to reach.

        Returns:
            The state at t1, in x's dtype.
        """
        tau0 = torch.tensor(1.0 - t0, dtype=torch.float64)
        tau1 = torch.tensor(1.0 - t1, dtype=torch.float64)
        E = torch.linalg.matrix_exp(self.M * (tau1 - tau0))
        y = self.p(tau1) + (x.double() - self.p(tau0)) @ E.T
        return y.to(x.dtype)


def make_moons(n: int, noise: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    """The two moons of sklearn's make_moons(noise), drawn with torch, scaled as the shared moons flows were
    trained: * 3 - 1 (float64, [n, 2]).

    Args:
        n: the number of points.
        noise: the std of the Gaussian noise added (default 0.2).
        generator: the torch.Generator to draw from; None: the global one.

    Returns:
        The points.
    """
    half = n // 2
    a_out = math.pi * torch.rand(half, generator=generator, dtype=torch.float64)
    a_in = math.pi * torch.rand(n - half, generator=generator, dtype=torch.float64)
    outer = torch.stack([torch.cos(a_out), torch.sin(a_out)], 1)
    inner = torch.stack([1 - torch.cos(a_in), 1 - torch.sin(a_in) - 0.5], 1)
    x = torch.cat([outer, inner]) + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x * 3 - 1
