"""Step grids: formulas, ends, agreement with diffusers' timestep spacings, and validation of bad grids."""
import math

import pytest
import torch

from diffsolve import EDMSchedule, InvalidArgument, RectifiedFlow, VPContinuous, VPDiscrete
from diffsolve.grids import AYS_SD15, GRIDS, from_sigmas, make_grid, validate_grid

SCHEDULES = {"edm": EDMSchedule(), "vp_linear": VPDiscrete.linear(), "vp_continuous": VPContinuous(),
             "rectified_flow": RectifiedFlow()}


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("final", ["zero", "min"])
def test_every_grid_is_valid_for_every_step_count(grid, schedule, final):
    sch = SCHEDULES[schedule]
    if grid == "discrete" and not isinstance(sch, VPDiscrete):
        pytest.raises(InvalidArgument, make_grid, grid, 5, sch)
        return
    if grid in ("karras", "karras_index", "logsnr_uniform") and sch.reaches_pure_noise:
        pytest.raises(InvalidArgument, make_grid, grid, 5, sch, final=final)
        return
    for steps in (1, 2, 3, 7, 25):
        t = make_grid(grid, steps, sch, final=final)
        assert t.dtype == torch.float64 and t.numel() == steps + 1
        assert (float(t[-1]) == 0.0) == (final == "zero")


def test_karras_matches_formula_on_edm():
    t = make_grid("karras", 10, EDMSchedule(0.002, 80.0), rho=7.0)
    i = torch.arange(10, dtype=torch.float64)
    expect = (80 ** (1 / 7) + i / 9 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(t[:-1], expect, rtol=1e-14, atol=0)
    assert float(t[-1]) == 0.0


def test_karras_on_vp_is_in_edm_sigma():
    sch = VPDiscrete.linear()
    t = make_grid("karras", 6, sch, final="min", rho=1.0)
    s = sch.edm_sigma(t)
    torch.testing.assert_close(s[1:] - s[:-1], torch.full((6,), float(s[1] - s[0]), dtype=torch.float64), rtol=1e-8,
                               atol=0)


def test_logsnr_uniform_is_uniform_in_lambda():
    sch = VPContinuous()
    lam = sch.lambda_(make_grid("logsnr_uniform", 8, sch, final="min"))
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])), rtol=1e-9, atol=0)


def test_time_quadratic_is_uniform_in_sqrt_t():
    sch = VPContinuous()
    r = make_grid("time_quadratic", 9, sch, final="min").sqrt()
    d = r[1:] - r[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [5, 10, 25, 50])
def test_discrete_spacings_match_diffusers(spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sched.set_timesteps(steps)
    sch = VPDiscrete.linear()
    t = make_grid("discrete", steps, sch, spacing=spacing)
    ours = torch.round(sch.timestep_index(t[:-1])).long()
    assert ours.tolist() == sched.timesteps.tolist()


def test_ays_reproduces_the_published_10_steps_and_interpolates():
    sch = VPDiscrete.scaled_linear()
    s10 = sch.edm_sigma(make_grid("ays", 10, sch))
    # the first published value (rounded) is clamped to the schedule's sigma_max = 14.6146...
    torch.testing.assert_close(s10[:-1], torch.tensor(AYS_SD15[:-1], dtype=torch.float64), rtol=1e-4, atol=0)
    torch.testing.assert_close(s10[1:-1], torch.tensor(AYS_SD15[1:-1], dtype=torch.float64), rtol=1e-9, atol=0)
    s20 = sch.edm_sigma(make_grid("ays", 20, sch))
    assert torch.all(s20[1:] < s20[:-1]) and float(s20[0]) == pytest.approx(sch.sigma_max)
    # log-linear interpolation: the 20-step list passes through the 10-step values at every other... index fraction
    logs = torch.log(torch.tensor(AYS_SD15[:-1], dtype=torch.float64))
    mid = float(torch.exp((logs[4] + logs[5]) / 2))
    s19 = sch.edm_sigma(make_grid("ays", 19, sch))
    assert float(s19[9]) == pytest.approx(mid, rel=1e-9)


def test_user_sigmas_and_times():
    sch = EDMSchedule()
    t = from_sigmas([10.0, 1.0, 0.1, 0.0], sch)
    assert t.tolist() == [10.0, 1.0, 0.1, 0.0]
    t2 = make_grid([0.9, 0.5, 0.1, 0.0], None, RectifiedFlow())
    assert t2.tolist() == [0.9, 0.5, 0.1, 0.0]


@pytest.mark.parametrize("bad, match", [
    ([0.5, 0.5, 0.0], "strictly decreasing"),
    ([0.2, 0.5, 0.0], "strictly decreasing"),
    ([0.5, float("nan"), 0.0], "NaN"),
    ([1.5, 0.5, 0.0], "t_max"),
    ([0.5, 1e-7, 0.0], "t_min"),
    ([0.5], "at least 2"),
])
def test_bad_grids_are_refused_with_a_reason(bad, match):
    with pytest.raises(InvalidArgument, match=match):
        validate_grid(torch.tensor(bad, dtype=torch.float64), RectifiedFlow())


def test_bad_grid_names_and_options():
    with pytest.raises(InvalidArgument, match="grid='nope'.*allowed values"):
        make_grid("nope", 5, EDMSchedule())
    with pytest.raises(InvalidArgument, match="final"):
        make_grid("karras", 5, EDMSchedule(), final="sometimes")
    with pytest.raises(InvalidArgument, match="steps"):
        make_grid("karras", 0, EDMSchedule())
    with pytest.raises(InvalidArgument, match="needs a noise schedule"):
        make_grid("karras", 5, None)
