"""k-diffusion both ways: diffsolve solvers as k-diffusion sampler functions, k-diffusion / EDM denoisers as fields.

Outbound: `sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)` for every
registered diffsolve solver and for k-diffusion's own names (`sample_dpm_2` runs `dpm_solver_2`), with
k-diffusion's conventions: `model(x, sigma * s_in, **extra_args)` returns the denoised sample, `x` starts at
`noise * sigmas[0]`, `sigmas` usually ends with 0, and `callback` gets k-diffusion's dict (`x`, `i`, `sigma`,
`sigma_hat`, `denoised`) before each step's update. `noise_sampler(sigma, sigma_next)` feeds the step noise of
stochastic solvers (one draw per step and draw index, reused) as it does in k-diffusion; `seed=` uses diffsolve's
counter-based step noise instead. The k-diffusion package is never imported.

Inbound: `from_k_diffusion(model)` (also `VectorField.from_k_diffusion`, and what `Sampler(model)` detects) reads
a k-diffusion denoiser wrapper (`sigma_min`/`sigma_max` or a `sigmas` buffer: `DiscreteEpsDDPMDenoiser`,
`CompVisDenoiser`, `VDenoiser`, ...) or an EDM / EDM2 preconditioned network (`net(x, sigma, class_labels)` with
`label_dim`, as NVlabs' `EDMPrecond` / EDM2 `Precond`) as a `VectorField` on the EDM path (alpha = 1, sigma = t).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField, model_spec_of, register_model_adapter
from diffsolve.loop import Evaluator, integrate
from diffsolve.noise import NoiseSource
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


def solver_name_of(name: str) -> str:
    """The registered diffsolve solver for a k-diffusion sampler name (or a diffsolve name, unchanged)."""
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


class _Denoiser(torch.nn.Module):
    """`model(x, sigma, **kw)` as a module (so the field finds its dtype and device), `.sample`-style outputs unwrapped."""

    def __init__(self, model: Callable[..., Any]):
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> Any:
        return self.inner(x, sigma, **kwargs)


class _SamplerNoise:
    """Step noise from k-diffusion's `noise_sampler(sigma, sigma_next)`: one draw per (step, draw index), cached."""

    def __init__(self, noise_sampler: Callable, sigmas: torch.Tensor):
        self.noise_sampler, self.sigmas, self.cache = noise_sampler, sigmas, {}

    def draw(self, i: int, j: int = 0) -> torch.Tensor:
        if (i, j) not in self.cache:
            self.cache[(i, j)] = self.noise_sampler(self.sigmas[i], self.sigmas[i + 1])
        return self.cache[(i, j)]


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


def sample(name: str, model: Callable[..., Any], x: torch.Tensor, sigmas: Any, extra_args: Mapping | None = None,
           callback: Callable[[dict], None] | None = None, disable: bool | None = None,
           noise_sampler: Callable | None = None, seed: Any = None, **options: Any) -> torch.Tensor:
    """Run diffsolve's solver `name` (a k-diffusion or diffsolve name) with k-diffusion's calling convention."""
    solver_name, opts = _options(solver_name_of(name), options)
    solver = get_solver(solver_name, **opts)
    sig = torch.as_tensor(sigmas).detach().to("cpu", torch.float64).reshape(-1)
    if sig.numel() < 2:
        raise InvalidArgument("sigmas must hold at least 2 noise levels (k-diffusion's get_sigmas_* end with 0)")
    positive = sig[sig > 0]
    smin = float(positive.min())
    schedule = EDMSchedule(sigma_min=smin, sigma_max=float(sig[0]) if float(sig[0]) > smin else smin * 2)
    field = VectorField(_Denoiser(model), prediction="denoiser", schedule=schedule)
    if solver.adaptive:
        plan = solver.plan_adaptive(field, sig, steps=None, nfe=None)
    else:
        plan = solver.plan(field, sig)
    noise = None
    if not solver.deterministic:
        noise = (_SamplerNoise(noise_sampler, torch.as_tensor(sigmas)) if noise_sampler is not None else
                 NoiseSource.for_run(x.shape, seed=seed, device=x.device, dtype=x.dtype))
    ev = _FirstDenoised(field, dict(extra_args or {}), False, noise)
    prev = {"x": x}

    def report(info):
        i = info.i
        if callback is not None:
            s = sig[min(i, sig.numel() - 1)].item()
            callback({"x": prev["x"], "i": i, "sigma": s, "sigma_hat": s,
                      "denoised": ev.first.get(i, info.denoised)})
        prev["x"] = info.x

    result = integrate(solver, ev, x, plan, callback=report, progress=disable is False)
    return result.samples


def _sampler(name: str) -> Callable[..., torch.Tensor]:
    """`sample_<name>` for a sampler name, unchecked: the name is resolved when the function runs."""
    solver = K_DIFFUSION_TO_DIFFSOLVE.get(name) or name

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample(name, model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)

    fn.__name__ = fn.__qualname__ = f"sample_{name}"
    fn.__doc__ = (f"k-diffusion-style sampler running diffsolve's {solver!r} solver: "
                  "(model, x, sigmas, extra_args=None, callback=None, disable=None, **options).")
    return fn


def sampler_function(name: str) -> Callable[..., torch.Tensor]:
    """`sample_<name>` as k-diffusion defines it, for a k-diffusion or diffsolve sampler name (a solver registered
    after this module was imported included)."""
    solver_name_of(name)          # fails now, naming the choices, rather than at the first call
    return _sampler(name)


def sampler_names() -> list[str]:
    """Every `sample_<name>` this module offers: the registered solvers plus k-diffusion's names that map to one."""
    names = set(available_solvers()) | {k for k, v in K_DIFFUSION_TO_DIFFSOLVE.items() if v in available_solvers()}
    return sorted(names)


# k-diffusion's own sampler names (those diffsolve matches)
sample_euler = _sampler("euler")
sample_euler_ancestral = _sampler("euler_ancestral")
sample_heun = _sampler("heun")
sample_dpm_2 = _sampler("dpm_2")
sample_lms = _sampler("lms")
sample_dpm_adaptive = _sampler("dpm_adaptive")
sample_dpmpp_2s_ancestral = _sampler("dpmpp_2s_ancestral")
sample_dpmpp_2m = _sampler("dpmpp_2m")
sample_dpmpp_2m_sde = _sampler("dpmpp_2m_sde")
sample_dpmpp_3m_sde = _sampler("dpmpp_3m_sde")
# every other registered diffsolve solver (tests check that this list matches the registry)
sample_amed = _sampler("amed")
sample_amed_plugin = _sampler("amed_plugin")
sample_bosh3 = _sampler("bosh3")
sample_consistency = _sampler("consistency")
sample_ddim = _sampler("ddim")
sample_ddim_eta = _sampler("ddim_eta")
sample_ddpm = _sampler("ddpm")
sample_deis = _sampler("deis")
sample_dpm_adaptive_12 = _sampler("dpm_adaptive_12")
sample_dpm_adaptive_23 = _sampler("dpm_adaptive_23")
sample_dpm_solver_2 = _sampler("dpm_solver_2")
sample_dpm_solver_3 = _sampler("dpm_solver_3")
sample_dpmpp_2s = _sampler("dpmpp_2s")
sample_dpmpp_3m = _sampler("dpmpp_3m")
sample_dpmpp_3s = _sampler("dpmpp_3s")
sample_edm_churn = _sampler("edm_churn")
sample_euler_churn = _sampler("euler_churn")
sample_ipndm = _sampler("ipndm")
sample_ipndm_v = _sampler("ipndm_v")
sample_learned_multistep = _sampler("learned_multistep")
sample_midpoint = _sampler("midpoint")
sample_odeint = _sampler("odeint")
sample_odeint_adaptive_heun = _sampler("odeint_adaptive_heun")
sample_odeint_bosh3 = _sampler("odeint_bosh3")
sample_odeint_dopri5 = _sampler("odeint_dopri5")
sample_odeint_dopri8 = _sampler("odeint_dopri8")
sample_ralston = _sampler("ralston")
sample_restart = _sampler("restart")
sample_rk3 = _sampler("rk3")
sample_rk38 = _sampler("rk38")
sample_rk4 = _sampler("rk4")
sample_shortcut = _sampler("shortcut")
sample_tcd = _sampler("tcd")
sample_torchsde = _sampler("torchsde")
sample_torchsde_euler = _sampler("torchsde_euler")
sample_torchsde_milstein = _sampler("torchsde_milstein")
sample_torchsde_reversible_heun = _sampler("torchsde_reversible_heun")
sample_torchsde_srk = _sampler("torchsde_srk")
sample_unipc_bh1 = _sampler("unipc_bh1")
sample_unipc_bh2 = _sampler("unipc_bh2")


# ------------------------------------------------------------------------------------------------
# Inbound: k-diffusion denoiser wrappers and EDM preconditioned networks
# ------------------------------------------------------------------------------------------------
def _float(v: Any) -> float:
    return float(v.detach().float().cpu()) if isinstance(v, torch.Tensor) else float(v)


def is_k_diffusion_denoiser(model: Any) -> bool:
    """A k-diffusion denoiser wrapper: `sigma_min` and `sigma_max`, or a `sigmas` tensor, and a callable."""
    if not callable(model) or model_spec_of(model) is not None:
        return False
    has_range = hasattr(model, "sigma_min") and hasattr(model, "sigma_max")
    return has_range or isinstance(getattr(model, "sigmas", None), torch.Tensor)


def is_edm_network(model: Any) -> bool:
    """An NVlabs EDM / EDM2 preconditioned network: `net(x, sigma, class_labels)` with label_dim and img_resolution."""
    return (callable(model) and model_spec_of(model) is None and hasattr(model, "label_dim")
            and (hasattr(model, "img_resolution") or hasattr(model, "sigma_data")))


class EDMNetwork(torch.nn.Module):
    """`net(x, sigma, class_labels)` as `model(x, sigma, class_labels=None, **kw)`: class labels by keyword, or
    none for an unconditional net (label_dim = 0); an integer label tensor is one-hot encoded to label_dim."""

    def __init__(self, net: Callable[..., Any]):
        super().__init__()
        self.net = net
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: Any = None, **kwargs: Any):
        if class_labels is not None and self.label_dim and not torch.is_floating_point(class_labels):
            class_labels = torch.nn.functional.one_hot(class_labels.long(), self.label_dim).to(x.dtype)
        if self.label_dim and class_labels is None:
            raise InvalidArgument(f"this EDM network is class-conditional (label_dim={self.label_dim}); pass "
                                  "class_labels= (one-hot [batch, label_dim] or integer labels) to run()")
        out = self.net(x, sigma, class_labels, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def edm_sigma_range(model: Any, default: tuple[float, float] = (0.002, 80.0)) -> tuple[float, float]:
    """(sigma_min, sigma_max): the model's, clipped to EDM's sampling range when it says 0 / inf (EDMPrecond)."""
    sigmas = getattr(model, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and not (hasattr(model, "sigma_min") and hasattr(model, "sigma_max")):
        return _float(sigmas.min()), _float(sigmas.max())
    lo = _float(getattr(model, "sigma_min", default[0]))
    hi = _float(getattr(model, "sigma_max", default[1]))
    lo = lo if lo > 0 else default[0]
    hi = hi if math.isfinite(hi) else default[1]
    return lo, hi


def from_k_diffusion(model: Any, *, sigma_min: float | None = None, sigma_max: float | None = None,
                     sample_shape: tuple[int, ...] | None = None,
                     model_kwargs: Mapping[str, Any] | None = None) -> VectorField:
    """The VectorField of a k-diffusion denoiser wrapper or an EDM preconditioned network (EDM path, alpha = 1).

    The network gets `(x, sigma)` in the EDM frame and returns the denoised sample; initial noise is scaled
    by sigma_max (diffsolve's `Sampler.run` does that itself from unit noise). The default grid is karras.
    """
    if not callable(model):
        raise InvalidArgument(f"model must be callable, got {type(model).__name__}")
    lo, hi = edm_sigma_range(model)
    lo = lo if sigma_min is None else float(sigma_min)
    hi = hi if sigma_max is None else float(sigma_max)
    net = EDMNetwork(model) if is_edm_network(model) else _Denoiser(model)
    if sample_shape is None and hasattr(model, "img_resolution") and hasattr(model, "img_channels"):
        r = int(model.img_resolution)
        sample_shape = (int(model.img_channels), r, r)
    return VectorField(net, prediction="denoiser", schedule=EDMSchedule(sigma_min=lo, sigma_max=hi),
                       sample_shape=sample_shape, model_kwargs=model_kwargs)


def detect(model: Any, **given: Any):
    """The model adapter `Sampler(model)` consults: a field for k-diffusion denoisers and EDM networks, else None."""
    if given.get("prediction") is not None or given.get("schedule") is not None:
        return None
    if is_edm_network(model) or is_k_diffusion_denoiser(model):
        return from_k_diffusion(model, sample_shape=given.get("sample_shape"))
    return None


def _register() -> None:
    register_model_adapter(detect)
    if not hasattr(VectorField, "from_k_diffusion"):
        # `VectorField.from_k_diffusion(model)`: the adapter's function, attached here (field.py never imports it)
        VectorField.from_k_diffusion = staticmethod(from_k_diffusion)


_register()

__all__ = ["K_DIFFUSION_TO_DIFFSOLVE", "DIFFSOLVE_TO_K_DIFFUSION", "sample", "sampler_function", "sampler_names",
           "solver_name_of", "from_k_diffusion", "is_k_diffusion_denoiser", "is_edm_network", "EDMNetwork",
           "edm_sigma_range", "detect"] + sorted(name for name in dict(globals()) if name.startswith("sample_"))
