"""Schedules: lambda and its inverse agree, derivatives match finite differences, builders match their formulas."""
import math

import pytest
import torch

from diffsolve import CustomSchedule, EDMSchedule, RectifiedFlow, VESchedule, VPContinuous, VPDiscrete

ALL = {
    "vp_linear": VPDiscrete.linear(),
    "vp_scaled_linear": VPDiscrete.scaled_linear(),
    "vp_cosine": VPDiscrete.cosine(),
    "vp_geometric": VPDiscrete.geometric(),
    "vp_continuous": VPContinuous(),
    "ve": VESchedule(),
    "edm": EDMSchedule(),
    "rectified_flow": RectifiedFlow(),
    "custom": CustomSchedule(lambda t: torch.cos(t * math.pi / 2), lambda t: torch.sin(t * math.pi / 2),
                             t_min=1e-3, t_max=0.999),
}


def _inner_times(sch, n=41):
    return torch.linspace(sch.t_min, sch.t_max, n, dtype=torch.float64)[1:-1]


@pytest.mark.parametrize("name", ALL)
def test_lambda_inverse_round_trip(name):
    sch = ALL[name]
    t = _inner_times(sch)
    torch.testing.assert_close(sch.t_from_lambda(sch.lambda_(t)), t, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(sch.t_from_edm_sigma(sch.edm_sigma(t)), t, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ALL)
def test_lambda_strictly_decreasing_and_zero_noise_end(name):
    sch = ALL[name]
    lam = sch.lambda_(_inner_times(sch, 200))
    assert torch.all(lam[1:] < lam[:-1])
    assert float(sch.sigma(0.0)) == 0.0


@pytest.mark.parametrize("name", ALL)
def test_derivatives_match_finite_differences(name):
    sch = ALL[name]
    t = _inner_times(sch, 13)
    if isinstance(sch, VPDiscrete):   # piecewise linear in t: probe between nodes, not across a kink
        t = sch.t_from_index(torch.round(sch.timestep_index(t)) + 0.5)
    h = 1e-6 * (sch.t_max - sch.t_min)
    fd_a = (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h)
    fd_s = (sch.sigma(t + h) - sch.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(sch.d_alpha(t), fd_a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sch.d_sigma(t), fd_s, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_continuous"])
def test_variance_preserving(name):
    sch = ALL[name]
    t = _inner_times(sch)
    torch.testing.assert_close(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t), rtol=1e-12, atol=1e-12)


def test_vp_discrete_hits_alphas_cumprod_at_integer_timesteps():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    sch = VPDiscrete.linear()
    n = torch.tensor([0, 1, 10, 500, 999], dtype=torch.float64)
    t = sch.t_from_index(n)
    torch.testing.assert_close(sch.alpha(t) ** 2, abar[n.long()], rtol=1e-12, atol=0)
    torch.testing.assert_close(sch.model_time(t), n)


def test_scaled_linear_and_cosine_builders():
    sl = VPDiscrete.scaled_linear()
    b = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sl.alphas_cumprod, torch.cumprod(1 - b, 0))
    cos = VPDiscrete.cosine()
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cos.alphas_cumprod[499]) == pytest.approx(f(0.5) / f(0.0), rel=1e-9)


def test_vp_continuous_closed_form():
    sch = VPContinuous(0.1, 20.0)
    t = torch.tensor([0.25], dtype=torch.float64)
    expected = math.exp(-0.25 * 0.25 ** 2 * 19.9 - 0.5 * 0.25 * 0.1)
    assert float(sch.alpha(t)) == pytest.approx(expected, rel=1e-13)


def test_rectified_flow_and_edm_forms():
    rf, edm = RectifiedFlow(), EDMSchedule()
    t = torch.tensor([0.2, 0.6], dtype=torch.float64)
    torch.testing.assert_close(rf.alpha(t), 1 - t)
    torch.testing.assert_close(rf.edm_sigma(t), t / (1 - t))
    torch.testing.assert_close(edm.edm_sigma(t), t)
    assert rf.reaches_pure_noise and not edm.reaches_pure_noise


def test_custom_schedule_rejects_non_monotone_snr():
    with pytest.raises(ValueError, match="strictly decrease"):
        CustomSchedule(lambda t: torch.ones_like(t), lambda t: 1 + torch.sin(6 * t), t_min=0.01, t_max=1.0)
