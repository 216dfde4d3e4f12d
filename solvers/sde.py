"""Stochastic samplers: ancestral (DDPM / Euler-ancestral / DDIM-eta, DPM-Solver++(2S) ancestral), EDM churn,
DPM-Solver++(2M)/(3M) SDE and Restart sampling.

All are written in the EDM frame y = x / alpha, s = sigma / alpha (Karras et al. 2022), where every Gaussian-path
model is the variance-exploding process y = x0 + s eps; this is how k-diffusion's formulas (alpha = 1) carry over
to any schedule: x = alpha y at both ends of a step, and noise added to y with std s_up is noise alpha s_up in x.
Coefficients are written with ratios (s'/s = sigma' alpha / (sigma alpha'), sigma'/sigma) so that they stay finite
at pure noise (alpha = 0, flows). Noise comes from `ev.noise(j)`: a function of each sample's seed, step and draw.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import EvalPoint, Field
from diffsolve.grids import karras_sigmas
from diffsolve.kernels import lincomb
from diffsolve.solvers.base import Plan, Solver, StepCoefficients, get_solver, register
from diffsolve.solvers.dpm_solver import history_differences, lambda_of


# ------------------------------------------------------------------------------------------------
# EDM-frame helpers shared by every sampler here
# ------------------------------------------------------------------------------------------------
def edm_point(field: Field, s: float) -> EvalPoint:
    """The path point at EDM noise level s (t from the schedule's inverse), on the host."""
    if s == 0:
        return field.at(0.0)
    return field.at(float(field.schedule.t_from_edm_sigma(s)))


def sigma_ratio(p: EvalPoint, q: EvalPoint) -> float:
    """s_q / s_p, finite where alpha_p = 0 (s_p = inf gives 0)."""
    if p.sigma == 0:
        raise InvalidArgument("a step cannot start at zero noise")
    return (q.sigma * p.alpha) / (p.sigma * q.alpha) if q.alpha != 0 else math.inf


def ancestral_split(s_next: float, r: float, eta: float) -> tuple[float, float]:
    """(s_up, s_down) for a step from s to s_next = r s (k-diffusion get_ancestral_step, Karras et al. 2022):
    s_up = min(s', eta s' sqrt(1 - r^2)), s_down = sqrt(s'^2 - s_up^2). With eta = 1 this is the DDPM posterior
    q(x_s' | x_s, x0) in the EDM frame; with eta in [0, 1] it is DDIM's sigma_t(eta) (Song et al. 2021, eq. 16)."""
    if s_next == 0:
        return 0.0, 0.0
    s_up = min(s_next, eta * s_next * math.sqrt(max(0.0, 1.0 - r * r)))
    return s_up, math.sqrt(max(0.0, s_next * s_next - s_up * s_up))


def ancestral_euler_coefficients(p: EvalPoint, q: EvalPoint, s_down: float) -> tuple[float, float]:
    """x' = a x + b D for the Euler step from s_p down to s_down, landing on alpha_q:
    a = alpha_q s_down / sigma_p, b = alpha_q (1 - s_down alpha_p / sigma_p); finite at pure noise (alpha_p = 0)."""
    ratio = s_down / p.sigma
    return q.alpha * ratio, q.alpha * (1.0 - ratio * p.alpha)


def renoise_coefficients(p: EvalPoint, q: EvalPoint, s_noise: float = 1.0) -> tuple[float, float]:
    """x_q = a x_p + b z raises the noise level from s_p to s_q >= s_p: y_q = y_p + sqrt(s_q^2 - s_p^2) z
    (EDM Alg. 2 line 5; Restart's forward jump, Xu et al. 2023)."""
    sp, sq = p.s, q.s
    if sq < sp:
        raise InvalidArgument(f"cannot raise the noise level from s={sp:.6g} down to s={sq:.6g}")
    return q.alpha / p.alpha, q.alpha * math.sqrt(sq * sq - sp * sp) * s_noise


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name}={value!r}: must be a finite number >= 0")
    return value


class StochasticSolver(Solver):
    """Base of the SDE samplers: needs a Gaussian path, draws noise through ev.noise(j) (a function of each
    sample's seed, the step and the draw: a sample does not depend on the batch); they cannot invert."""

    deterministic = False
    needs_schedule = True
    order = 1               # weak order with the default options


# ------------------------------------------------------------------------------------------------
# Ancestral samplers
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AncestralStep(StepCoefficients):
    """One ancestral step's data: the Euler weights down to s_down and the weight of the added noise."""
    a: float                # x' = a x + b D + c z  (Euler-ancestral), or the 2S pieces below
    b: float
    c: float
    mid: EvalPoint | None = None      # DPM-Solver++(2S): intermediate point and its coefficients
    mid_ab: tuple[float, float] = (0.0, 0.0)
    b2: float = 0.0                   # weight of the intermediate data prediction in the final update


class EulerAncestral(StochasticSolver):
    """Euler-ancestral / DDPM / DDIM(eta): step down to s_down with Euler, add noise s_up (k-diffusion
    sample_euler_ancestral; with eta = 1 exactly DDPM's posterior sampling, Ho et al. 2020).

    Papers: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM); Song et al. 2021, "Denoising
    Diffusion Implicit Models" (DDIM eta); Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
    Generative Models"; Crowson, k-diffusion (sample_euler_ancestral).

    Args:
        eta: the share of the step's noise that is re-drawn: 1 is DDPM, 0 deterministic DDIM (default 1).
        s_noise: a scale on the added noise (1: exact). A negative eta or s_noise raises InvalidArgument.
        alias: the registry name reported (euler_ancestral, ddpm, ddim_eta).
    """

    name = "euler_ancestral"
    order = 1
    calls_per_step = 1
    citation = "Ho et al. 2020 (DDPM); Song et al. 2021 (DDIM eta); Karras et al. 2022 / k-diffusion"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, alias: str = "euler_ancestral"):
        self.eta = _check_nonneg("eta", eta)
        self.s_noise = _check_nonneg("s_noise", s_noise)
        self.name = alias

    def coefficients(self, field: Field, p: EvalPoint, q: EvalPoint) -> AncestralStep:
        """The Euler weights down to s_down and the noise weight s_up of one step."""
        r = sigma_ratio(p, q)
        s_up, s_down = ancestral_split(q.s, r, self.eta)
        # x' = alpha' [ (s_down/s) y + (1 - s_down/s) D + s_noise s_up z ],  y = x / alpha
        a, b = ancestral_euler_coefficients(p, q, s_down)
        return AncestralStep(a, b, q.alpha * self.s_noise * s_up)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: AncestralStep):
        """Euler down to s_down, then add fresh noise (see `Solver.step`)."""
        st = coeffs
        d = ev.denoise(x, t0)
        if st.c == 0.0:
            return lincomb((st.a, st.b), (x, d)), None, state
        return lincomb((st.a, st.b, st.c), (x, d, ev.noise(0))), None, state


class DPMSolverPP2SAncestral(StochasticSolver):
    """DPM-Solver++(2S) ancestral: a second-order singlestep step (midpoint in lambda) down to s_down, then noise
    s_up (k-diffusion sample_dpmpp_2s_ancestral; Lu et al. 2022b).

    Papers: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models";
    Crowson, k-diffusion (sample_dpmpp_2s_ancestral).

    Args:
        eta: the share of the step's noise that is re-drawn (default 1).
        s_noise: a scale on the added noise.
    """

    name = "dpmpp_2s_ancestral"
    order = 1
    calls_per_step = 2
    citation = "Lu et al. 2022b (DPM-Solver++ 2S); k-diffusion sample_dpmpp_2s_ancestral"

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        self.eta = _check_nonneg("eta", eta)
        self.s_noise = _check_nonneg("s_noise", s_noise)

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Two model calls per step, one fewer when the grid ends at zero noise (that step takes one)."""
        return 2 * steps - (1 if ends_at_zero else 0)

    def count_calls(self, coeffs: tuple, field: Field, pts) -> int:
        """The planned run's model evaluations."""
        return sum(1 if co.mid is None else 2 for co in coeffs)

    def coefficients(self, field: Field, p: EvalPoint, q: EvalPoint) -> AncestralStep:
        """The midpoint, update and noise weights of one step."""
        r = sigma_ratio(p, q)
        s_up, s_down = ancestral_split(q.s, r, self.eta)
        c = q.alpha * self.s_noise * s_up
        if s_down == 0.0 or not math.isfinite(p.s):
            # Down to zero noise (or up from pure noise, where log s is infinite): the first-order step.
            a, b = ancestral_euler_coefficients(p, q, s_down)
            return AncestralStep(a, b, c)
        down = s_down / p.s
        h = math.log(p.s) - math.log(s_down)
        mid = edm_point(field, math.sqrt(p.s * s_down))
        # y2 = (s_mid/s) y - expm1(-h/2) D ; y' = (s_down/s) y - expm1(-h) D2
        mid_ab = (mid.alpha * math.exp(-0.5 * h) / p.alpha, -mid.alpha * math.expm1(-0.5 * h))
        return AncestralStep(q.alpha * down / p.alpha, 0.0, c, mid, mid_ab, -q.alpha * math.expm1(-h))

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: AncestralStep):
        """A DPM-Solver++(2S) step down to s_down, then fresh noise (see `Solver.step`)."""
        st = coeffs
        d = ev.denoise(x, t0)
        if st.mid is None:
            terms, weights = [x, d], [st.a, st.b]
        else:
            d2 = ev.denoise(lincomb(st.mid_ab, (x, d)), st.mid)
            terms, weights = [x, d2], [st.a, st.b2]
        if st.c != 0.0:
            terms.append(ev.noise(0))
            weights.append(st.c)
        return lincomb(weights, terms), None, state


# ------------------------------------------------------------------------------------------------
# "Raise the noise level, then take deterministic steps": EDM churn and Restart share this
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """Optionally jump up in noise (x <- a x + b z, noise draw `draw`), then run the inner solver's plan."""

    up: tuple[float, float] | None
    draw: int
    plan: Plan


def _inner_solver(inner: str | Solver) -> Solver:
    if not isinstance(inner, (str, Solver)):
        raise InvalidArgument(f"inner={inner!r}: must be a deterministic solver's name or a Solver")
    try:
        solver = get_solver(inner)
    except InvalidArgument as e:
        raise InvalidArgument(f"inner={inner!r}: {e}") from None
    if not solver.deterministic or solver.adaptive:
        raise InvalidArgument(f"inner={solver.name!r}: the inner solver must be deterministic")
    return solver


@dataclass(frozen=True)
class RenoiseStep(StepCoefficients):
    """The segments one step runs, in order."""

    segments: tuple[Segment, ...]


class RenoiseSolver(StochasticSolver):
    """Base for samplers whose step is a list of Segments (noise jump + deterministic inner solve).

    Args:
        inner: the deterministic solver of each segment: a registry name or a Solver (default "heun").
    """

    def __init__(self, inner: str | Solver = "heun"):
        self.inner = _inner_solver(inner)

    def _times(self, field: Field, s_values: Sequence[float]) -> torch.Tensor:
        return torch.tensor([0.0 if s == 0 else float(field.schedule.t_from_edm_sigma(s)) for s in s_values],
                            dtype=torch.float64)

    def segment(self, field: Field, p: EvalPoint, t_sub: torch.Tensor, draw: int,
                s_noise: float) -> Segment:
        """Jump from p up to t_sub[0] (if higher), then solve along t_sub with the inner solver."""
        sub = self.inner.plan(field, t_sub)
        up = None
        if float(t_sub[0]) != p.t:
            up = renoise_coefficients(p, sub.points[0], s_noise)
        return Segment(up, draw, sub)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: "RenoiseStep"):
        """Run the step's segments in order: noise jump, then the inner solver's sub-plan."""
        for seg in coeffs.segments:
            if seg.up is not None:
                x = lincomb(seg.up, (x, ev.noise(seg.draw)))
            sub = seg.plan
            st = self.inner.init(sub)
            for k in range(sub.steps):
                x, _, st = self.inner.step(ev, x, sub.points[k], sub.points[k + 1], st, sub.coeffs[k])
        return x, None, state

    def _finish(self, t: torch.Tensor, pts, data) -> Plan:
        return Plan(t=t, points=pts, coeffs=tuple(RenoiseStep(tuple(segs)) for segs in data),
                    nfe=sum(seg.plan.nfe for segs in data for seg in segs))


class EDMChurn(RenoiseSolver):
    """EDM stochastic sampler (Karras et al. 2022, Alg. 2): s_hat = s (1 + gamma), gamma = min(S_churn/N, sqrt2 - 1)
    inside [S_tmin, S_tmax]; add noise sqrt(s_hat^2 - s^2) S_noise; a Heun step (or `inner`) from s_hat to s'.

    Paper: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Alg. 2.

    Args:
        S_churn: the total churn over the run (gamma = min(S_churn / N, sqrt2 - 1) per step; default 40).
        S_tmin: the lowest EDM noise level at which churn is added (default 0.05).
        S_tmax: the highest (default 50).
        S_noise: a scale on the added noise (default 1).
        inner: the deterministic step after the churn: "heun" (default; euler_churn: "euler") or a Solver.
        alias: the registry name reported (edm_churn, euler_churn).
    """

    name = "edm_churn"
    order = 1
    calls_per_step = 2
    citation = "Karras et al. 2022, Alg. 2"

    def __init__(self, S_churn: float = 40.0, S_tmin: float = 0.05, S_tmax: float = 50.0, S_noise: float = 1.0,
                 inner: str | Solver = "heun", alias: str = "edm_churn"):
        super().__init__(inner)
        self.S_churn = _check_nonneg("S_churn", S_churn)
        self.S_tmin = _check_nonneg("S_tmin", S_tmin)
        self.S_tmax = float(S_tmax)
        if not self.S_tmax >= self.S_tmin:
            raise InvalidArgument(f"S_tmax={S_tmax!r}: must be >= S_tmin={S_tmin!r}")
        self.S_noise = _check_nonneg("S_noise", S_noise)
        self.name = alias
        self.calls_per_step = self.inner.calls_per_step

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """The inner solver's model calls for `steps` steps (churn costs none)."""
        return self.inner.model_calls(steps, field, ends_at_zero)

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """Each step's churn (noise jump) and inner sub-plan from s_hat to the next level."""
        self.check_field(field)
        pts = self.grid_points(field, t)
        n = len(pts) - 1
        data = []
        for i in range(n):
            p, s = pts[i], pts[i].s
            gamma = min(self.S_churn / n, math.sqrt(2.0) - 1.0) if self.S_tmin <= s <= self.S_tmax else 0.0
            t_hat = float(t[i]) if gamma == 0 else float(field.schedule.t_from_edm_sigma(s * (1.0 + gamma)))
            sub_t = torch.tensor([t_hat, float(t[i + 1])], dtype=torch.float64)
            data.append((self.segment(field, p, sub_t, 0, self.S_noise),))
        return self._finish(t, pts, data)


class Restart(RenoiseSolver):
    """Restart sampling (Xu et al. 2023): Heun along the grid; on reaching the grid point nearest each interval's
    s_min, K times jump forward to s_max with fresh noise sqrt(s_max^2 - s_min^2) z and re-solve back with `steps`
    Heun steps on a Karras (rho = 7) sub-grid. Intervals are given in EDM noise levels s = sigma / alpha.

    Paper: Xu et al. 2023, "Restart Sampling for Improving Generative Processes".

    Args:
        restart: a list of (s_min, s_max, K, steps): K restarts from s_min up to s_max, each re-solved in `steps` Heun
            steps (default ((0.06, 0.30, 2, 3),)).
        inner: the deterministic solver (default "heun").
        s_noise: a scale on the restart noise (default 1).
    A malformed restart list raises InvalidArgument (need 0 < s_min < s_max < inf, integers K, steps >= 1).
    """

    name = "restart"
    order = 1
    calls_per_step = 2
    citation = "Xu et al. 2023, Restart Sampling for Improving Generative Processes, Alg. 1"

    def __init__(self, restart: Sequence[Sequence[float]] = ((0.06, 0.30, 2, 3),), inner: str | Solver = "heun",
                 s_noise: float = 1.0):
        super().__init__(inner)
        checked = []
        if isinstance(restart, (str, bytes)) or not isinstance(restart, Sequence) or not restart:
            raise InvalidArgument(f"restart={restart!r}: must be a non-empty list of (s_min, s_max, K, steps)")
        for item in restart:
            if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 4:
                raise InvalidArgument(f"restart={restart!r}: each entry is (s_min, s_max, K, steps)")
            if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in item[:2]):
                raise InvalidArgument(f"restart interval {tuple(item)!r}: s_min and s_max must be numbers")
            lo, hi, K, n = float(item[0]), float(item[1]), item[2], item[3]
            if not (0 < lo < hi and math.isfinite(hi)):
                raise InvalidArgument(f"restart interval {tuple(item)!r}: need 0 < s_min < s_max < inf")
            if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in (K, n)):
                raise InvalidArgument(f"restart interval {tuple(item)!r}: K and steps must be integers >= 1")
            checked.append((lo, hi, int(K), int(n)))
        self.restart = tuple(checked)
        self.s_noise = _check_nonneg("s_noise", s_noise)

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """The main grid's calls plus every restart interval's K re-solves."""
        extra = sum(K * self.inner.model_calls(n, field, False) for _, _, K, n in self.restart)
        return self.inner.model_calls(steps, field, ends_at_zero) + extra

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The inner grid, with each restart's K jumps and Karras sub-grids at the grid point nearest its s_min."""
        self.check_field(field)
        pts = self.grid_points(field, t)
        n = len(pts) - 1
        data = [[self.segment(field, pts[i], t[i:i + 2].clone(), 0, self.s_noise)] for i in range(n)]
        for lo, hi, K, m in self.restart:
            inner_idx = [j for j in range(1, n + 1) if pts[j].s > 0]
            if not inner_idx:
                raise InvalidArgument("restart needs a grid with at least one point above zero noise after the start")
            j = min(inner_idx, key=lambda k: abs(pts[k].s - lo))
            if pts[j].s >= hi:
                raise InvalidArgument(f"restart interval (s_min={lo:g}, s_max={hi:g}): the grid point nearest s_min "
                                      f"has s={pts[j].s:.4g} >= s_max; use a finer grid or a wider interval")
            sub_t = self._times(field, karras_sigmas(pts[j].s, hi, m + 1).tolist())
            sub_t[-1] = t[j]
            for k in range(K):
                data[j - 1].append(self.segment(field, pts[j], sub_t, len(data[j - 1]), self.s_noise))
        return self._finish(t, pts, [tuple(d) for d in data])


# ------------------------------------------------------------------------------------------------
# DPM-Solver++(2M) SDE and (3M) SDE
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SDEMultistepCoefficients(StepCoefficients):
    """x' = a x + sum_k b[k] D_{i-k} + c z, history newest first."""

    a: float
    b: tuple[float, ...]
    c: float


class DPMSolverPPSDE(StochasticSolver):
    """DPM-Solver++(2M) SDE / (3M) SDE (k-diffusion sample_dpmpp_2m_sde / sample_dpmpp_3m_sde; Lu et al. 2022b;
    Gonzalez et al. 2023 SEEDS): x' = (s'/s) e^{-eta h} x + (1 - e^{-(1+eta) h}) D + history correction
    + s' sqrt(1 - e^{-2 eta h}) S_noise z in the EDM frame, h = lambda' - lambda.

    Papers: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models";
    Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models";
    Crowson, k-diffusion (sample_dpmpp_2m_sde / sample_dpmpp_3m_sde).

    Args:
        history: 2 for (2M) SDE, 3 for (3M) SDE.
        eta: the noise share (0: the deterministic multistep method).
        s_noise: a scale on the added noise.
        solver_type: "midpoint" or "heun" (k-diffusion's 2M SDE variants).
        alias: the registry name reported; None: dpmpp_<history>m_sde.
    """

    calls_per_step = 1
    citation = "Lu et al. 2022b (DPM-Solver++); k-diffusion sample_dpmpp_2m_sde / sample_dpmpp_3m_sde"

    def __init__(self, history: int = 2, eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint",
                 alias: str | None = None):
        if history not in (2, 3):
            raise InvalidArgument(f"history={history!r}; allowed values: 2, 3")
        check_choice("solver_type", solver_type, ("midpoint", "heun"))
        self.history = history
        self.eta = _check_nonneg("eta", eta)
        self.s_noise = _check_nonneg("s_noise", s_noise)
        self.solver_type = solver_type
        self.name = alias or f"dpmpp_{history}m_sde"
        # Weak order is 1 with noise (eta > 0). With eta = 0 they are the deterministic multistep methods; the 3M
        # history term is k-diffusion's, which halves the second difference, so (3M) is then of order 2 too.
        self.order = 1 if self.eta > 0 else 2

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The grid's points and each step's multistep and noise weights (see `Solver.plan`)."""
        self.check_field(field)
        pts = self.grid_points(field, t)
        lam = [lambda_of(p) for p in pts]
        data, hs = [], []
        for i, (p, q) in enumerate(zip(pts[:-1], pts[1:])):
            if q.sigma == 0:
                data.append(SDEMultistepCoefficients(0.0, (q.alpha,), 0.0))   # to zero noise: x' = alpha' D
                hs.append(math.inf)
                continue
            h = lam[i + 1] - lam[i]
            he = h * (1.0 + self.eta)
            a = (q.sigma / p.sigma) * (math.exp(-self.eta * h) if self.eta > 0 else 1.0)
            c1 = -math.expm1(-he)
            c = q.sigma * math.sqrt(-math.expm1(-2.0 * self.eta * h)) * self.s_noise if self.eta > 0 else 0.0
            b = [c1, 0.0, 0.0]
            # History terms only across finite log-SNR steps (none after a start at pure noise).
            ok1 = bool(hs) and math.isfinite(hs[-1]) and math.isfinite(h)
            ok2 = ok1 and len(hs) >= 2 and math.isfinite(hs[-2])
            phi2 = math.expm1(-he) / he + 1.0
            if self.history == 3 and ok2:
                r0, r1 = hs[-1] / h, hs[-2] / h
                phi3 = phi2 / he - 0.5
                d1, d2 = history_differences(r0, r1)
                b = [bk + phi2 * float(x1) - phi3 * float(x2) for bk, x1, x2 in zip(b, d1, d2)]
            elif ok1:
                r = hs[-1] / h
                if self.history == 3:
                    w = phi2 / r                    # 3M's second step: x += phi2 (D - D1) / r
                elif self.solver_type == "heun":
                    w = (c1 / (-he) + 1.0) / r
                else:
                    w = 0.5 * c1 / r
                b = [b[0] + w, -w, 0.0]
            while len(b) > 1 and b[-1] == 0.0:
                b.pop()
            data.append(SDEMultistepCoefficients(a, tuple(q.alpha * v for v in b), c))
            hs.append(h)
        return Plan(t=t, points=pts, coeffs=tuple(data), nfe=len(pts) - 1)

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: SDEMultistepCoefficients):
        """One SDE multistep update with fresh noise (see `Solver.step`)."""
        co = coeffs
        d = ev.denoise(x, t0)
        history = (d, *state)
        weights, terms = [co.a, *co.b], [x, *history[: len(co.b)]]
        if co.c != 0.0:
            weights.append(co.c)
            terms.append(ev.noise(0))
        return lincomb(weights, terms), None, history[: self.history - 1]


register("euler_ancestral", EulerAncestral, "Euler-ancestral (eta, s_noise), weak order 1")
register("ddpm", EulerAncestral, "DDPM ancestral sampling = Euler-ancestral with eta=1", eta=1.0, alias="ddpm")
register("ddim_eta", EulerAncestral, "DDIM with eta > 0 (stochastic DDIM) = Euler-ancestral(eta)",
         defaults={"eta": 1.0},
         alias="ddim_eta")
register("dpmpp_2s_ancestral", DPMSolverPP2SAncestral, "DPM-Solver++(2S) ancestral, 2 calls per step")
register("edm_churn", EDMChurn, "EDM stochastic sampler (Karras Alg. 2): churn + Heun")
register("euler_churn", EDMChurn, "EDM churn + Euler step (k-diffusion sample_euler with s_churn)", inner="euler",
         alias="euler_churn")
register("restart", Restart, "Restart sampling (Xu et al. 2023), Heun inner solver")
register("dpmpp_2m_sde", DPMSolverPPSDE, "DPM-Solver++(2M) SDE (solver_type midpoint/heun, eta)", history=2)
register("dpmpp_3m_sde", DPMSolverPPSDE, "DPM-Solver++(3M) SDE (eta)", history=3)
