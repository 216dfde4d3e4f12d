"""The Sampler: NFE accounting, budgets, callbacks, trajectories, seeds, guidance, and clear errors on bad input."""
import pytest
import torch
from conftest import Counting, untrained_corrections

from diffsolve import (ClassifierFreeGuidance, EDMSchedule, InvalidArgument, NonFiniteError, Sampler, VectorField,
                       available_solvers, get_solver)
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem




FIXED = [n for n in available_solvers() if get_solver(n).deterministic and not getattr(get_solver(n), "adaptive", False)]


@untrained_corrections
@pytest.mark.parametrize("name", FIXED)
def test_nfe_budget_is_never_exceeded_and_reported_exactly(name):
    model = Counting(GaussianProblem.default(dim=4))
    sampler = Sampler(model, name, progress=False)
    for budget in (4, 5, 6, 8, 10, 15):
        try:
            plan_steps = sampler.steps_for_nfe(budget)
        except InvalidArgument:
            continue   # the solver cannot take even one step in this budget (error tested below)
        model.calls = 0
        out = sampler.run(nfe=budget, batch_size=2, seed=0)
        assert out.nfe == model.calls <= budget
        assert out.steps == plan_steps
        # and the next step count the solver accepts would not have fitted
        more = next(n for n in range(plan_steps + 1, 4 * plan_steps + 2) if sampler.solver.fit_steps(n) == n)
        assert sampler.plan(steps=more).nfe > budget


def test_nfe_too_small_names_the_minimum():
    with pytest.raises(InvalidArgument, match=r"nfe=3 is too small for solver 'rk4'.*at least 4"):
        Sampler(GaussianProblem.default(), "rk4", grid_options={"final": "min"}, progress=False).run(nfe=3)


def test_callback_and_trajectory():
    seen = []
    out = Sampler(GaussianProblem.default(), "heun", progress=False).run(
        steps=6, batch_size=3, seed=1, callback=seen.append, return_trajectory=True)
    assert [s.i for s in seen] == list(range(6))
    assert seen[-1].nfe == out.nfe == 11
    assert out.trajectory.shape == (7, 3, 8)
    torch.testing.assert_close(out.trajectory[-1], out.samples)
    assert all(s.denoised is not None and s.denoised.shape == (3, 8) for s in seen)
    assert seen[0].t == float(out.t[0]) and seen[-1].t_next == 0.0


def test_seed_and_generator_reproduce_and_reuse_across_batch_sizes():
    sampler = Sampler(GaussianMixtureProblem.default(dim=4), "dpmpp_2m", progress=False)
    a = sampler.run(steps=8, batch_size=5, seed=3).samples
    b = sampler.run(steps=8, batch_size=5, seed=3).samples
    c = sampler.run(steps=8, batch_size=5, generator=torch.Generator().manual_seed(3)).samples
    assert torch.equal(a, b) and torch.equal(a, c)
    d = sampler.run(steps=8, batch_size=2, seed=[10, 11]).samples
    e = sampler.run(steps=8, batch_size=1, seed=[11]).samples
    torch.testing.assert_close(d[1:], e, rtol=1e-6, atol=1e-6)   # a per-sample seed follows the sample
    assert sampler.run(steps=3, batch_size=7, seed=0).samples.shape == (7, 4)


def test_classifier_free_guidance_doubles_nfe_and_extrapolates():
    g = GaussianProblem.default(dim=3)

    def net(x, t, shift=0.0):
        return g(x, t) + shift

    field = VectorField(net, "x0", g.schedule, sample_shape=(3,))
    guided = ClassifierFreeGuidance(field, scale=3.0, uncond_kwargs={"shift": 0.0})
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = Sampler(guided, "euler", progress=False).run(steps=1, noise=noise, shift=1.0)
    assert out.nfe == 2
    p = guided.at(0.0 + 1e-3)
    x = torch.zeros(1, 3, dtype=torch.float64)
    torch.testing.assert_close(guided.denoise(x, p, shift=1.0), field.denoise(x, p) + 3.0)
    with pytest.raises(InvalidArgument, match="too small"):
        Sampler(guided, "euler", progress=False).run(nfe=1, noise=noise)


def test_float32_state_float64_scalars():
    out = Sampler(GaussianProblem.default(), "dpmpp_2m", progress=False).run(steps=10, batch_size=2, seed=0)
    assert out.samples.dtype == torch.float32 and out.t.dtype == torch.float64


# --- bad input ------------------------------------------------------------------------------------
def test_unknown_names_list_the_allowed_values():
    g = GaussianProblem.default()
    with pytest.raises(InvalidArgument, match=r"solver='nope' is not known; allowed values: .*'dpmpp_2m'.*'euler'"):
        Sampler(g, "nope")
    with pytest.raises(InvalidArgument, match=r"prediction='noize'.*allowed values.*'eps'"):
        VectorField(lambda x, t: x, "noize", EDMSchedule())
    with pytest.raises(InvalidArgument, match=r"schedule='vp_wrong'.*allowed values"):
        VectorField(lambda x, t: x, "eps", "vp_wrong")
    with pytest.raises(InvalidArgument, match="time_convention"):
        VectorField(lambda x, t: x, "velocity", time_convention="backwards")


def test_missing_arguments_are_named():
    with pytest.raises(InvalidArgument, match="prediction= is missing"):
        Sampler(lambda x, t: x)
    with pytest.raises(InvalidArgument, match="schedule= is missing"):
        Sampler(lambda x, t: x, prediction="eps")
    with pytest.raises(InvalidArgument, match="shape= is missing"):
        Sampler(lambda x, t: x, prediction="x0", schedule="edm", progress=False).run(steps=3)
    with pytest.raises(InvalidArgument, match="steps= or nfe= is missing"):
        Sampler(GaussianProblem.default(), progress=False).run()


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(InvalidArgument, match="steps="):
        Sampler(GaussianProblem.default(), "euler", progress=False).run(steps=steps)


def test_non_decreasing_grid_is_refused():
    with pytest.raises(InvalidArgument, match="strictly decreasing"):
        Sampler(GaussianProblem.default(), "euler", grid=[10.0, 20.0, 0.0], progress=False).run(batch_size=1)


def test_wrong_noise_shape():
    with pytest.raises(InvalidArgument, match=r"noise has shape \(2, 5\) but the model expects \(2, 8\)"):
        Sampler(GaussianProblem.default(), "euler", progress=False).run(steps=2, noise=torch.zeros(2, 5))


def test_plain_velocity_field_refuses_schedule_solvers():
    with pytest.raises(InvalidArgument, match="needs a Gaussian noise schedule.*plain velocity field"):
        Sampler(lambda x, t: -x, "dpmpp_2m", prediction="velocity")


def test_nan_from_the_model_names_the_step():
    g = GaussianProblem.default()
    bad_from = 0.5   # the model breaks once the noise level drops below this

    def net(x, t):
        out = g(x, t)
        return torch.where(t[:, None] < bad_from, torch.full_like(out, float("nan")), out)

    sampler = Sampler(net, "euler", prediction="x0", schedule=g.schedule, sample_shape=(8,), progress=False)
    t = sampler.times(10)
    first_bad = int(torch.nonzero(t < bad_from)[0])
    with pytest.raises(NonFiniteError, match=f"step {first_bad} ") as err:
        sampler.run(steps=10, batch_size=2, seed=0)
    assert err.value.step == first_bad and err.value.t == pytest.approx(float(t[first_bad]))


@pytest.mark.parametrize("schedule", ["ve", "edm", "vp_linear", "vp_cosine", "vp_continuous", "rectified_flow"])
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m"])
def test_every_schedule_samples_on_its_default_grid(schedule, solver):
    """Default grid of every built-in schedule, to zero noise: close to the exact ODE solution. (Heun in the EDM
    frame on the cosine schedule, whose s reaches 2e4, needs this many uniform-time steps; at 40 it is 118% off.)"""
    from diffsolve import get_schedule
    g = GaussianProblem.default(dim=4, schedule=get_schedule(schedule))
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = Sampler(g, solver, progress=False).run(steps=160, noise=noise)
    t0 = float(out.t[0])
    exact = g.ode_solution(noise * g.schedule.prior_std(t0), t0, 0.0)
    assert float(out.t[-1]) == 0.0
    rel = float((out.samples - exact).norm() / exact.norm())
    assert rel < 0.05, rel


def test_eps_model_at_pure_noise_is_refused_before_sampling():
    from diffsolve import RectifiedFlow
    field = VectorField(lambda x, t: x, "eps", RectifiedFlow(), sample_shape=(2,))
    with pytest.raises(InvalidArgument, match=r"prediction='eps' gives no data prediction at pure noise.*t_max"):
        Sampler(field, "euler", progress=False).run(steps=4)
    out = Sampler(field, "euler", grid_options={"t_max": 0.999}, progress=False).run(steps=4, batch_size=2, seed=0)
    assert torch.isfinite(out.samples).all()


def test_more_bad_input_is_named():
    g = GaussianProblem.default(dim=2)
    with pytest.raises(InvalidArgument, match=r"grid 'karras' does not take option\(s\) \['rho_'\]; its options"):
        Sampler(g, "euler", grid="karras", grid_options={"rho_": 3}, progress=False).run(steps=3, batch_size=1)
    with pytest.raises(InvalidArgument, match="batch_size=-1"):
        Sampler(g, "euler", progress=False).run(steps=3, batch_size=-1)
    assert Sampler(g, "euler", progress=False).run(steps=3, batch_size=0).samples.shape == (0, 2)   # zero is a value
    with pytest.raises(InvalidArgument, match="dtype='int8'.*allowed values"):
        Sampler(g, "euler", progress=False).run(steps=3, batch_size=1, dtype="int8")
    with pytest.raises(InvalidArgument, match="floating-point"):
        Sampler(g, "euler", progress=False).run(steps=3, noise=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(InvalidArgument, match="clip_x0=1.0"):
        VectorField(g, clip_x0=1.0)
    with pytest.raises(InvalidArgument, match="sigma_min=5"):
        EDMSchedule(5.0, 1.0)
    out = Sampler(g, "euler", progress=False).run(steps=3, batch_size=2, seed=0, dtype="float64")
    assert out.samples.dtype == torch.float64
