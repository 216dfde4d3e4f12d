"""`sample_<name>` functions: k-diffusion's samplers with k-diffusion's own signatures, run by diffsolve's solvers,
and one function per other registered diffsolve solver. Checked against k-diffusion 0.1.1.post1's sampling module
(tests/adapters/test_k_diffusion.py runs each on the same denoiser, sigmas and noise).

Each k-diffusion function takes k-diffusion's arguments by name; `seed=` (diffsolve's batch-invariant step
noise) is the one addition. A misspelt keyword is refused naming the valid ones.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.pretrained_adapters.k_diffusion.outbound import (K_DIFFUSION_TO_DIFFSOLVE, sample, solver_name_of)
from diffsolve.solvers.base import available_solvers

INF = float("inf")


def _refuse_unknown(fn: Callable, unexpected: dict) -> None:
    if unexpected:
        valid = [p for p in inspect.signature(fn).parameters if p not in ("unexpected",)]
        raise InvalidArgument(f"{fn.__name__}() got unexpected keyword(s) {sorted(unexpected)}; "
                              f"valid: {', '.join(valid)}")


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=INF,
                 s_noise=1., *, seed=None, **unexpected):
    """Euler steps (Karras et al. 2022, Algorithm 2), run by diffsolve's 'euler' (with s_churn > 0:
    'euler_churn').

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        s_churn (float): EDM churn; > 0 selects diffsolve's churn solver (0: none).
        s_tmin (float): the smallest sigma churn applies at.
        s_tmax (float): the largest sigma churn applies at (default inf).
        s_noise (float): scales the churn noise (default 1; no effect without churn).
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_euler, unexpected)
    return sample("euler", model, x, sigmas, extra_args, callback, disable, seed=seed, s_churn=s_churn,
                  s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=INF,
                s_noise=1., *, seed=None, **unexpected):
    """Heun steps (Karras et al. 2022, Algorithm 2), run by diffsolve's 'heun' (with s_churn > 0: 'edm_churn').

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        s_churn (float): EDM churn; > 0 selects diffsolve's churn solver (0: none).
        s_tmin (float): the smallest sigma churn applies at.
        s_tmax (float): the largest sigma churn applies at (default inf).
        s_noise (float): scales the churn noise (default 1; no effect without churn).
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_heun, unexpected)
    return sample("heun", model, x, sigmas, extra_args, callback, disable, seed=seed, s_churn=s_churn,
                  s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=INF,
                 s_noise=1., *, seed=None, **unexpected):
    """DPM-Solver-2 steps in k-diffusion's form, run by diffsolve's 'dpm_solver_2' (no churn).

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        s_churn (float): EDM churn; > 0 selects diffsolve's churn solver (0: none).
        s_tmin (float): the smallest sigma churn applies at.
        s_tmax (float): the largest sigma churn applies at (default inf).
        s_noise (float): scales the churn noise (default 1; no effect without churn).
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: s_churn > 0, an unknown keyword, a non-float x, sigmas not finite, negative or all zero,
            or a noise draw of the wrong shape.
    """
    _refuse_unknown(sample_dpm_2, unexpected)
    return sample("dpm_2", model, x, sigmas, extra_args, callback, disable, seed=seed, s_churn=s_churn,
                  s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None, *, seed=None, **unexpected):
    """Ancestral sampling with Euler steps, run by diffsolve's 'euler_ancestral'.

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        eta (float): the share of ancestral noise (default 1; 0 is deterministic).
        s_noise (float): scales the step noise (default 1).
        noise_sampler (Callable | None): `noise_sampler(sigma, sigma_next)` -> the step noise, of x's shape;
            with None, k-diffusion's own draws from torch's global generator.
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_euler_ancestral, unexpected)
    return sample("euler_ancestral", model, x, sigmas, extra_args, callback, disable, noise_sampler, seed,
                  eta=eta, s_noise=s_noise)


def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                              noise_sampler=None, *, seed=None, **unexpected):
    """DPM-Solver++(2S) ancestral (Lu et al. 2022), run by diffsolve's 'dpmpp_2s_ancestral'.

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        eta (float): the share of ancestral noise (default 1; 0 is deterministic).
        s_noise (float): scales the step noise (default 1).
        noise_sampler (Callable | None): `noise_sampler(sigma, sigma_next)` -> the step noise, of x's shape;
            with None, k-diffusion's own draws from torch's global generator.
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_dpmpp_2s_ancestral, unexpected)
    return sample("dpmpp_2s_ancestral", model, x, sigmas, extra_args, callback, disable, noise_sampler, seed,
                  eta=eta, s_noise=s_noise)


def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4, *, seed=None,
               **unexpected):
    """Linear multistep in sigma (k-diffusion's LMS), run by diffsolve's 'lms'.

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        order (int): the multistep order (default 4).
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_lms, unexpected)
    return sample("lms", model, x, sigmas, extra_args, callback, disable, seed=seed, order=order)


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, *, seed=None, **unexpected):
    """DPM-Solver++(2M) (Lu et al. 2022), run by diffsolve's 'dpmpp_2m'.

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_dpmpp_2m, unexpected)
    return sample("dpmpp_2m", model, x, sigmas, extra_args, callback, disable, seed=seed)


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None, solver_type="midpoint", *, seed=None, **unexpected):
    """DPM-Solver++(2M) SDE, run by diffsolve's 'dpmpp_2m_sde' (default noise: a Brownian tree, as k-diffusion).

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        eta (float): the share of ancestral noise (default 1; 0 is deterministic).
        s_noise (float): scales the step noise (default 1).
        noise_sampler (Callable | None): `noise_sampler(sigma, sigma_next)` -> the step noise, of x's shape;
            with None, k-diffusion's own draws from torch's global generator.
        solver_type (str): "midpoint" or "heun", the second-order variant.
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_dpmpp_2m_sde, unexpected)
    return sample("dpmpp_2m_sde", model, x, sigmas, extra_args, callback, disable, noise_sampler, seed,
                  eta=eta, s_noise=s_noise, solver_type=solver_type)


def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                        noise_sampler=None, *, seed=None, **unexpected):
    """DPM-Solver++(3M) SDE, run by diffsolve's 'dpmpp_3m_sde' (default noise: a Brownian tree, as k-diffusion).

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigmas[0] (a floating-point tensor).
        sigmas (Tensor): the noise levels, largest first, usually ending with 0 (k-diffusion's get_sigmas_*).
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict (x, i, sigma, sigma_hat, denoised) before each update.
        disable (bool | None): False shows a progress bar (None or True: none).
        eta (float): the share of ancestral noise (default 1; 0 is deterministic).
        s_noise (float): scales the step noise (default 1).
        noise_sampler (Callable | None): `noise_sampler(sigma, sigma_next)` -> the step noise, of x's shape;
            with None, k-diffusion's own draws from torch's global generator.
        seed (int | None): diffsolve's counter-based, batch-invariant step noise instead (not with noise_sampler).
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor): the sample at the last sigma.

    Raises:
        InvalidArgument: an unknown keyword, a non-float x, sigmas not finite, negative or all zero, or a noise
            draw of the wrong shape.
    """
    _refuse_unknown(sample_dpmpp_3m_sde, unexpected)
    return sample("dpmpp_3m_sde", model, x, sigmas, extra_args, callback, disable, noise_sampler, seed,
                  eta=eta, s_noise=s_noise)


def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0., icoeff=1., dcoeff=0., accept_safety=0.81,
                        eta=0., s_noise=1., noise_sampler=None, return_info=False, **unexpected):
    """DPM-Solver-12/23 with adaptive steps from sigma_max down to sigma_min, run by diffsolve's 'dpm_adaptive'
    (DPM-Solver's own step-size rule: k-diffusion's PID coefficients and accept_safety other than their defaults,
    and eta > 0, are refused). `return_info=True` also returns {'steps', 'nfe'}.

    Args:
        model (Callable): the denoiser, `model(x, sigma * s_in, **extra_args)` -> the denoised sample.
        x (Tensor): the starting state, noise * sigma_max.
        sigma_min (float): the last noise level, > 0.
        sigma_max (float): the first noise level, > sigma_min.
        extra_args (dict | None): keyword arguments every model call gets (None: none).
        callback (Callable | None): gets k-diffusion's dict after each accepted step.
        disable (bool | None): False shows a progress bar.
        order (int): 2 (DPM-Solver-12) or 3 (DPM-Solver-23, the default).
        rtol (float): the relative tolerance (default 0.05).
        atol (float): the absolute tolerance (default 0.0078).
        h_init (float): the first step in log-sigma (default 0.05).
        pcoeff (float): must be 0.
        icoeff (float): must be 1.
        dcoeff (float): must be 0.
        accept_safety (float): must be 0.81 (the solver keeps DPM-Solver's own acceptance rule).
        eta (float): must be 0.
        s_noise (float): unused (k-diffusion's signature).
        noise_sampler (Callable | None): unused (k-diffusion's signature).
        return_info (bool): also return the run's info dict.
        **unexpected (Any): any other keyword is refused, naming the valid ones.

    Returns:
        (Tensor | tuple): the sample, or (sample, info) with return_info=True.

    Raises:
        InvalidArgument: other PID coefficients, accept_safety or eta, sigmas out of order or not finite, or an
            unknown keyword.
    """
    _refuse_unknown(sample_dpm_adaptive, unexpected)
    if (pcoeff, icoeff, dcoeff, accept_safety) != (0., 1., 0., 0.81) or eta:
        raise InvalidArgument("sample_dpm_adaptive runs DPM-Solver's integral step-size rule without noise: "
                              "pcoeff=0, icoeff=1, dcoeff=0, accept_safety=0.81 and eta=0 only")
    lo, hi = float(sigma_min), float(sigma_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise InvalidArgument(f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r}: need 0 < sigma_min < sigma_max")
    sigmas = torch.tensor([hi, lo], dtype=torch.float64)
    out = _adaptive_run(model, x, sigmas, extra_args, callback, disable, order=order, rtol=rtol, atol=atol,
                        h_init=h_init)
    return out if return_info else out[0]


def _adaptive_run(model, x, sigmas, extra_args, callback, disable, **opts):
    info: dict[str, Any] = {"steps": 0, "nfe": 0}

    def keep(d):
        info["steps"] = int(d["i"]) + 1
        if callback is not None:
            callback(d)

    def counted(x, sigma, **kwargs):
        info["nfe"] += 1
        return model(x, sigma, **kwargs)

    samples = sample("dpm_adaptive", counted, x, sigmas, extra_args, keep, disable, **opts)
    return samples, info


def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.,
                    s_noise=1., noise_sampler=None, **unexpected):
    """DPM-Solver-Fast has no diffsolve counterpart: use sample_dpm_solver_3 on k-diffusion's
    get_sigmas_exponential(n // 3 + 1, sigma_min, sigma_max) (third-order singlestep steps uniform in log-SNR).

    Its arguments are k-diffusion's (`model`, `x`, `sigma_min`, `sigma_max`, `n`, `extra_args`, `callback`, `disable`,
    `eta`, `s_noise`, `noise_sampler`, `**unexpected`); none is used.

    Raises:
        InvalidArgument: always, naming the nearest sampler.
    """
    raise InvalidArgument("k-diffusion's sample_dpm_fast has no diffsolve counterpart; the nearest is "
                          "sample_dpm_solver_3 on sigmas uniform in log-sigma (get_sigmas_exponential)")


def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                           noise_sampler=None, **unexpected):
    """DPM-Solver-2 ancestral has no diffsolve counterpart: the nearest is sample_dpmpp_2s_ancestral.

    Its arguments are k-diffusion's (`model`, `x`, `sigmas`, `extra_args`, `callback`, `disable`, `eta`, `s_noise`,
    `noise_sampler`, `**unexpected`); none is used.

    Raises:
        InvalidArgument: always, naming the nearest sampler.
    """
    raise InvalidArgument("k-diffusion's sample_dpm_2_ancestral has no diffsolve counterpart; the nearest is "
                          "sample_dpmpp_2s_ancestral (second-order singlestep ancestral steps)")


def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1.,
                     noise_sampler=None, r=1 / 2, **unexpected):
    """DPM-Solver++ (stochastic, singlestep) has no diffsolve counterpart: the nearest is sample_dpmpp_2m_sde.

    Its arguments are k-diffusion's (`model`, `x`, `sigmas`, `extra_args`, `callback`, `disable`, `eta`, `s_noise`,
    `noise_sampler`, `r`, `**unexpected`); none is used.

    Raises:
        InvalidArgument: always, naming the nearest sampler.
    """
    raise InvalidArgument("k-diffusion's sample_dpmpp_sde has no diffsolve counterpart; the nearest is "
                          "sample_dpmpp_2m_sde (DPM-Solver++(2M) SDE)")


def _sampler(name: str) -> Callable[..., torch.Tensor]:
    """`sample_<name>` for a diffsolve solver name, unchecked: the name is resolved when the function runs; its
    options are the solver's (`diffsolve solvers --verbose`)."""
    solver = K_DIFFUSION_TO_DIFFSOLVE.get(name) or name

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, seed=None,
           **options):
        return sample(name, model, x, sigmas, extra_args, callback, disable, noise_sampler, seed, **options)

    fn.__name__ = fn.__qualname__ = f"sample_{name}"
    fn.__doc__ = (f"k-diffusion-style sampler running diffsolve's {solver!r} solver: (model, x, sigmas, "
                  "extra_args=None, callback=None, disable=None, noise_sampler=None, seed=None, **options).")
    return fn


def sampler_function(name: str) -> Callable[..., torch.Tensor]:
    """`sample_<name>` for a k-diffusion or diffsolve sampler name (a solver registered after this module was
    imported included).

    Args:
        name: a k-diffusion sampler name or a registered diffsolve solver name.

    Returns:
        The function: this module's own for a k-diffusion name, else one built for the solver.

    Raises:
        InvalidArgument: the name is unknown, or a k-diffusion sampler with no diffsolve counterpart.
    """
    solver_name_of(name)          # fails now, naming the choices, rather than at the first call
    own = globals().get(f"sample_{name}")
    return own if own is not None and name in K_DIFFUSION_TO_DIFFSOLVE else _sampler(name)


def sampler_names() -> list[str]:
    """Every `sample_<name>` this module offers: the registered solvers plus k-diffusion's names that map to one.

    Returns:
        The names (without "sample_"), sorted.
    """
    names = set(available_solvers()) | {k for k, v in K_DIFFUSION_TO_DIFFSOLVE.items() if v in available_solvers()}
    return sorted(names)
