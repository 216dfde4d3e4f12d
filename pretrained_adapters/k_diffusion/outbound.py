"""diffsolve solvers with k-diffusion's calling convention (outbound): the one `sample` every function calls.

`model(x, sigma * s_in, **extra_args)` returns the denoised sample, `x` starts at `noise * sigmas[0]`, `sigmas`
usually ends with 0, and `callback` gets k-diffusion's dict (`x`, `i`, `sigma`, `sigma_hat`, `denoised`) before
each step's update. Step noise: `noise_sampler(sigma, sigma_next)` as in k-diffusion; with none, the same draws
k-diffusion makes from torch's global generator (`torch.randn_like(x)` per step, or a torchsde Brownian tree for
the DPM-Solver++ SDE samplers), so one `torch.manual_seed` gives k-diffusion's samples; `seed=` switches to
diffsolve's counter-based, batch-invariant step noise. The k-diffusion package is never imported.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
import torchsde

from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField
from diffsolve.loop import Evaluator, integrate
from diffsolve.noise import NoiseSource
from diffsolve.pretrained_adapters.k_diffusion.inbound import Denoiser
from diffsolve.schedules import EDMSchedule
from diffsolve.solvers.base import available_solvers, get_solver

# k-diffusion sampler name -> diffsolve solver name (None: k-diffusion has it, diffsolve has no match)
K_DIFFUSION_TO_DIFFSOLVE: dict[str, str | None] = {
    "euler": "euler",
    "euler_ancestral": "euler_ancestral",
    "heun": "heun",
    "dpm_2": "dpm_solver_2",
    "dpm_2_ancestral": None,
    "lms": "lms",
    "dpm_fast": None,
    "dpm_adaptive": "dpm_adaptive",
    "dpmpp_2s_ancestral": "dpmpp_2s_ancestral",
    "dpmpp_sde": None,
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde",
    "dpmpp_3m_sde": "dpmpp_3m_sde",
}
# diffsolve solver name -> k-diffusion sampler name, for the solvers k-diffusion has
DIFFSOLVE_TO_K_DIFFUSION: dict[str, str] = {v: k for k, v in K_DIFFUSION_TO_DIFFSOLVE.items() if v is not None}
# k-diffusion draws these samplers' default noise from a Brownian tree, the others' from torch.randn_like
BROWNIAN_DEFAULT = ("dpmpp_2m_sde", "dpmpp_3m_sde")
# solvers whose default step noise follows k-diffusion's draws (the rest use diffsolve's step noise)
K_DIFFUSION_NOISE = ("euler_ancestral", "dpmpp_2s_ancestral", "euler_churn", "edm_churn", *BROWNIAN_DEFAULT)


def solver_name_of(name: str) -> str:
    """The registered diffsolve solver for a k-diffusion sampler name (or a diffsolve name, unchanged).

    Args:
        name: a k-diffusion sampler name (without "sample_") or a registered solver name.

    Returns:
        The solver's registry name.

    Raises:
        InvalidArgument: a k-diffusion sampler with no diffsolve counterpart, or an unknown name (the message lists
            the choices).
    """
    if name in K_DIFFUSION_TO_DIFFSOLVE:
        mapped = K_DIFFUSION_TO_DIFFSOLVE[name]
        if mapped is None:
            raise InvalidArgument(
                f"k-diffusion's sample_{name} has no diffsolve counterpart; matched names: "
                + ", ".join(f"{k} -> {v}" for k, v in K_DIFFUSION_TO_DIFFSOLVE.items() if v))
        return mapped
    if name in available_solvers():
        return name
    raise InvalidArgument(f"no sampler named {name!r}; k-diffusion names: "
                          f"{', '.join(k for k, v in K_DIFFUSION_TO_DIFFSOLVE.items() if v)}; diffsolve names: "
                          f"{', '.join(available_solvers())}")


class SamplerNoise:
    """Step noise from a `noise_sampler(sigma, sigma_next)`: one draw per (step, draw index), cached, checked to
    have the sample's shape (a (1,)-shaped draw would silently be broadcast over every pixel).

    Args:
        noise_sampler: k-diffusion's `noise_sampler(sigma, sigma_next)`.
        sigmas: the run's noise levels (step i goes from sigmas[i] to sigmas[i + 1]).
        like: a tensor of the sample's shape.
    """

    def __init__(self, noise_sampler: Callable, sigmas: torch.Tensor, like: torch.Tensor):
        self.noise_sampler, self.sigmas, self.like, self.cache = noise_sampler, sigmas, like, {}

    def draw(self, i: int, j: int = 0) -> torch.Tensor:
        """The noise of step `i`, draw `j` (drawn once, then cached).

        Args:
            i: the step.
            j: the draw within the step (default 0).

        Returns:
            The noise tensor.

        Raises:
            InvalidArgument: the noise sampler returned something other than a tensor of the sample's shape.
        """
        if (i, j) not in self.cache:
            z = self.noise_sampler(self.sigmas[i], self.sigmas[i + 1])
            if not isinstance(z, torch.Tensor) or tuple(z.shape) != tuple(self.like.shape):
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise InvalidArgument(f"noise_sampler returned {got}; it must return a tensor of the sample's shape "
                                      f"{tuple(self.like.shape)}")
            self.cache[(i, j)] = z
        return self.cache[(i, j)]


class BrownianNoise:
    """k-diffusion's default noise for its DPM-Solver++ SDE samplers: one torchsde Brownian tree over
    [smallest positive sigma, largest sigma], its entropy drawn from torch's global generator, and each draw
    the tree's increment over (sigma, sigma_next) scaled to unit variance.

    Args:
        like: a tensor of the sample's shape, dtype and device.
        sigmas: the run's noise levels.
    """

    def __init__(self, like: torch.Tensor, sigmas: torch.Tensor):
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        entropy = torch.randint(0, 2 ** 63 - 1, []).item()
        self.tree = torchsde.BrownianTree(lo, torch.zeros_like(like), hi, entropy=entropy)

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        """The unit-variance noise between `sigma` and `sigma_next` (in either order)."""
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        return self.tree(lo, hi) * sign / (hi - lo).abs().sqrt()


class _FirstDenoised(Evaluator):
    """Keeps the first data prediction of each step (the one k-diffusion's callback reports)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.first: dict[int, torch.Tensor] = {}

    def evaluate(self, x, p, kind="x0"):
        out = super().evaluate(x, p, kind)
        if kind == "x0" and self.step not in self.first:
            self.first[self.step] = out.value
        return out


_K_CHURN = ("s_churn", "s_tmin", "s_tmax")


def _options(solver: str, options: dict) -> tuple[str, dict]:
    """k-diffusion's option names onto the solver's; churn (s_churn > 0) selects diffsolve's EDM churn solvers."""
    opts = dict(options)
    churn = {k: opts.pop(k) for k in _K_CHURN if k in opts}
    if solver in ("euler", "heun", "dpm_solver_2") and "s_noise" in opts and not churn.get("s_churn"):
        opts.pop("s_noise")          # k-diffusion's s_noise only scales the churn noise
    if churn.get("s_churn", 0.0):
        if solver not in ("euler", "heun"):
            raise InvalidArgument(f"s_churn > 0 is supported with euler and heun (diffsolve's EDM churn), not {solver}")
        new = {"S_churn": float(churn["s_churn"]), "S_tmin": float(churn.get("s_tmin", 0.0)),
               "S_tmax": float(churn.get("s_tmax", math.inf)), "S_noise": float(opts.pop("s_noise", 1.0))}
        return ("euler_churn" if solver == "euler" else "edm_churn"), new
    return solver, opts


def _checked_inputs(x: Any, sigmas: Any) -> torch.Tensor:
    """The noise levels as float64 on the host, after the checks k-diffusion leaves to chance."""
    if not isinstance(x, torch.Tensor) or not torch.is_floating_point(x):
        what = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidArgument(f"x must be a floating-point tensor (noise * sigmas[0]), got {what}")
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    if sig.numel() < 2:
        raise InvalidArgument("sigmas must hold at least 2 noise levels (k-diffusion's get_sigmas_* end with 0)")
    if not torch.isfinite(sig).all() or (sig < 0).any() or not (sig > 0).any():
        raise InvalidArgument(f"sigmas must be finite, non-negative and not all zero, got {sig.tolist()}")
    return sig


# Plans of the solvers k-diffusion has depend only on the noise levels and the options: cached on those, so a
# k-diffusion-style loop that calls the same function again does not plan again.
_PLANS: OrderedDict = OrderedDict()
_PLAN_CACHE_SIZE = 32
_CACHEABLE = frozenset(DIFFSOLVE_TO_K_DIFFUSION) | {"euler_churn", "edm_churn"}


def _plan(solver_name: str, opts: dict, solver: Any, field: VectorField, sig: torch.Tensor) -> Any:
    key = None
    if solver_name in _CACHEABLE and not solver.adaptive:
        try:
            key = (solver_name, tuple(sorted(opts.items())), sig.numpy().tobytes())
            hash(key)
        except TypeError:
            key = None
    if key is not None and key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    plan = solver.plan_adaptive(field, sig, steps=None, nfe=None) if solver.adaptive else solver.plan(field, sig)
    if key is not None:
        _PLANS[key] = plan
        if len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


def _step_noise(solver_name: str, solver: Any, x: torch.Tensor, sigmas: Any, noise_sampler: Callable | None,
                seed: Any) -> Any:
    if solver.deterministic:
        return None
    raw = torch.as_tensor(sigmas)
    if noise_sampler is None and seed is None and solver_name in K_DIFFUSION_NOISE:
        noise_sampler = BrownianNoise(x, raw) if solver_name in BROWNIAN_DEFAULT else (
            lambda sigma, sigma_next: torch.randn_like(x))
    if noise_sampler is not None:
        if seed is not None:
            raise InvalidArgument("give noise_sampler= or seed=, not both")
        return SamplerNoise(noise_sampler, raw, x)
    return NoiseSource.for_run(x.shape, seed=seed, device=x.device, dtype=x.dtype)


def sample(name: str, model: Callable[..., Any], x: torch.Tensor, sigmas: Any, extra_args: Mapping | None = None,
           callback: Callable[[dict], None] | None = None, disable: bool | None = None,
           noise_sampler: Callable | None = None, seed: Any = None, **options: Any) -> torch.Tensor:
    """Run diffsolve's solver `name` (a k-diffusion or diffsolve name) with k-diffusion's calling convention.

    Args:
        name: a k-diffusion sampler name or a registered solver name.
        model: the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x: the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas: the noise levels, largest first, usually ending with 0.
        extra_args: keyword arguments every model call gets (None: none).
        callback: gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each step's update.
        disable: False shows a progress bar (None or True: none).
        noise_sampler: `noise_sampler(sigma, sigma_next)` -> step noise; None: k-diffusion's own draws (or
            diffsolve's step noise for solvers k-diffusion does not have).
        seed: diffsolve's counter-based, batch-invariant step noise (not with noise_sampler).
        **options: the solver's options, in k-diffusion's names (s_churn > 0 selects diffsolve's churn solvers).

    Returns:
        The sample at the last sigma.

    Raises:
        InvalidArgument: an unknown name or option, a non-float x, invalid sigmas, both noise_sampler and seed,
            or a noise draw of the wrong shape.
    """
    sig = _checked_inputs(x, sigmas)
    solver_name, opts = _options(solver_name_of(name), options)
    solver = get_solver(solver_name, **opts)
    positive = sig[sig > 0]
    smin = float(positive.min())
    schedule = EDMSchedule(sigma_min=smin, sigma_max=float(sig[0]) if float(sig[0]) > smin else smin * 2)
    field = VectorField(Denoiser(model), prediction="denoiser", schedule=schedule)
    plan = _plan(solver_name, opts, solver, field, sig)
    ev = _FirstDenoised(field, dict(extra_args or {}), True, _step_noise(solver_name, solver, x, sigmas,
                                                                        noise_sampler, seed))
    prev = {"x": x}

    def report(info):
        i = info.i
        if callback is not None:
            s = sig[min(i, sig.numel() - 1)].item()
            callback({"x": prev["x"], "i": i, "sigma": s, "sigma_hat": s,
                      "denoised": ev.first.get(i, info.denoised)})
        prev["x"] = info.x

    return integrate(solver, ev, x, plan, callback=report, progress=disable is False).samples
