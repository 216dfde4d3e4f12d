"""torchsde bridge: the reverse-time SDE of a Gaussian-path field handed to `torchsde.sdeint` (Li et al. 2020).

The SDE is written in the EDM frame y = x / alpha against lambda = -log s (s = sigma / alpha), where every
Gaussian-path model is the variance-exploding process y = x0 + s eps. Its reverse-time SDE
(Song et al. 2021, eq. 6; Karras et al. 2022, eq. 6 with beta = 1) in increasing lambda is

    dy = 2 (D(y, s) - y) dlambda + sqrt(2) e^{-lambda} dW_lambda,

twice the probability-flow drift plus additive noise (the diffusion coefficient depends on lambda only), so Ito
and Stratonovich forms agree and Euler-Maruyama has strong order 1. Fixed steps are uniform in lambda (`steps`
of the run; the Sampler's grid only gives the span); `adaptive=True` uses torchsde's error control (rtol, atol).
A grid ending at t = 0 stops at the schedule's t_min and finishes with one data prediction.

Brownian motion (`brownian=`): 'tree' (default) gives every sample its own torchsde BrownianInterval with a
dyadic dependency tree (halfway_tree=True) seeded from the sample's seed: the path is a function of the seed
only (to `tol`), so a sample is the same inside any batch, and a refined step grid samples the same path.
'interval': per-sample BrownianIntervals without the dyadic tree (faster; batch invariant, but the path also
depends on where it is queried, so refining the grid changes it). 'batch_tree': one dyadic tree for the whole
batch (refinement invariant, reproducible for the same batch and seeds, not batch invariant). 'batch': one
BrownianInterval for the whole batch (fastest; reproducible only for the same batch and query points). The
per-sample modes cost one Python query per sample and step: they suit small batches. torchsde reads times on the
host every step (no CUDA-graph / no-sync guarantee). reversible_heun is registered but its stability region
does not cover this dissipative drift: it diverges unless the steps are very small (use euler, milstein or srk).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from diffsolve.errors import InvalidArgument, NonFiniteError, check_choice
from diffsolve.kernels import nonfinite
from diffsolve.field import Field
from diffsolve.solvers.span import AdaptiveSolver, RunStats, Span, SpanPlan, check_positive, check_tolerance
from diffsolve.solvers.base import Plan, register


@dataclass(frozen=True)
class SdeintSettings:
    """A torchsde run's steps (uniform in log-SNR, or None: adaptive) and its span in log-SNR."""
    steps: int | None                  # fixed steps uniform in log-SNR, or None for torchsde's adaptive stepping
    lam: tuple[float, float]           # the span in log-SNR

METHODS = ("euler", "milstein", "srk", "reversible_heun")
BROWNIAN = ("tree", "interval", "batch_tree", "batch")


class _OutOfBudget(Exception):
    def __init__(self, why: str):
        self.why = why


def _brownian_base():
    import torchsde
    return torchsde.BrownianInterval


class PerSampleBrownian:
    """Stacks one Brownian motion per sample, so each sample's path depends on its own seed only.

    With `ndigits`, query times are rounded to the dyadic tree's resolution first and a query that rounds to an
    empty interval gives zero increments: torchsde's halfway tree recurses without end on such queries (the
    solver's last step can be 1e-15 long from round-off).
    """

    def __init__(self, motions, ndigits: int | None = None, span: tuple[float, float] | None = None):
        self.motions = list(motions)
        self.ndigits = ndigits
        self.span = span

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if self.ndigits is not None and tb is not None:
            lo, hi = self.span
            ta = min(max(round(float(ta), self.ndigits), lo), hi)
            tb = min(max(round(float(tb), self.ndigits), lo), hi)
            if tb <= ta:
                ta = tb = lo        # an empty interval: torchsde answers it with zeros, without a tree search
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.motions]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat([p[k] for p in parts], dim=0) for k in range(len(parts[0])))
        return torch.cat(parts, dim=0)

    def __repr__(self) -> str:
        return f"PerSampleBrownian({len(self.motions)} x {self.motions[0]!r})"

    @property
    def dtype(self):
        """The motions' dtype."""
        return self.motions[0].dtype

    @property
    def device(self):
        """The motions' device."""
        return self.motions[0].device

    @property
    def shape(self):
        """(batch, numel): the stacked motions' shape."""
        return (sum(m.shape[0] for m in self.motions), *self.motions[0].shape[1:])

    def size(self):
        """The shape (torchsde's BaseBrownian interface)."""
        return self.shape

    @property
    def levy_area_approximation(self):
        """The motions' Levy-area approximation (space-time for srk)."""
        return self.motions[0].levy_area_approximation


def _as_base_brownian(obj):
    """Register PerSampleBrownian as a torchsde BaseBrownian (sdeint checks the type)."""
    import torchsde
    base = torchsde.BaseBrownian
    if not issubclass(PerSampleBrownian, base):
        base.register(PerSampleBrownian)
    return obj


class _ReverseSDE(torch.nn.Module):
    def __init__(self, ev, span: Span, method: str, lam_to_t: Callable[[float], float], shape, budget_reserve: int,
                 max_calls: int | None):
        super().__init__()
        self.ev, self.span, self.lam_to_t, self.shape = ev, span, lam_to_t, shape
        self.noise_type = "diagonal"
        self.sde_type = "stratonovich" if method == "reversible_heun" else "ito"
        self.reserve = budget_reserve
        self.max_calls = max_calls
        self.calls = 0
        self.last = None                  # (lambda, y) of the latest drift evaluation: the state reached so far

    def f(self, lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ev = self.ev
        if self.span.budget is not None and ev.nfe + (1 + self.reserve) * ev.field.evals_per_call > self.span.budget:
            raise _OutOfBudget(f"the NFE budget of {self.span.budget} would be exceeded (used {ev.nfe})")
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise _OutOfBudget(f"the step limit (max_steps, {self.max_calls} drift evaluations) was reached")
        self.calls += 1
        lam_f = float(lam.detach())
        self.last = (lam_f, y)
        # the step this evaluation belongs to: its position on the fixed log-SNR grid (or the call count)
        ev.step = int((lam_f - self.lam0) / self.dt + 1e-6) if self.dt else self.calls - 1
        p = ev.field.at(self.lam_to_t(lam_f))
        d = ev.denoise(y.reshape(self.shape) * p.alpha, p).reshape(y.shape)
        if ev.check_finite and bool(nonfinite(d.detach())):     # this bridge syncs every evaluation anyway
            raise NonFiniteError(ev.step, p.t)
        return 2.0 * (d - y)

    def g(self, lam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Additive noise; the 0 * y term keeps y in the graph for Milstein's (zero) derivative of g.
        return math.sqrt(2.0) * math.exp(-float(lam)) + 0.0 * y


class TorchsdeSolver(AdaptiveSolver):
    """Reverse-time SDE via torchsde.sdeint (euler, milstein, srk, reversible_heun), per-sample Brownian trees.

    Papers: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
    (the reverse SDE); Li et al. 2020, "Scalable Gradients for Stochastic Differential Equations" (torchsde);
    Kidger et al. 2021, "Efficient and Accurate Gradients for Neural SDEs" (Brownian interval).

    Args:
        method: "euler", "milstein", "srk" or "reversible_heun" (default "euler").
        steps: fixed steps uniform in log-SNR; None: a run's steps=, or adaptive stepping.
        adaptive: let torchsde choose the steps (with rtol, atol; defaults 1e-3).
        brownian: "tree" or "interval" (one Brownian motion per sample), "batch_tree" or "batch" (one for the batch).
        tol: the Brownian tree's resolution (default 1e-6).
        max_steps: the most step attempts (accepted and rejected) a run may take (default 100000).
        on_budget: "raise" (BudgetExceeded when the budget runs out) or "return" (the state reached, marked incomplete
            in `stats`).
        max_nfe: a model-evaluation budget for every run; None: only a run's `nfe=` bounds it.
        alias: the registry name reported; None: torchsde_<method>.

    Raises:
        InvalidArgument: an unknown method or brownian, or settings out of range.
    """

    deterministic = False
    needs_schedule = True
    citation = "Song et al. 2021 (reverse SDE); Li et al. 2020 and Kidger et al. 2021 (torchsde, Brownian interval)"

    def __init__(self, method: str = "euler", steps: int | None = None, adaptive: bool = False, rtol: float = 1e-3,
                 atol: float = 1e-3, brownian: str = "tree", tol: float = 1e-6, max_steps: int = 100000,
                 on_budget: str = "raise", max_nfe: int | None = None, alias: str | None = None):
        super().__init__(max_steps, on_budget, max_nfe)
        check_choice("method", method, METHODS)
        check_choice("brownian", brownian, BROWNIAN)
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise InvalidArgument(f"steps={steps!r}: must be an integer >= 1")
        self.method = method
        self.default_steps = steps
        self.adaptive_steps = bool(adaptive)
        self.rtol = check_tolerance("rtol", rtol)
        self.atol = check_tolerance("atol", atol)
        self.brownian = brownian
        self.tol = check_positive("tol", tol)
        self.name = alias or f"torchsde_{method}"
        # Strong order on this additive-noise SDE (Kloeden & Platen): 1 for Euler, Milstein and reversible Heun,
        # 1.5 for SRK; weak order 1 (2 for SRK's additive-noise tableau is not claimed).
        self.order = 1

    def plan_adaptive(self, field: Field, t: torch.Tensor, *, steps: int | None = None,
                      nfe: int | None = None) -> Plan:
        """The span plan with its steps and log-SNR span.

        Raises:
            InvalidArgument: neither steps nor adaptive=True, or a span without finite log-SNR at both ends.
        """
        plan = super().plan_adaptive(field, t, steps=steps, nfe=nfe)
        n = steps if steps is not None else self.default_steps
        if n is None and not self.adaptive_steps:
            raise InvalidArgument(f"solver {self.name!r}: give steps= (fixed steps, uniform in log-SNR), or "
                                  "adaptive=True")
        span: Span = plan.span
        lam0, lam1 = float(field.schedule.lambda_(span.t_start)), float(field.schedule.lambda_(span.t_stop))
        if not (math.isfinite(lam0) and math.isfinite(lam1)):
            raise InvalidArgument(f"{self.name} needs finite log-SNR at both ends of the span; start below pure "
                                  "noise (grid_options t_max=) and stop above zero noise")
        return replace(plan, settings=SdeintSettings(n, (lam0, lam1)))

    def make_brownian(self, ev, lam0: float, lam1: float, batch: int, numel: int, dtype, device):
        """The run's Brownian motion over [lam0, lam1]: per sample (seeded by each sample) or one."""
        BI = _brownian_base()
        levy = "space-time" if self.method == "srk" else "none"
        src = ev.noise_source
        per_sample = self.brownian in ("tree", "interval")
        if self.brownian in ("tree", "batch_tree"):
            nd = -int(math.log10(self.tol))
            lo, hi = round(lam0, nd), round(lam1, nd)
            opts, wrap = {"halfway_tree": True, "tol": self.tol}, {"ndigits": nd, "span": (lo, hi)}
        else:
            lo, hi, opts, wrap = lam0, lam1, {}, {}
        if per_sample:
            motions = [BI(t0=lo, t1=hi, size=(1, numel), dtype=dtype, device=device, entropy=src.entropy(b),
                          levy_area_approximation=levy, **opts) for b in range(batch)]
        else:
            entropy = hash(tuple(src.keys)) & ((1 << 62) - 1)
            motions = [BI(t0=lo, t1=hi, size=(batch, numel), dtype=dtype, device=device, entropy=entropy,
                          levy_area_approximation=levy, **opts)]
        return _as_base_brownian(PerSampleBrownian(motions, **wrap))

    def solve_span(self, ev, x: torch.Tensor, plan: SpanPlan, *, callback: Callable | None = None,
                   return_trajectory: bool = False):
        """Run torchsde.sdeint over the span (counted, budgeted); returns a SampleResult."""
        import torchsde
        field = ev.field
        span: Span = plan.span
        B = x.shape[0]
        # torchsde works in the state's dtype: take the span's ends as that dtype rounds them, so that the
        # Brownian motion's interval and the solver's times agree exactly.
        ts = torch.tensor(plan.settings.lam, dtype=x.dtype, device=x.device)
        lam0, lam1 = float(ts[0]), float(ts[1])
        sch = field.schedule
        ends = {lam0: span.t_start, lam1: span.t_stop}
        lam_to_t = lambda v: ends.get(v, float(sch.t_from_lambda(v)))             # noqa: E731
        p0 = field.at(span.t_start)
        y0 = (x / p0.alpha).reshape(B, -1)
        # Brownian queries are in float64 for the time arguments; the increments come in the state's dtype.
        bm = self.make_brownian(ev, lam0, lam1, B, y0.shape[1], y0.dtype, y0.device)
        n = plan.settings.steps
        max_calls = self.max_steps * (4 if self.method == "srk" else 2)
        sde = _ReverseSDE(ev, span, self.method, lam_to_t, x.shape, 1 if span.final_denoise else 0, max_calls)
        dt = (lam1 - lam0) / n if n is not None else (lam1 - lam0) / 64
        sde.lam0, sde.dt = lam0, (dt if not self.adaptive_steps else 0.0)
        stats = RunStats(span.t_start, x, False)
        out_ts = ts
        if return_trajectory and n is not None and not self.adaptive_steps:
            # report every fixed step: the same steps, with an output at each grid point
            out_ts = torch.cat([ts[:1], lam0 + dt * torch.arange(1, n, dtype=ts.dtype, device=ts.device), ts[1:]])
        try:
            ys = torchsde.sdeint(sde, y0, out_ts, bm=bm, method=self.method, dt=dt, adaptive=self.adaptive_steps,
                                 rtol=self.rtol, atol=self.atol, dt_min=1e-6)
        except _OutOfBudget as e:
            lam_r, y_r = sde.last if sde.last is not None else (lam0, y0)
            t_r = lam_to_t(lam_r)
            if self.on_budget == "raise":
                raise self.budget_error(e.why, stats, t_r, ev) from None
            x_r = y_r.reshape(x.shape) * field.at(t_r).alpha
            return self.finish(ev, x_r, plan, stats, completed=False, t_reached=t_r, why=e.why)
        x1 = ys[-1].reshape(x.shape) * field.at(span.t_stop).alpha
        stats.accepted = n if n is not None and not self.adaptive_steps else sde.calls
        if return_trajectory:
            lams = out_ts.tolist()
            stats.times = [lam_to_t(v) for v in lams]
            stats.states = [y.reshape(x.shape) * field.at(t).alpha for y, t in zip(ys, stats.times)]
        else:
            stats.times.append(span.t_stop)
        return self.finish(ev, x1, plan, stats, completed=True, t_reached=span.t_stop,
                           extra={"method": self.method, "brownian": self.brownian,
                                  "steps_are": "fixed, uniform in log-SNR" if not self.adaptive_steps
                                  else "adaptive (accepted count = drift evaluations)"})


register("torchsde", TorchsdeSolver, "reverse SDE through torchsde.sdeint (method=euler|milstein|srk|reversible_heun)")
for _m in METHODS:
    register(f"torchsde_{_m}", TorchsdeSolver, f"reverse SDE through torchsde.sdeint, method={_m!r}", method=_m)
