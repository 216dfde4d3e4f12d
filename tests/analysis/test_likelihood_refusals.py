"""likelihood() and `diffsolve likelihood` refuse bad input before any work, with the library's error naming
the argument: tolerances, the span, the data (NaN, empty, shape, meta, dtype names), counts by type (numpy
integers are integers), and a model family without a probability flow."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from diffsolve import InvalidArgument, likelihood
from diffsolve.cli.main import main
from diffsolve.problems import GaussianProblem

PROBLEM = GaussianProblem.default(dim=4)
X = PROBLEM.sample_data(3, torch.Generator().manual_seed(0)).float()
T_MIN, T_MAX = PROBLEM.diffsolve_spec.schedule.t_min, PROBLEM.diffsolve_spec.schedule.t_max


@settings(max_examples=40, deadline=None)
@given(rtol=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 0), st.text(max_size=5),
                      st.booleans(), st.none()))
def test_a_tolerance_outside_its_range_or_not_a_number_is_refused_by_name(rtol):
    ok = (not isinstance(rtol, (bool, str)) and rtol is not None and math.isfinite(rtol) and 1e-13 <= rtol < 1)
    if ok:
        return
    with pytest.raises(InvalidArgument, match="rtol"):
        likelihood(PROBLEM, X, rtol=rtol)


@settings(max_examples=30, deadline=None)
@given(which=st.sampled_from(["t_start", "t_end"]),
       value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)))
def test_a_span_outside_the_schedule_is_refused_by_name(which, value):
    if isinstance(value, float) and math.isfinite(value) and T_MIN <= value <= T_MAX:
        return
    with pytest.raises(InvalidArgument, match=which):
        likelihood(PROBLEM, X, **{which: value})


@pytest.mark.parametrize("x,text", [
    (X * float("nan"), "NaN or Inf"), (X.clone().fill_(float("inf")), "NaN or Inf"), (X[:0], "empty batch"),
    (torch.zeros(2, 5), "shape"), (torch.zeros(4), r"\[batch"), (X.to("meta"), "meta"),
    (X.long(), "floating-point"), ([[0.0] * 4], "floating-point")])
def test_bad_data_is_refused(x, text):
    with pytest.raises(InvalidArgument, match=text):
        likelihood(PROBLEM, x)


@pytest.mark.parametrize("opts,text", [
    (dict(dtype="float16x"), "dtype"), (dict(dtype="int8"), "dtype"), (dict(probes=0), "probes"),
    (dict(probes=2.0), "probes"), (dict(probes="4"), "probes"), (dict(solver="nosuch"), "solver"),
    (dict(solver="rk4"), "steps="), (dict(solver="rk4", steps=0), "steps"), (dict(atol=-1e-5), "atol"),
    (dict(dequantize="uniform", data_range=(-1, 1), bins=1), "bins"), (dict(divergence="approx"), "divergence")])
def test_bad_options_are_refused_by_name(opts, text):
    with pytest.raises(InvalidArgument, match=text):
        likelihood(PROBLEM, X, **opts)


def test_numpy_integers_and_dtype_names_are_accepted():
    a = likelihood(PROBLEM, X, divergence="hutchinson", probes=np.int64(2), seed=0, solver="rk4", steps=np.int32(4))
    b = likelihood(PROBLEM, X, divergence="hutchinson", probes=2, seed=0, solver="rk4", steps=4)
    assert torch.equal(a.log_prob, b.log_prob)
    c = likelihood(PROBLEM, X, dtype="float64", solver="rk4", steps=4)
    assert c.latent.dtype == torch.float64


def test_a_model_without_a_probability_flow_is_refused_up_front():
    from diffsolve.models import load_mnist_consistency
    with pytest.raises(InvalidArgument, match="consistency.*no probability-flow ODE"):
        likelihood(load_mnist_consistency(), torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("argv,text", [
    (["--samples", "0"], "--samples"), (["--n", "-1"], "--samples"), (["--solver", "nosuch"], "--solver"),
    (["--solver", "rk4"], "--steps"), (["--rtol", "-1"], "--rtol"), (["--rtol", "0"], "--rtol"),
    (["--data", "missing.pt"], "--data"), (["--probes", "0"], "--probes")])
def test_command_line_refusals_are_one_line_naming_the_flag(argv, text, capsys):
    with pytest.raises(SystemExit) as e:
        code = main(["likelihood", *argv])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert e.value.code == 2 and text in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
