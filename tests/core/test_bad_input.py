"""Bad input gets the library's own error (InvalidArgument) naming the argument, never a TypeError, a
ZeroDivisionError or a torch assertion from deep inside; an empty batch is a value and gives an empty result."""
import math
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from diffsolve import InvalidArgument, Sampler, VectorField, available_solvers, get_solver
from diffsolve.problems import GaussianProblem
from diffsolve.checks import MAX_STEPS
from diffsolve.grids import GRIDS
from diffsolve.solvers.span import MIN_TOLERANCE

PROBLEM = GaussianProblem.default()
DIM = 8
FAST = settings(max_examples=40, deadline=None)

NOT_A_NUMBER = st.one_of(st.text(max_size=4), st.booleans(), st.none(), st.lists(st.floats(), max_size=2),
                         st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")))


def _is_positive_number(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# ------------------------------------------------------------------------------------------------
# Construction: prediction=, sample_shape=
# ------------------------------------------------------------------------------------------------
@FAST
@given(st.one_of(st.lists(st.text(max_size=3), max_size=2), st.integers(), st.floats(), st.booleans(),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.text(max_size=6)))
def test_prediction_must_be_a_name(value):
    if value in ("eps", "x0", "v", "score", "velocity", "denoiser", "epsilon", "noise", "sample", "data", "flow",
                 "edm", "v_prediction"):
        return
    with pytest.raises(InvalidArgument, match="prediction=.*allowed values"):
        VectorField(PROBLEM, prediction=value)


@FAST
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=3))
def test_sample_shape_holds_positive_integers(dims):
    run = lambda shape: Sampler(lambda x, t: x, prediction="x0", schedule="edm",  # noqa: E731
                                sample_shape=shape, progress=False).run(2, seed=0)
    if all(d >= 1 for d in dims):
        assert run(tuple(np.int64(d) for d in dims)).samples.shape == (1, *dims)   # numpy integers are integers
    else:
        with pytest.raises(InvalidArgument, match=r"sample_shape\[\d\]=-?\d+: must be an integer >= 1"):
            run(tuple(dims))
    for bad in ("8", 8, (2.0,), (True,)):
        with pytest.raises(InvalidArgument, match="sample_shape"):
            run(bad)


# ------------------------------------------------------------------------------------------------
# Grids: options, explicit lists, grid functions
# ------------------------------------------------------------------------------------------------
@FAST
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), NOT_A_NUMBER))
def test_grid_options_are_checked_by_type_and_range(value):
    cases = [("karras", "rho"), ("karras", "sigma_min"), ("karras", "sigma_max"), ("logsnr_uniform", "t_max"),
             ("time_quadratic", "t_min")]
    for grid, option in cases:
        s = Sampler(PROBLEM, "euler", grid=grid, grid_options={option: value}, progress=False)
        if value is not None and not _is_positive_number(value):       # None: the grid's default
            with pytest.raises(InvalidArgument, match=f"{option}="):
                s.times(5)
        else:
            try:                          # a number in range gives a grid; out of range, a named refusal
                t = s.times(5)
                assert torch.isfinite(t).all()
            except InvalidArgument:
                pass


def test_zero_rho_is_refused_not_divided_by():
    with pytest.raises(InvalidArgument, match="rho=0.0: must be a finite number > 0"):
        Sampler(PROBLEM, "heun", grid_options={"rho": 0}, progress=False).run(5)
    with pytest.raises(InvalidArgument, match="sigmas="):
        Sampler(PROBLEM, "euler", grid="ays", grid_options={"sigmas": "14,0"}, progress=False).times(3)
    with pytest.raises(InvalidArgument, match="sigma_min=80.0 must be below sigma_max=1.0"):
        Sampler(PROBLEM, "euler", grid_options={"sigma_min": 80.0, "sigma_max": 1.0}, progress=False).times(3)


@FAST
@given(st.lists(st.one_of(st.floats(0, 80), st.text(max_size=3), st.none(), st.booleans()), min_size=2,
                max_size=5))
def test_explicit_grids_hold_real_numbers(items):
    run = lambda: Sampler(PROBLEM, "euler", grid=items, progress=False).run(noise=torch.zeros(1, DIM))  # noqa
    if any(isinstance(v, (str, bool)) or v is None for v in items):
        with pytest.raises(InvalidArgument, match="grid=.*times must be real numbers"):
            run()
    else:
        try:
            run()
        except InvalidArgument:              # not strictly decreasing, or out of range: named
            pass


@pytest.mark.parametrize("returned", [None, "80 0", {"t": 1}, 3.0, torch.tensor([True, False])])
def test_a_grid_function_must_return_times(returned):
    def bad_grid(steps, schedule):
        return returned
    with pytest.raises(InvalidArgument, match="grid function 'bad_grid' returned"):
        Sampler(PROBLEM, "euler", grid=bad_grid, progress=False).run(3)


# ------------------------------------------------------------------------------------------------
# run(): shape=, device=, batch_size=
# ------------------------------------------------------------------------------------------------
@FAST
@given(st.integers(0, 3), st.lists(st.integers(1, 20), min_size=1, max_size=2))
def test_run_shape_must_fit_the_model(batch, sample):
    s = Sampler(PROBLEM, "euler", progress=False)
    if tuple(sample) == (DIM,):
        assert s.run(2, shape=(batch, *sample), seed=0).samples.shape == (batch, DIM)
    else:
        with pytest.raises(InvalidArgument, match=r"shape=.*does not fit the model.*\(8,\)"):
            s.run(2, shape=(batch, *sample), seed=0)


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "tpu", "nonsense", 3.5])
def test_devices_that_are_not_here_are_named(device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(InvalidArgument, match="device.*available here: cpu"):
        Sampler(PROBLEM, "euler", progress=False).run(2, device=device)


# ------------------------------------------------------------------------------------------------
# Planning: a documented cap on steps, refused up front
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "rk4"])
def test_huge_budgets_are_refused_in_well_under_a_second(solver):
    s = Sampler(PROBLEM, solver, progress=False)
    for call in (lambda: s.plan(nfe=3_000_000), lambda: s.plan(steps=MAX_STEPS + 1),
                 lambda: s.run(nfe=3_000_000), lambda: s.invert(torch.zeros(1, DIM), nfe=3_000_000),
                 lambda: s.invert(torch.zeros(1, DIM), MAX_STEPS + 1)):
        start = time.perf_counter()
        with pytest.raises(InvalidArgument, match=f"above the cap of {MAX_STEPS} steps.*checks.MAX_STEPS"):
            call()
        assert time.perf_counter() - start < 0.5
    assert s.invert(torch.zeros(1, DIM), nfe=40).nfe <= 40            # a budget below the cap still plans


# ------------------------------------------------------------------------------------------------
# Adaptive tolerances
# ------------------------------------------------------------------------------------------------
@FAST
@given(st.one_of(st.floats(0, MIN_TOLERANCE, exclude_max=True), st.floats(max_value=0), NOT_A_NUMBER))
def test_tolerances_no_dtype_resolves_are_refused(value):
    for name in ("dpm_adaptive", "odeint_dopri5", "torchsde_euler"):
        for option in ("rtol", "atol"):
            with pytest.raises(InvalidArgument, match=f"{option}="):
                get_solver(name, **{option: value})


def test_tiny_tolerances_no_longer_blame_the_model():
    with pytest.raises(InvalidArgument, match="rtol=1e-300: must be >= 1e-15"):
        Sampler(PROBLEM, "dpm_adaptive", rtol=1e-300, atol=1e-300, progress=False).run(nfe=50)
    assert get_solver("odeint_dopri5", rtol=np.float32(1e-3), atol=MIN_TOLERANCE).rtol == pytest.approx(1e-3)


# ------------------------------------------------------------------------------------------------
# Empty batches: an empty result, the same for every solver
# ------------------------------------------------------------------------------------------------
def _runs_on_the_problem(name):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)      # the learned solvers' untrained-rule notice
            Sampler(PROBLEM, name, progress=False).plan(4)
        return True
    except InvalidArgument:
        return False


RUNNABLE = [n for n in available_solvers() if _runs_on_the_problem(n)]


def test_every_solver_is_covered():
    assert {"dpm_adaptive", "odeint_dopri5", "torchsde_euler", "heun", "dpmpp_2m", "ddpm"} <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_an_empty_batch_gives_an_empty_result(name):
    s = Sampler(PROBLEM, name, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for out in (s.run(4, noise=torch.zeros(0, DIM)), s.run(4, batch_size=0, seed=0),
                    s.run(4, shape=(0, DIM), seed=1), s.run(4, batch_size=0, return_trajectory=True)):
            assert out.samples.shape == (0, DIM) and out.nfe == 0 and out.stats["empty"]
        assert out.trajectory.shape[1:] == (0, DIM)
        if get_solver(name).inversion_refusal() is None and get_solver(name).deterministic:
            inv = s.invert(torch.zeros(0, DIM), 4)
            assert inv.samples.shape == (0, DIM) and inv.nfe == 0


def test_round_trip_and_inversion_check_the_data():
    s = Sampler(PROBLEM, "heun", progress=False)
    rt = s.round_trip(torch.zeros(0, DIM), 4)
    assert rt.reconstruction.shape == (0, DIM) and math.isnan(rt.rms) and math.isnan(rt.max_abs)
    with pytest.raises(InvalidArgument, match=r"x0 has shape \(2, 5\) but the model expects \(batch, \*\(8,\)\)"):
        s.invert(torch.zeros(2, 5), 4)


@pytest.mark.parametrize("clip", [("a", "b"), (None, 1), (1, -1), (0.0,), "01"])
def test_clip_x0_is_a_numeric_pair(clip):
    with pytest.raises(InvalidArgument, match="clip_x0"):
        VectorField(PROBLEM, clip_x0=clip)
    with pytest.raises(InvalidArgument, match="model_kwargs"):
        VectorField(PROBLEM, model_kwargs=[("y", 1)])


def test_grid_options_are_a_mapping_and_numpy_steps_are_steps():
    with pytest.raises(InvalidArgument, match="grid_options=.*mapping"):
        Sampler(PROBLEM, "euler", grid_options=[("rho", 7)], progress=False)
    sch = PROBLEM.schedule
    for name in ("karras", "logsnr_uniform", "time_uniform", "time_quadratic", "ays"):
        torch.testing.assert_close(GRIDS[name](np.int64(6), sch), GRIDS[name](6, sch))
        with pytest.raises(InvalidArgument, match="steps="):
            GRIDS[name](6.0, sch)


@pytest.mark.parametrize("surface", ["solver", "grid"])
def test_a_misspelt_name_gets_did_you_mean(surface):
    with pytest.raises(InvalidArgument, match=r"did you mean '(dpmpp_2m|karras)'"):
        if surface == "solver":
            get_solver("dpmpp2m")
        else:
            Sampler(GaussianProblem.default(), "euler", grid="karas", progress=False).run(steps=3, batch_size=1)
    with pytest.raises(InvalidArgument) as err:
        get_solver("zzzzzz")
    assert "did you mean" not in str(err.value)
