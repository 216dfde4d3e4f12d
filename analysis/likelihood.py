"""Log-likelihood through the probability-flow ODE: the instantaneous change of variables.

Along the ODE dx/dt = f(x, t) the log density obeys d log p_t(x(t)) / dt = -div f (Chen et al. 2018, Neural
ODEs; Grathwohl et al. 2019, FFJORD; Song et al. 2021, score SDE, appendix D.2). Integrating the augmented state
[x, delta] from the data end t_start to t_end (the schedule's t_max) gives

    log p_{t_start}(x) = log p_prior(x(t_end)) + int_{t_start}^{t_end} div f dt.

Variables. For a Gaussian path that does not reach pure noise the ODE is integrated in the EDM frame,
y = x / alpha, against u = log s (s = sigma / alpha), where dy/du = y - D(alpha y) is smooth over the many decades
of s (`frame="logs"`); the density of x then differs from that of y by the Jacobian d log alpha at each end.
There div(y - D) = d - div D: the constant part integrates in closed form to d (u_end - u_start) and the ODE
carries only -div D, so the step-size control sees the part that needs resolving (with rtol = 1e-5 on the whole
integral, which is d log(s_max / s_min), about 170 nats for 16 dimensions on EDM, the error would be 100 times
larger).
Paths that end at pure noise (alpha = 0, rectified flow) and plain velocity fields use native time, dx/dt = v
(`frame="time"`).

Divergence. `divergence="exact"` sums the Jacobian's diagonal with one vector-Jacobian product per dimension;
`"hutchinson"` is the Hutchinson-Skilling estimate v^T J v averaged over `probes` probe vectors (Rademacher or
Gaussian) that stay fixed for the whole solve (FFJORD), so the ODE stays deterministic for the step-size control.
Probes and dequantization noise come from noise.NoiseSource: a function of each sample's seed (a list gives
each sample its own), never of its batch mates. Each evaluation builds a graph for the divergence only
(torch.enable_grad inside the slope) and returns detached values: memory does not grow with the steps.

Solvers. `solver="dopri5"` (or dopri8, bosh3, adaptive_heun) runs torchdiffeq.odeint with rtol / atol (1e-5 as is
usual for likelihoods); a Runge-Kutta name of diffsolve's registry (euler, heun, midpoint, rk3, rk4, ...) runs
that tableau on a fixed grid of `steps` steps uniform in u (log s, i.e. log-SNR uniform, or t). The adaptive
controller judges the worst sample (its RMS error over its own entries and its log-density increment, the
DPM-Solver batch rule), not torchdiffeq's RMS over the whole batch, which lets one hard sample's error grow; the
steps are still shared, so a sample's value depends on its batch mates within the tolerance. Fixed grids are
exactly per sample.

Prior. By default N(0, prior_std(t_end)^2 I), the schedule's own terminal distribution (the data's share at
t_end ignored, as the sampler does); `prior=` takes any callable giving the exact terminal log density.

Dequantization. For discrete data (`dequantize="uniform"`, `bins` levels spread over `data_range`) each value is
moved to its bin, k, and replaced by lo + (hi - lo)(k + u)/bins with u ~ U(0, 1) (seeded); the reported
`log_prob` is then the log probability of the discrete data in nats (the dequantization bound, one noise draw):
the density's log plus d log((hi - lo)/bins), the Jacobian of scaling bins of width 1 to data_range, and
`bits_per_dim = -log_prob / (d ln 2)`. The result's `dequantization` says what was done.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torchdiffeq

from diffsolve.analysis.likelihood_checks import ADAPTIVE, check_data, check_flow, check_numbers, check_span
from diffsolve.errors import InvalidArgument
from diffsolve.field import EvalPoint, Field, as_field
from diffsolve.loop import Evaluator
from diffsolve.noise import NoiseSource
from diffsolve.solvers.runge_kutta import TABLEAUX, ButcherTableau

__all__ = ["likelihood", "LikelihoodResult", "gaussian_log_prob"]

EULER = ButcherTableau("euler", (0,), ((),), (1,), 1)


@dataclass
class LikelihoodResult:
    """Per-sample log-likelihoods ([batch] float64 tensors) and how they were computed.

    Attributes:
        log_prob: Nats per sample (of the discrete data when dequantized).
        bits_per_dim: -log_prob / (d ln 2).
        prior_log_prob: log p_prior(x(t_end)), in x's units.
        delta_log_prob: log_prob - prior_log_prob: the ODE's integral (and Jacobian terms).
        nfe: Model evaluations per sample (forward passes).
        vjps: Vector-Jacobian products per sample.
        latent: x(t_end).
        dequantization: What was done to the data (none, or the uniform dequantization and its bins).
        divergence: How the divergence was computed (exact, or Hutchinson with its probes).
        solver: The solver's name.
        frame: The frame integrated in: 'logs' (EDM frame against log s) or 'time'.
        t_start: The data end of the span, in model time.
        t_end: The noise end of the span, in model time.
        stats: The solve's settings (rtol and atol, or fixed steps), the prior used and the model kwargs' names.
    """

    log_prob: torch.Tensor           # nats per sample (of the discrete data when dequantized)
    bits_per_dim: torch.Tensor
    prior_log_prob: torch.Tensor     # log p_prior(x(t_end)), in x's units
    delta_log_prob: torch.Tensor     # log_prob - prior_log_prob: the ODE's integral (and Jacobian terms)
    nfe: int                         # model evaluations per sample (forward passes)
    vjps: int                        # vector-Jacobian products per sample
    latent: torch.Tensor             # x(t_end)
    dequantization: str
    divergence: str
    solver: str
    frame: str
    t_start: float
    t_end: float
    stats: dict


def gaussian_log_prob(x: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """log N(x; 0, std^2 I) per sample ([B, ...] -> [B], float64).

    Args:
        x: The samples, [B, ...].
        std: Standard deviation of the Gaussian.

    Returns:
        The log densities, [B] float64.
    """
    z = x.reshape(x.shape[0], -1).to(torch.float64)
    d = z.shape[1]
    return -0.5 * (z / std).pow(2).sum(1) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def _uniform_from_normal(z: torch.Tensor) -> torch.Tensor:
    u = 0.5 * (1.0 + torch.erf(z.to(torch.float64) / math.sqrt(2.0)))
    return u.clamp(1e-12, 1 - 1e-12)


class _Slope:
    """The augmented slope (dy/du, d delta/du) with the divergence by VJPs; counts evaluations."""

    def __init__(self, ev: Evaluator, frame: str, u_to_t: Callable[[float], float], probes: list | None):
        self.ev, self.frame, self.u_to_t, self.probes = ev, frame, u_to_t, probes
        self.vjps = 0

    def point(self, u: float) -> EvalPoint:
        return self.ev.field.at(self.u_to_t(u))

    def __call__(self, u: float, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.point(u)
        with torch.enable_grad():
            yy = y.detach().requires_grad_(True)
            if self.frame == "logs":
                # dy/du = y - D: the divergence of the linear part is the constant d, integrated in closed form
                # by the caller; the ODE carries -div D only (a much smaller integral: better step control).
                d = self.ev.denoise(yy * p.alpha if p.alpha != 1.0 else yy, p)
                div = -self.divergence(d, yy)
                out = yy.detach() - d.detach()
            else:
                out = self.ev.velocity(yy, p)
                div = self.divergence(out, yy)
        return out.detach(), div.detach()

    def divergence(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B = y.shape[0]
        if self.probes is None:
            flat = out.reshape(B, -1)
            n = flat.shape[1]
            div = torch.zeros(B, dtype=torch.float64, device=y.device)
            for i in range(n):
                (g,) = torch.autograd.grad(flat[:, i].sum(), y, retain_graph=i < n - 1)
                div += g.reshape(B, -1)[:, i].to(torch.float64)
            self.vjps += n
            return div
        div = torch.zeros(B, dtype=torch.float64, device=y.device)
        for k, v in enumerate(self.probes):
            (g,) = torch.autograd.grad(out, y, grad_outputs=v, retain_graph=k < len(self.probes) - 1)
            div += (g * v).reshape(B, -1).sum(1).to(torch.float64)
        self.vjps += len(self.probes)
        return div / len(self.probes)


def _fixed_rk(slope: _Slope, tab: ButcherTableau, y: torch.Tensor, us: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    delta = torch.zeros(y.shape[0], dtype=torch.float64, device=y.device)
    for u0, u1 in zip(us[:-1], us[1:]):
        h = u1 - u0
        ks, ls = [], []
        for j in range(tab.stages):
            a = [h * float(v) for v in tab.a[j]]
            yj = y + sum(c * k for c, k in zip(a, ks)) if any(a) else y
            uj = u0 + float(tab.c[j]) * h if float(tab.c[j]) != 1.0 else u1
            k, l_ = slope(uj, yj)
            ks.append(k)
            ls.append(l_)
        y = y + sum(h * float(b) * k for b, k in zip(tab.b, ks) if float(b) != 0.0)
        delta = delta + sum(h * float(b) * l_ for b, l_ in zip(tab.b, ls) if float(b) != 0.0)
    return y, delta


def likelihood(model_or_field: Any, x: torch.Tensor, *, divergence: str = "exact", probes: int = 1,
               probe: str = "rademacher", seed: Any = None, solver: str = "dopri5", rtol: float = 1e-5,
               atol: float = 1e-5, steps: int | None = None, dequantize: str | None = None, bins: int = 256,
               data_range: tuple[float, float] | None = None, t_start: float | None = None,
               t_end: float | None = None, prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
               frame: str = "auto", dtype: Any = None, **model_kwargs: Any) -> LikelihoodResult:
    """Per-sample log-likelihood of `x` under the model's probability-flow ODE (see the module docstring).

    Args:
        model_or_field: A model or field with a probability-flow ODE.
        x: The data, a finite floating [batch, *sample_shape] tensor.
        divergence: "exact" (one VJP per dimension) or "hutchinson" (`probes` probe vectors).
        probes: Hutchinson probe vectors per sample.
        probe: "rademacher" or "gaussian".
        seed: An int, or one per sample: seeds the probes and the dequantization noise; None takes them from
            torch's global generator.
        solver: An adaptive torchdiffeq method (dopri5, dopri8, bosh3, adaptive_heun) or a Runge-Kutta tableau.
        rtol: Relative tolerance of an adaptive solver.
        atol: Absolute tolerance of an adaptive solver.
        steps: Steps of a fixed-grid solver (required there).
        dequantize: None, or "uniform" for discrete data.
        bins: Quantization levels of the discrete data.
        data_range: (low, high) of the data; None takes the model's declared range.
        t_start: The data end: the value is log p_{t_start}(x); None takes the schedule's t_min.
        t_end: The noise end; None takes t_max.
        prior: Exact terminal log density, [B, ...] -> [B]; None takes N(0, prior_std(t_end)^2 I).
        frame: "auto", "logs" (EDM frame against log s) or "time".
        dtype: Dtype to run in; None keeps `x`'s.
        **model_kwargs: Passed to the model at every evaluation.

    Returns:
        The log-likelihoods, bits per dimension, their parts and how they were computed.

    Raises:
        InvalidArgument: A setting or the data fails its check, the model has no probability-flow ODE, an
            adaptive solver cannot meet the tolerances, or the log-likelihood came out NaN or Inf.
    """
    field: Field = as_field(model_or_field)
    check_flow(field)
    probes, steps, rtol, atol, bins = check_numbers(
        divergence=divergence, probes=probes, probe=probe, frame=frame, dequantize=dequantize, solver=solver,
        steps=steps, rtol=rtol, atol=atol, bins=bins)
    t_start, t_end = check_span(field, t_start, t_end)
    x = check_data(field, x, dtype)
    noise = NoiseSource.for_run(x.shape, seed=seed, device=x.device, dtype=x.dtype)
    x, jac, how = _data_end(field, x, noise, dequantize, bins, data_range)
    span = _Span.of(field, t_start, t_end, frame)
    vs, how_div = _probe_vectors(noise, divergence, probes, probe, x[0].numel())
    ev = Evaluator(field, model_kwargs, check_finite=False)
    slope = _Slope(ev, span.frame, span.u_to_t, vs)
    y0 = x / span.p_start.alpha if span.frame == "logs" else x
    with torch.no_grad():
        if solver in ADAPTIVE:
            y1, delta, stats = _solve_adaptive(slope, y0, span.u0, span.u1, solver, rtol, atol)
        else:
            y1, delta, stats = _solve_fixed(slope, y0, span.u0, span.u1, solver, steps)
    x1 = y1 * span.p_end.alpha if span.frame == "logs" and span.p_end.alpha != 1.0 else y1
    prior_lp, how_prior = _prior_log_prob(field, x1, prior, span.te)
    log_density = prior_lp + span.log_density_change(delta.to(torch.float64), x[0].numel())
    if not torch.isfinite(log_density).all():
        raise InvalidArgument("the log-likelihood came out NaN/Inf; check the model, t_start and t_end")
    log_prob = log_density + jac if dequantize == "uniform" else log_density
    bpd = -(log_density + jac) / (x[0].numel() * math.log(2.0))
    stats.update(prior=how_prior, model_kwargs=sorted(model_kwargs))
    return LikelihoodResult(log_prob=log_prob, bits_per_dim=bpd, prior_log_prob=prior_lp,
                            delta_log_prob=log_prob - prior_lp, nfe=ev.nfe, vjps=slope.vjps, latent=x1,
                            dequantization=how, divergence=how_div, solver=solver, frame=span.frame,
                            t_start=span.ts, t_end=span.te, stats=stats)


def _data_end(field: Field, x: torch.Tensor, noise: NoiseSource, dequantize: str | None, bins: int,
              data_range: tuple[float, float] | None) -> tuple[torch.Tensor, float, str]:
    """The data end: (x, dequantized when asked; the Jacobian term in nats; what was done)."""
    d = x[0].numel()
    rng = data_range if data_range is not None else getattr(field, "data_range", None)
    if rng is not None:
        lo, hi = float(rng[0]), float(rng[1])
        if not hi > lo:
            raise InvalidArgument(f"data_range={rng!r}: must be (low, high) with low < high")
    if dequantize == "uniform":
        if rng is None:
            raise InvalidArgument("dequantize='uniform' needs data_range=(low, high) (the model declares none)")
        k = torch.round((x.to(torch.float64) - lo) / (hi - lo) * (bins - 1)).clamp(0, bins - 1)
        u = _uniform_from_normal(noise.draw(0, 0))
        x = (lo + (hi - lo) * (k + u) / bins).to(x.dtype)
        jac = d * math.log((hi - lo) / bins)
        return x, jac, (f"uniform: each value moved to its bin k of {bins} over [{lo:g}, {hi:g}] and replaced by "
                        f"lo + (hi - lo)(k + u)/{bins}, u ~ U(0,1) (one seeded draw); log_prob is the discrete "
                        f"data's (dequantization bound) and includes d log((hi - lo)/{bins}) = {jac:.6g} nats")
    if rng is not None:
        jac = d * math.log((hi - lo) / bins)
        return x, jac, (f"none: x taken as continuous; bits_per_dim is that of x scaled from [{lo:g}, {hi:g}] to "
                        f"[0, {bins}] (includes d log((hi - lo)/{bins}) = {jac:.6g} nats); log_prob is the density "
                        "of x")
    return x, 0.0, "none: log_prob and bits_per_dim are those of the continuous density of x in its own units"


@dataclass
class _Span:
    """The integration span [ts, te] in model time, its frame, and the solver's variable u from u0 to u1."""

    ts: float
    te: float
    p_start: EvalPoint
    p_end: EvalPoint
    frame: str
    u0: float
    u1: float
    u_to_t: Callable[[float], float]

    @classmethod
    def of(cls, field: Field, t_start: float | None, t_end: float | None, frame: str) -> "_Span":
        sch = field.schedule
        if sch is not None:
            ts = float(sch.t_min if t_start is None else t_start)
            te = float(sch.t_max if t_end is None else t_end)
        else:
            ts = 0.0 if t_start is None else float(t_start)
            te = 1.0 if t_end is None else float(t_end)
        if not te > ts:
            raise InvalidArgument(f"t_end={te:g} must lie above t_start={ts:g}")
        p_start, p_end = field.at(ts), field.at(te)
        if frame == "auto":
            frame = "logs" if sch is not None and p_end.alpha > 0 and p_start.sigma > 0 else "time"
        if frame == "time":
            return cls(ts, te, p_start, p_end, frame, ts, te, float)
        if sch is None or not (p_end.alpha > 0 and p_start.sigma > 0):
            raise InvalidArgument("frame='logs' needs a Gaussian path with 0 < s < inf at both ends; use "
                                  "frame='time', or t_start > 0 and t_end below pure noise")
        u0, u1 = math.log(p_start.s), math.log(p_end.s)
        ends = {u0: ts, u1: te}
        u_to_t = lambda u: ends[u] if u in ends else float(sch.t_from_edm_sigma(math.exp(u)))  # noqa: E731
        return cls(ts, te, p_start, p_end, frame, u0, u1, u_to_t)

    def log_density_change(self, delta: torch.Tensor, d: int) -> torch.Tensor:
        """The ODE's integral plus the terms the frame integrated in closed form."""
        if self.frame != "logs":
            return delta
        # log p_x = log p_y - d log alpha at each end: the ODE ran on y = x / alpha.
        return (delta + d * (self.u1 - self.u0)
                + d * (math.log(self.p_end.alpha) - math.log(self.p_start.alpha)))


def _probe_vectors(noise: NoiseSource, divergence: str, probes: int, probe: str, d: int) -> tuple[list | None, str]:
    if divergence != "hutchinson":
        return None, f"exact ({d} VJPs per evaluation)"
    vs = [noise.draw(k, 1) for k in range(probes)]
    if probe == "rademacher":
        vs = [torch.where(v >= 0, torch.ones_like(v), -torch.ones_like(v)) for v in vs]
    return vs, f"hutchinson ({probes} {probe} probe(s), fixed over the solve)"


def _solve_adaptive(slope: _Slope, y0: torch.Tensor, u0: float, u1: float, solver: str, rtol: float,
                    atol: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    B = y0.shape[0]

    def func(u, state):
        return slope(float(u), state[0])

    tt = torch.tensor([u0, u1], dtype=torch.float64, device=y0.device)
    # Exact ends for the inverse map (float64 times; torchdiffeq passes them back as given).
    zero = torch.zeros(B, dtype=torch.float64, device=y0.device)
    n_y = y0.numel()

    def per_sample_norm(state) -> torch.Tensor:
        # The worst sample's RMS over its own entries and its log-density increment (DPM-Solver's batch
        # rule): each sample's error is held to the tolerance, not an average over the batch.
        if isinstance(state, torch.Tensor):
            ys_, ds_ = state[:n_y].reshape(B, -1), state[n_y:].reshape(B, 1)
        else:
            ys_, ds_ = state[0].reshape(B, -1), state[1].reshape(B, 1)
        return torch.cat([ys_.to(ds_.dtype), ds_], 1).pow(2).mean(1).sqrt().max()

    try:
        ys = torchdiffeq.odeint(func, (y0, zero), tt, method=solver, rtol=rtol, atol=atol,
                                options={"norm": per_sample_norm})
    except AssertionError as e:       # torchdiffeq asserts when its step size underflows
        raise InvalidArgument(f"{solver} could not meet rtol={rtol:g}, atol={atol:g} ({e}); loosen the tolerances "
                              "or use a fixed-step solver with steps=") from None
    return ys[0][-1], ys[1][-1], {"rtol": rtol, "atol": atol}


def _solve_fixed(slope: _Slope, y0: torch.Tensor, u0: float, u1: float, solver: str,
                 steps: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    tab = EULER if solver == "euler" else TABLEAUX[solver]          # check_numbers allowed exactly these
    us = [u0 + (u1 - u0) * i / steps for i in range(steps + 1)]
    us[-1] = u1
    y1, delta = _fixed_rk(slope, tab, y0, us)
    return y1, delta, {"steps": steps}


def _prior_log_prob(field: Field, x1: torch.Tensor, prior: Callable | None, te: float) -> tuple[torch.Tensor, str]:
    if prior is None:
        sch = field.schedule
        std = sch.prior_std(te) if sch is not None else 1.0
        return gaussian_log_prob(x1, std), f"N(0, {std:g}^2 I)"
    return torch.as_tensor(prior(x1), dtype=torch.float64).reshape(x1.shape[0]), "user-supplied"
