"""diffsolve.likelihood against k-diffusion's log_likelihood (its sampling module from the PyPI release): the same
denoiser, data and start level, one Rademacher probe each (independent draws), dopri5 at rtol = atol = 1e-5. The
two estimates agree within their Monte-Carlo interval, and both sit near the mixture's exact log-density."""
import math

import torch

from diffsolve import likelihood
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling
from diffsolve.problems import GaussianMixtureProblem


def test_agrees_with_k_diffusion_log_likelihood():
    kd = load_k_diffusion_sampling()
    problem = GaussianMixtureProblem.default(dim=6, components=3, schedule="edm")
    sch = problem.schedule
    x = problem.sample_data(48, generator=torch.Generator().manual_seed(3)).double()
    smin, smax = sch.sigma_min, sch.sigma_max
    torch.manual_seed(0)
    ll_kd, _ = kd.log_likelihood(lambda y, s: problem(y, s), x, smin, smax, atol=1e-5, rtol=1e-5)
    ours = likelihood(problem, x, divergence="hutchinson", probes=1, seed=list(range(48)), solver="dopri5",
                      rtol=1e-5, atol=1e-5, t_start=float(sch.t_from_edm_sigma(smin)))
    diff = (ll_kd - ours.log_prob).double()
    half_width = 3 * float(diff.std()) / math.sqrt(diff.numel())
    assert abs(float(diff.mean())) < half_width, (float(diff.mean()), half_width)
    exact = likelihood(problem, x, divergence="exact", solver="dopri5", rtol=1e-5, atol=1e-5,
                       t_start=float(sch.t_from_edm_sigma(smin)))
    assert abs(float((exact.log_prob - ours.log_prob).mean())) < half_width
