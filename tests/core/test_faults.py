"""Nothing silently wrong: generated bad input either runs and matches the reference path or raises diffsolve's
own error naming the argument; a NaN planted at any model call is reported at the step where it happened, by
every registered solver, bridges included."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from diffsolve import InvalidArgument, NonFiniteError, Sampler, VectorField, available_solvers, get_solver
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.errors import DiffsolveError
from diffsolve.loop import Evaluator
from diffsolve.solvers.base import registry_entries
from conftest import untrained_corrections

PROBLEM = GaussianMixtureProblem.default(dim=4, components=3)
DIM = 4
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _names_argument(err: Exception, *names: str) -> bool:
    text = str(err)
    return any(n in text for n in names)


# ------------------------------------------------------------------------------------------------
# run() arguments
# ------------------------------------------------------------------------------------------------
def _int_like(lo=-3, hi=6):
    return st.one_of(st.integers(lo, hi), st.integers(lo, hi).map(np.int64), st.integers(lo, hi).map(np.int32))


BAD_SCALARS = st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.just([1]), st.none())
SEEDS = st.one_of(st.none(), _int_like(-2, 5), st.integers(2 ** 62, 2 ** 70), st.text(max_size=3),
                  st.floats(0, 5), st.booleans(), st.lists(_int_like(-1, 9), min_size=0, max_size=5),
                  st.lists(st.text(max_size=1), min_size=1, max_size=3))


def _canonical_seed(seed):
    if isinstance(seed, (list, tuple)):
        return [int(s) for s in seed]
    return None if seed is None else int(seed)


@FAST
@given(steps=st.one_of(_int_like(), BAD_SCALARS), batch_size=st.one_of(st.none(), _int_like(-1, 5), BAD_SCALARS),
       seed=SEEDS, trajectory=st.one_of(st.booleans(), st.integers(0, 1), st.text(max_size=2)))
def test_run_arguments_run_or_name_the_argument(steps, batch_size, seed, trajectory):
    sampler = Sampler(PROBLEM, "dpmpp_2m", progress=False)
    try:
        out = sampler.run(steps=steps, batch_size=batch_size, seed=seed, return_trajectory=trajectory)
    except InvalidArgument as e:
        assert _names_argument(e, "steps", "batch_size", "seed", "return_trajectory"), str(e)
        return
    except DiffsolveError as e:                                    # any other library error would be a misfiling
        pytest.fail(f"{type(e).__name__} for valid-looking input: {e}")
    # it ran: the values were valid, and the result is the one the plain Python values give
    ref = sampler.run(steps=int(steps), batch_size=None if batch_size is None else int(batch_size),
                      seed=_canonical_seed(seed) if seed is not None else None, return_trajectory=bool(trajectory))
    assert out.samples.shape == ref.samples.shape
    if seed is not None:
        assert torch.equal(out.samples, ref.samples)
    assert (out.trajectory is None) == (not trajectory)
    want = batch_size if batch_size is not None else (len(seed) if isinstance(seed, list) else 1)
    assert out.samples.shape[0] == want


# ------------------------------------------------------------------------------------------------
# Solver options, by type
# ------------------------------------------------------------------------------------------------
ANY_VALUE = st.one_of(st.booleans(), st.integers(-3, 5), st.integers(-3, 5).map(np.int64), st.floats(-2, 2),
                      st.text(max_size=4), st.none(), st.just("auto"), st.just("no"))
OPTION_SETS = [(name, opt) for name, entry in sorted(registry_entries().items())
               for opt in sorted(entry.parameters())]


@FAST
@given(case=st.sampled_from(OPTION_SETS), value=ANY_VALUE)
def test_solver_options_build_or_name_the_option(case, value):
    name, option = case
    try:
        solver = get_solver(name, **{option: value})
    except InvalidArgument as e:
        assert option in str(e), str(e)
        return
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        pytest.fail(f"{name}({option}={value!r}) raised {type(e).__name__}: {e}")
    hint = registry_entries()[name].parameters()[option][0]
    if hint is bool:
        assert isinstance(value, (bool, np.bool_)), f"{name}: {option}={value!r} was accepted as a bool"
    assert solver is not None


def test_the_reported_type_defects_are_refused():
    with pytest.raises(InvalidArgument, match="use_corrector"):
        get_solver("unipc_bh2", use_corrector="no")
    with pytest.raises(InvalidArgument, match="order=3"):
        get_solver("dpm_adaptive_23", order=2)
    with pytest.raises(InvalidArgument, match="seed"):
        Sampler(PROBLEM, progress=False).run(steps=2, seed="12")
    assert Sampler(PROBLEM, progress=False).run(steps=2, seed=list(range(16))).samples.shape[0] == 16
    with pytest.raises(InvalidArgument, match="batch_size"):
        Sampler(PROBLEM, progress=False).run(steps=2, noise=torch.randn(4, DIM), batch_size=3)
    short = lambda steps, schedule: torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64)  # noqa: E731
    with pytest.raises(InvalidArgument, match="returned 3 times"):
        Sampler(PROBLEM, "euler", grid=short, progress=False).run(steps=5, batch_size=2)
    with pytest.raises(InvalidArgument, match="steps=1000000000"):
        Sampler(PROBLEM, progress=False).run(steps=10 ** 9)


# ------------------------------------------------------------------------------------------------
# Model outputs
# ------------------------------------------------------------------------------------------------
class _Sample:
    def __init__(self, t):
        self.sample = t


OUTPUT_FORMS = {
    "tensor": (lambda o: o, True),
    "tuple": (lambda o: (o, None), True),
    "list": (lambda o: [o], True),
    "dict": (lambda o: {"sample": o}, True),
    "object": (lambda o: _Sample(o), True),
    "float64": (lambda o: o.double(), True),
    "first row": (lambda o: o[:1], False),
    "extra dim": (lambda o: o[None], False),
    "flattened": (lambda o: o.reshape(-1), False),
    "transposed": (lambda o: o.t(), False),
    "numpy": (lambda o: o.numpy(), False),
    "none": (lambda o: None, False),
    "dict without sample": (lambda o: {"x": o}, False),
}


@pytest.mark.slow
@FAST
@given(form=st.sampled_from(sorted(OUTPUT_FORMS)), solver=st.sampled_from(["dpmpp_2m", "euler", "heun",
                                                                           "dpm_adaptive", "odeint_dopri5"]),
       batch=st.integers(2, 3))         # never DIM: a transposed output of a square batch has the right shape
def test_model_outputs_are_unwrapped_by_rule_or_refused(form, solver, batch):
    transform, valid = OUTPUT_FORMS[form]
    model = lambda x, t: transform(PROBLEM(x, t))  # noqa: E731
    field = VectorField(model, "x0", PROBLEM.schedule, sample_shape=(DIM,))
    steps = None if solver in ("dpm_adaptive", "odeint_dopri5") else 3
    run = lambda f: Sampler(f, solver, progress=False).run(steps=steps, batch_size=batch, seed=0)  # noqa: E731
    if not valid:
        with pytest.raises(InvalidArgument, match="model returned"):
            run(field)
        return
    out = run(field).samples
    ref = run(VectorField(lambda x, t: PROBLEM(x, t), "x0", PROBLEM.schedule, sample_shape=(DIM,))).samples
    assert out.shape == ref.shape
    if form == "float64":      # the output is cast back to the state's dtype: equal up to that rounding
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(out, ref)


# ------------------------------------------------------------------------------------------------
# VectorField construction
# ------------------------------------------------------------------------------------------------
@FAST
@given(prediction=st.one_of(st.sampled_from(["eps", "x0", "v", "score", "velocity", "denoiser", "epsilon"]),
                            st.text(max_size=5), st.integers(0, 3), st.none()),
       schedule=st.one_of(st.sampled_from(["edm", "vp_linear", "ve", "rectified_flow"]), st.text(max_size=4),
                          st.integers(0, 2), st.none()),
       convention=st.one_of(st.sampled_from(["diffusion", "flow"]), st.text(max_size=4), st.booleans(), st.none()),
       clip=st.one_of(st.none(), st.tuples(st.floats(-2, 2), st.floats(-2, 2)), st.text(max_size=2)))
def test_field_arguments_build_or_name_the_argument(prediction, schedule, convention, clip):
    try:
        VectorField(lambda x, t: x, prediction, schedule, time_convention=convention, clip_x0=clip)
    except InvalidArgument as e:
        assert _names_argument(e, "prediction", "schedule", "time_convention", "clip_x0"), str(e)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        pytest.fail(f"{type(e).__name__} escaped: {e}")


# ------------------------------------------------------------------------------------------------
# A NaN planted at model call k is reported at the step where call k happened, by every solver
# ------------------------------------------------------------------------------------------------
SPAN_SOLVERS = {n for n in available_solvers() if get_solver(n).adaptive}


def _run(name, model):
    field = VectorField(model, "x0", PROBLEM.schedule, sample_shape=(DIM,))
    steps = 6 if name.startswith("torchsde") or name == "odeint" else (None if name in SPAN_SOLVERS else 4)
    opts = {"method": "rk4"} if name == "odeint" else {}
    return Sampler(field, name, progress=False, **opts).run(steps=steps, batch_size=2, seed=0)


def _steps_of_calls(name, monkeypatch) -> list[int]:
    seen = []
    real = Evaluator.evaluate

    def evaluate(self, x, p, kind="x0"):
        seen.append(self.step)
        return real(self, x, p, kind)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    _run(name, PROBLEM)
    monkeypatch.setattr(Evaluator, "evaluate", real)
    return seen


@untrained_corrections
@pytest.mark.parametrize("name", available_solvers())
def test_nan_at_call_k_is_reported_at_its_step(name, monkeypatch):
    steps = _steps_of_calls(name, monkeypatch)
    assert steps, f"{name} made no model call"
    for k in sorted({0, len(steps) // 2, len(steps) - 1}):
        calls = []

        def model(x, t, k=k):
            calls.append(1)
            out = PROBLEM(x, t)
            return out * float("nan") if len(calls) == k + 1 else out

        with pytest.raises(NonFiniteError) as info:
            _run(name, model)
        assert info.value.step == steps[k], f"{name}: NaN at call {k} reported at step {info.value.step}, " \
                                            f"the call was in step {steps[k]}"
        assert info.value.t is not None
