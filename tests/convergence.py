"""Measuring a solver's order of convergence on the analytic Gaussian (the solvers' and the learned corrections'
order tests share it): RMS error against the exact probability-flow solution over refined grids, and the slope
of log error against log steps."""
import torch

from diffsolve import Sampler

STEPS = (16, 32, 64, 128)
TOL = 0.3

# Multistep methods warmed up by lower-order steps reach their asymptotic regime later; these grids and step
# counts are where their declared order shows (measured; see the solver modules' docstrings).
SETTINGS = {
    "deis": ("time_uniform", (64, 128, 256, 512)),
    "learned_multistep": ("time_uniform", (64, 128, 256, 512)),     # untrained: DEIS at full order
    "pas": ("time_uniform", (64, 128, 256, 512)),                   # untrained: learned_multistep exactly
    "lms": ("logsnr_uniform", (32, 64, 128, 256)),
    "ipndm_v": ("logsnr_uniform", (32, 64, 128, 256)),
    "unipc_bh2": ("logsnr_uniform", (16, 32, 64, 128)),
    "dpmpp_3s": ("logsnr_uniform", (16, 32, 64, 128)),   # time_uniform starts with very uneven log-SNR steps
}


def slope(errors, steps=STEPS, finest=3):
    x = torch.log(torch.tensor(steps[-finest:], dtype=torch.float64))
    y = torch.log(torch.tensor(errors[-finest:], dtype=torch.float64))
    xm, ym = x.mean(), y.mean()
    return float(-((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())


def errors_of(name, problem, grid, options, steps=STEPS):
    noise = torch.randn(16, problem.mean.numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errs = []
    for n in steps:
        sampler = Sampler(problem, name, grid=grid, grid_options={"final": "min"}, progress=False, **options)
        out = sampler.run(steps=n, noise=noise)
        t0, t1 = float(out.t[0]), float(out.t[-1])
        exact = problem.ode_solution(noise * problem.schedule.prior_std(t0), t0, t1)
        errs.append(float((out.samples - exact).pow(2).mean().sqrt()))
    return errs
