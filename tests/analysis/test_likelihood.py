"""likelihood(): the probability-flow ODE's log density against closed forms (analytic Gaussian and Gaussian
mixture, whose marginals at every noise level are known), Hutchinson's estimate, dequantization."""
import math

import pytest
import torch

from diffsolve import EDMSchedule, InvalidArgument, VPContinuous, likelihood
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem

EDM = EDMSchedule()
VP = VPContinuous(t_min=1e-3)


def _exact_prior(problem, t):
    return lambda z: problem.marginal_log_prob(z, t)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [EDM, VP], ids=["edm", "vp"])
@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
def test_exact_divergence_matches_the_closed_form(kind, schedule):
    problem = (GaussianProblem.default(schedule=schedule) if kind == "gaussian"
               else GaussianMixtureProblem.default(schedule=schedule))
    x = problem.sample_data(8, torch.Generator().manual_seed(3))
    exact = problem.marginal_log_prob(x, schedule.t_min)
    r = likelihood(problem, x, prior=_exact_prior(problem, schedule.t_max), dtype=torch.float64)
    assert r.solver == "dopri5" and r.frame == "logs" and r.t_start == schedule.t_min
    assert float((r.log_prob - exact).abs().max()) < 1e-3, (r.log_prob - exact)
    torch.testing.assert_close(r.delta_log_prob + r.prior_log_prob, r.log_prob)
    assert not r.log_prob.requires_grad and r.nfe > 0 and r.vjps == r.nfe * x.shape[1]
    # The usual prior N(0, prior_std^2) ignores the data's share at t_max: a small, stated error.
    g = likelihood(problem, x, dtype=torch.float64)
    bias = float((g.log_prob - exact).mean())
    assert abs(bias) < 0.05
    torch.testing.assert_close(g.delta_log_prob, r.delta_log_prob, atol=5e-3, rtol=0)


@pytest.mark.slow
def test_fixed_rk_grid_converges():
    problem = GaussianMixtureProblem.default(dim=4, components=3, schedule=EDM)
    x = problem.sample_data(4, torch.Generator().manual_seed(1))
    exact = problem.marginal_log_prob(x, EDM.t_min)
    errs = []
    for n in (12, 24, 48):
        r = likelihood(problem, x, solver="rk4", steps=n, prior=_exact_prior(problem, EDM.t_max), dtype=torch.float64)
        assert r.nfe == 4 * n
        errs.append(float((r.log_prob - exact).abs().max()))
    assert errs[2] < errs[1] < errs[0] and errs[2] < 1e-3, errs
    with pytest.raises(InvalidArgument, match="steps="):
        likelihood(problem, x, solver="heun")


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_reproducible_per_seed(probe):
    problem = GaussianMixtureProblem.default(dim=4, components=3, schedule=EDM)
    x1 = problem.sample_data(1, torch.Generator().manual_seed(2))
    n = 256
    x = x1.expand(n, -1).clone()
    seeds = list(range(100, 100 + n))
    kw = dict(solver="rk4", steps=12, dtype=torch.float64)      # a fixed grid: every sample is on its own
    exact = likelihood(problem, x1, **kw).log_prob
    est = likelihood(problem, x, divergence="hutchinson", probe=probe, seed=seeds, **kw)
    mean, se = float(est.log_prob.mean()), float(est.log_prob.std() / math.sqrt(n))
    assert abs(mean - float(exact)) < 4 * se, (mean, float(exact), se)
    assert float(est.log_prob.std()) > 0                       # it is an estimate
    assert est.vjps == est.nfe                                  # one VJP per evaluation and probe
    again = likelihood(problem, x[5:9], divergence="hutchinson", probe=probe, seed=seeds[5:9], **kw)
    torch.testing.assert_close(again.log_prob, est.log_prob[5:9], atol=1e-12, rtol=0)   # per sample, any batch
    more = likelihood(problem, x[:32], divergence="hutchinson", probe=probe, probes=8, seed=seeds[:32], **kw)
    assert float(more.log_prob.std()) < float(est.log_prob[:32].std())                   # more probes, less spread


def test_dequantization_is_stated_and_included():
    problem = GaussianProblem.default(dim=4, schedule=EDM)
    x = problem.sample_data(4, torch.Generator().manual_seed(0)).clamp(-1, 1)
    kw = dict(solver="heun", steps=8, dtype=torch.float64, data_range=(-1.0, 1.0), seed=7)
    r = likelihood(problem, x, dequantize="uniform", **kw)
    assert r.dequantization.startswith("uniform")
    jac = 4 * math.log(2.0 / 256)
    torch.testing.assert_close(r.bits_per_dim, -r.log_prob / (4 * math.log(2.0)))
    again = likelihood(problem, x, dequantize="uniform", **kw)
    torch.testing.assert_close(again.log_prob, r.log_prob, atol=0, rtol=0)
    plain = likelihood(problem, x, **kw)
    assert plain.dequantization.startswith("none")
    torch.testing.assert_close(plain.bits_per_dim, -(plain.log_prob + jac) / (4 * math.log(2.0)))
    with pytest.raises(InvalidArgument, match="data_range"):
        likelihood(problem, x, dequantize="uniform", solver="heun", steps=2)


def test_command_line(capsys):
    import json

    from diffsolve.cli import main
    assert main(["likelihood", "--model", "gaussian", "--n", "2", "--solver", "heun", "--steps", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["nfe"] == 8 and len(out["bits_per_dim"]) == 2
    assert out["divergence"].startswith("exact") and out["dequantization"].startswith("none")


def test_command_line_takes_bench_names_and_the_old_ones(capsys):
    import json

    from diffsolve.cli import main
    assert main(["likelihood", "--model", "mixture", "--samples", "2", "--solver", "euler", "--steps", "2"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert main(["likelihood", "--model", "gmm", "--n", "2", "--solver", "euler", "--steps", "2"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert old == new and new["model"] == "gmm" and new["n"] == 2
    for bad in (["--model", "nope"], ["--samples", "0"], ["--probes", "0"], ["--rtol", "0"]):
        with pytest.raises(SystemExit) as info:
            main(["likelihood", *bad])
        assert info.value.code == 2
        assert bad[0] in capsys.readouterr().err
