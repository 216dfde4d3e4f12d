"""Fast ODE solvers: DPM-Solver-2/-3, DPM-Solver++(2S)/(3M), UniPC, DEIS, iPNDM, iPNDM_v, LMS.

Float64 on the analytic Gaussian. Four kinds of checks: global convergence order (slope of log error against log
steps over the three finest grids, within 0.3 of the declared order); the multistep formulas themselves (exact
history fed in, one-step local error ~ h^(order+1)); NFE accounting (model_calls == plan.nfe == counted calls);
edge cases (rectified flow from pure noise, grids ending at zero, AFS).

Multistep methods start with lower-order steps, which formally caps their asymptotic order; on the diffusion
ODE that start is damped by the contraction from high noise, so the nominal order shows over the grids used
here. Each case names the grid and step counts on which its order is measured.
"""
import math

import pytest
import torch

from diffsolve import EDMSchedule, Sampler, VPContinuous, get_solver
from diffsolve.problems import GaussianProblem
from diffsolve.errors import InvalidArgument
from diffsolve.field import VectorField
from diffsolve.kernels import lincomb
from diffsolve.loop import Evaluator
from diffsolve.schedules import RectifiedFlow
from diffsolve.solvers.ipndm import AB_WEIGHTS, ipndm_v_weights
from diffsolve.solvers.multistep import afs_x0_coefficient, lagrange_integrals, step_orders
from diffsolve.solvers.unipc import unipc_corrector

# name -> (declared order, calls per step) with default options
NEW_SOLVERS = {
    "dpm_solver_2": (2, 2), "dpm_solver_3": (3, 3), "dpmpp_2s": (2, 2), "dpmpp_3m": (3, 1),
    "unipc_bh1": (3, 1), "unipc_bh2": (3, 1), "deis": (3, 1), "ipndm": (2, 1), "ipndm_v": (4, 1), "lms": (4, 1),
}
MULTISTEP = ["dpmpp_2m", "dpmpp_3m", "unipc_bh1", "unipc_bh2", "deis", "ipndm", "ipndm_v", "lms"]


def _vp_problem():
    return GaussianProblem.default(schedule=VPContinuous(t_min=1e-2))


def _noise(n=16, dim=8, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _errors(problem, name, options, grid, steps, final="min"):
    noise = _noise(dim=problem.mean.numel())
    errs = []
    for n in steps:
        out = Sampler(problem, name, grid=grid, grid_options={"final": final}, progress=False, **options).run(
            steps=n, noise=noise)
        assert torch.isfinite(out.samples).all()
        t0, t1 = float(out.t[0]), float(out.t[-1])
        exact = problem.ode_solution(noise * problem.schedule.prior_std(t0), t0, t1)
        errs.append(float((out.samples - exact).pow(2).mean().sqrt()))
    return errs


def _fit(xs, ys):
    x = torch.log(torch.tensor(xs, dtype=torch.float64))
    y = torch.log(torch.tensor(ys, dtype=torch.float64))
    return float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def _with_options(name, **options):
    """Add lower_order_final=False where the solver has it, so every step runs the declared order."""
    import inspect
    params = inspect.signature(type(get_solver(name)).__init__).parameters
    return {**({"lower_order_final": False} if "lower_order_final" in params else {}), **options}


# ------------------------------------------------------------------------------------------------
# registry metadata
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEW_SOLVERS))
def test_registered_with_metadata(name):
    solver = get_solver(name)
    assert (solver.order, solver.calls_per_step) == NEW_SOLVERS[name]
    assert solver.deterministic and solver.citation
    assert solver.describe()["name"] == name


def test_bad_options_name_the_argument():
    for name, opts, word in [("unipc_bh2", {"order": 4}, "order"), ("deis", {"order": 0}, "order"),
                             ("lms", {"lower_order_final": "sometimes"}, "lower_order_final"),
                             ("dpmpp_3m", {"third_order": "exact"}, "third_order"),
                             ("ipndm_v", {"weights": "fixed"}, "weights"), ("ipndm", {"order": 5}, "order")]:
        with pytest.raises(InvalidArgument, match=word):
            get_solver(name, **opts)


# ------------------------------------------------------------------------------------------------
# global convergence order on the analytic Gaussian (VP, t in [0.01, 1])
# ------------------------------------------------------------------------------------------------
S4 = (32, 64, 128, 256)
CONVERGENCE = [
    # name, options, grid, steps, expected order (the declared one; checked against solver.order below)
    ("dpm_solver_2", {}, "time_uniform", S4, 2),
    ("dpm_solver_3", {}, "time_uniform", S4, 3),
    ("dpmpp_2s", {}, "time_uniform", S4, 2),
    ("dpmpp_3m", {}, "time_uniform", S4, 3),
    ("dpmpp_3m", {"order": 2}, "time_uniform", S4, 2),
    ("unipc_bh1", {"order": 1}, "logsnr_uniform", S4, 2),
    ("unipc_bh2", {"order": 1}, "logsnr_uniform", S4, 2),
    ("unipc_bh1", {}, "logsnr_uniform", S4, 3),
    ("unipc_bh2", {}, "logsnr_uniform", S4, 3),
    ("unipc_bh2", {"order": 3}, "logsnr_uniform", S4, 4),
    ("unipc_bh2", {"order": 2, "use_corrector": False}, "logsnr_uniform", S4, 2),
    ("unipc_bh1", {"order": 3, "use_corrector": False}, "time_uniform", S4, 3),
    ("deis", {"order": 1}, "time_uniform", S4, 1),
    ("deis", {"order": 2}, "logsnr_uniform", S4, 2),
    ("deis", {"order": 3}, "time_uniform", (64, 128, 256, 512), 3),
    ("deis", {"order": 4}, "time_uniform", S4, 4),
    ("ipndm", {}, "time_uniform", S4, 2),
    ("ipndm_v", {"order": 3}, "time_uniform", S4, 3),
    ("ipndm_v", {}, "logsnr_uniform", S4, 4),
    ("lms", {"order": 2}, "time_uniform", S4, 2),
    ("lms", {}, "logsnr_uniform", S4, 4),
    ("ipndm_v", {"order": 3, "weights": "diff_sampler"}, "time_uniform", S4, 3),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,options,grid,steps,expected", CONVERGENCE,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CONVERGENCE])
def test_convergence_order(name, options, grid, steps, expected):
    options = _with_options(name, **options)
    assert get_solver(name, **options).order == expected
    errs = _errors(_vp_problem(), name, options, grid, steps)
    measured = -_fit(steps[-3:], errs[-3:])
    assert abs(measured - expected) <= 0.3, f"{name} {options}: order {expected}, measured {measured:.2f}, {errs}"


def test_dpmpp_3m_reference_coefficients_are_second_order_locally():
    """third_order='reference' (diffusers / dpm_solver_pytorch) halves the D2 term: local error h^3, not h^4."""
    hs = (0.2, 0.1, 0.05, 0.025)
    ref = _local_errors("dpmpp_3m", {"third_order": "reference", "lower_order_final": False}, 3, hs)
    taylor = _local_errors("dpmpp_3m", {"lower_order_final": False}, 3, hs)
    assert abs(_fit(hs, ref) - 3) <= 0.3 and abs(_fit(hs, taylor) - 4) <= 0.3
    assert get_solver("dpmpp_3m", third_order="reference").order == 2


# ------------------------------------------------------------------------------------------------
# the multistep formulas themselves: exact history in, one-step local error out
# ------------------------------------------------------------------------------------------------
def _local_errors(name, options, k, hs, variable="lambda", center=0.0):
    """Run k steps of the solver from exact states on the exact trajectory (the history is then exact) and
    return the error of the last step: the local error of the order-k formula with step h."""
    problem = GaussianProblem.default(schedule=VPContinuous(t_min=1e-3))
    sch = problem.schedule
    field = VectorField(problem)
    solver = get_solver(name, **options)
    z = _noise(4, seed=3)
    out = []
    for h in hs:
        if variable == "lambda":
            t = sch.t_from_lambda(torch.tensor([center - (k - 1 - j) * h for j in range(k + 1)], dtype=torch.float64))
        else:   # uniform in the EDM noise level s
            s0 = math.exp(-center)
            t = sch.t_from_edm_sigma(torch.tensor([s0 + (k - 1 - j) * h for j in range(k + 1)], dtype=torch.float64))
        plan = solver.plan(field, t)
        xs = [problem.ode_solution(z * sch.prior_std(float(t[0])), float(t[0]), float(tt)) for tt in t]
        ev = Evaluator(field, {}, False)
        state = solver.init(plan)
        for j in range(k):
            x_next, _, state = solver.step(ev, xs[j], plan.points[j], plan.points[j + 1], state, plan.coeffs[j])
        assert plan.coeffs[-1].order == k
        out.append(float((x_next - xs[k]).abs().max()))
    return out


LOCAL = ([("dpmpp_2m", {}, 2), ("dpmpp_3m", {}, 3)]
         + [(f"unipc_{v}", {"order": o, "use_corrector": False}, o) for v in ("bh1", "bh2") for o in (1, 2, 3)]
         + [(n, {"order": o}, o) for n in ("deis", "lms", "ipndm_v") for o in (2, 3, 4)])


@pytest.mark.parametrize("name,options,k", LOCAL, ids=[f"{c[0]}-{c[1]}" for c in LOCAL])
def test_multistep_local_error_with_exact_history(name, options, k):
    hs = (0.2, 0.1, 0.05, 0.025)
    errs = _local_errors(name, {**options, "lower_order_final": False}, k, hs)
    assert abs(_fit(hs, errs) - (k + 1)) <= 0.3, f"{name} {options}: local errors {errs}"


@pytest.mark.parametrize("k", [2, 3, 4])
def test_ipndm_constant_weights_are_adams_bashforth_on_uniform_s(k):
    hs = (0.08, 0.04, 0.02, 0.01)
    errs = _local_errors("ipndm", {"order": k}, k, hs, variable="s")
    assert abs(_fit(hs, errs) - (k + 1)) <= 0.3, errs


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unic_corrector_raises_the_order_by_one(variant, order):
    """UniC-p from the exact previous sample, exact history and the model output at the exact new point:
    local error ~ h^(p+2), one order above the UniP-p predictor."""
    problem = GaussianProblem.default(schedule=VPContinuous(t_min=1e-3))
    sch, field = problem.schedule, VectorField(problem)
    z = _noise(4, seed=5)
    hs = (0.2, 0.1, 0.05, 0.025)
    errs = []
    for h in hs:
        lams = [-(order - j) * h for j in range(order + 1)]          # oldest ... previous, new
        t = sch.t_from_lambda(torch.tensor(lams, dtype=torch.float64))
        pts = [field.at(float(v)) for v in t]
        xs = [problem.ode_solution(z * sch.prior_std(float(t[0])), float(t[0]), float(v)) for v in t]
        ms = [field.denoise(x, p) for x, p in zip(xs, pts)]
        co = unipc_corrector(pts[-2], pts[-1], tuple([lams[-1]] + lams[-2::-1][:order]), order, variant)
        x_corr = lincomb(co, (xs[-2], ms[-1], *ms[-2::-1][:order]))
        errs.append(float((x_corr - xs[-1]).abs().max()))
    assert abs(_fit(hs, errs) - (order + 2)) <= 0.35, errs


def test_lagrange_weights_integrate_polynomials_exactly():
    nodes = (2.0, 2.7, 3.1, 4.0)
    for k in range(1, 5):
        w = lagrange_integrals(nodes[:k], 2.0, 1.4, "s")
        for deg in range(k):
            exact = (1.4 ** (deg + 1) - 2.0 ** (deg + 1)) / (deg + 1)
            assert abs(sum(c * v ** deg for c, v in zip(w, nodes)) - exact) < 1e-12
        # in log s: exact for polynomials in log s, integrated in s
        w = lagrange_integrals(nodes[:k], 2.0, 1.4, "logs")
        for deg in range(k):
            f = lambda s: math.log(s) ** deg  # noqa: E731
            from scipy.integrate import quad
            assert abs(sum(c * f(v) for c, v in zip(w, nodes)) - quad(f, 2.0, 1.4)[0]) < 1e-10
    # constant steps give the classical Adams-Bashforth weights that iPNDM uses
    for k in range(1, 5):
        w = lagrange_integrals([1.0 + j for j in range(k)], 1.0, 0.0, "s")
        assert all(abs(a + b) < 1e-12 for a, b in zip(w, AB_WEIGHTS[k]))


def test_ipndm_v_diff_sampler_weights_match_exact_to_order_two_and_not_beyond():
    s_hist, s_next = (5.0, 5.4, 6.3, 6.8), 4.5                   # unequal steps, unequal step ratios
    for k in (1, 2):
        assert all(abs(a - b) < 1e-12 for a, b in zip(ipndm_v_weights(s_hist, s_next, k),
                                                       lagrange_integrals(s_hist[:k], s_hist[0], s_next, "s")))
    # order 3: exact for linear slopes only; order 4: not even consistent (weights do not sum to the step)
    w3 = ipndm_v_weights(s_hist, s_next, 3)
    assert abs(sum(w3) - (s_next - s_hist[0])) < 1e-12
    assert abs(sum(c * v * v for c, v in zip(w3, s_hist)) - (s_next ** 3 - s_hist[0] ** 3) / 3) > 1e-3
    assert abs(sum(ipndm_v_weights(s_hist, s_next, 4)) - (s_next - s_hist[0])) > 1e-3
    assert get_solver("ipndm_v", weights="diff_sampler").order == 2


# ------------------------------------------------------------------------------------------------
# NFE accounting
# ------------------------------------------------------------------------------------------------
NFE_CASES = [(n, {}) for n in sorted(NEW_SOLVERS)] + [
    (n, {"afs": True}) for n in ("dpmpp_3m", "unipc_bh1", "unipc_bh2", "deis", "ipndm", "ipndm_v", "lms")]


@pytest.mark.parametrize("name,options", NFE_CASES, ids=[f"{c[0]}-{c[1]}" for c in NFE_CASES])
def test_model_calls_equal_plan_and_counted_nfe(name, options):
    setups = [(VPContinuous(), "time_uniform"), (EDMSchedule(), "karras"), (RectifiedFlow(), "time_uniform")]
    for schedule, grid in setups:
        problem = GaussianProblem.default(dim=4, schedule=schedule)
        for final in ("zero", "min"):
            sampler = Sampler(problem, name, grid=grid, grid_options={"final": final}, progress=False, **options)
            for steps in (1, 2, 3, 4, 7):
                plan = sampler.plan(steps=steps)
                out = sampler.solve(plan, _noise(2, 4))
                calls = sampler.solver.model_calls(steps, sampler.field, final == "zero")
                assert calls == plan.nfe == out.nfe, (schedule, final, steps, calls, plan.nfe, out.nfe)
                assert torch.isfinite(out.samples).all()
            # and the budget interface picks the most steps that fit
            budget = 9
            out = sampler.run(nfe=budget, noise=_noise(2, 4))
            assert out.nfe <= budget
            assert sampler.solver.model_calls(out.steps + 1, sampler.field, final == "zero") > budget


def test_singlestep_costs():
    problem = GaussianProblem.default(dim=4, schedule=VPContinuous())
    for name, k in (("dpm_solver_2", 2), ("dpm_solver_3", 3), ("dpmpp_2s", 2)):
        zero = Sampler(problem, name, grid_options={"final": "zero"}, progress=False).run(steps=5, noise=_noise(2, 4))
        assert zero.nfe == 5 * k - (k - 1)          # the step into zero noise is first order
        low = Sampler(problem, name, grid_options={"final": "min"}, progress=False).run(steps=5, noise=_noise(2, 4))
        assert low.nfe == 5 * k


# ------------------------------------------------------------------------------------------------
# edge cases: pure noise, zero noise, AFS, order schedules
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEW_SOLVERS))
def test_rectified_flow_from_pure_noise_to_zero(name):
    """Every option set, from t = 1 (alpha = 0) to exactly zero noise: accurate, and better with more steps (the
    final step into zero noise is first order, so at least order 1 overall)."""
    problem = GaussianProblem.default(schedule=RectifiedFlow())
    noise = _noise()
    exact = problem.ode_solution(noise, 1.0, 0.0)
    for opts in ({}, _with_options(name)):
        errs = []
        for steps in (16, 64):
            out = Sampler(problem, name, grid="time_uniform", grid_options={"final": "zero"}, progress=False,
                          **opts).run(steps=steps, noise=noise)
            assert float(out.t[0]) == 1.0 and float(out.t[-1]) == 0.0
            errs.append(float((out.samples - exact).pow(2).mean().sqrt()))
        assert errs[1] < errs[0] / 3 and errs[1] < 0.05, (opts, errs)


@pytest.mark.parametrize("name", sorted(NEW_SOLVERS))
def test_grid_ending_at_zero_noise_is_finite_and_accurate(name):
    problem = GaussianProblem.default(schedule=VPContinuous())
    noise = _noise()
    for opts in ({}, _with_options(name)):
        out = Sampler(problem, name, grid_options={"final": "zero"}, progress=False, **opts).run(steps=20, noise=noise)
        assert torch.isfinite(out.samples).all()
        exact = problem.ode_solution(noise * problem.schedule.prior_std(1.0), 1.0, 0.0)
        assert float((out.samples - exact).pow(2).mean().sqrt()) < 0.05


def test_afs_is_the_analytic_slope_and_saves_one_call():
    # d = x~ / sqrt(1 + s^2) in the EDM frame (diff-sampler) <=> x0_hat = c x
    problem = GaussianProblem.default(schedule=VPContinuous())
    field = VectorField(problem)
    p = field.at(0.7)
    x = _noise(2)
    x0 = afs_x0_coefficient(p) * x
    s = p.sigma / p.alpha
    d = (x / p.alpha - x0) / s
    assert torch.allclose(d, (x / p.alpha) / math.sqrt(1 + s * s), rtol=1e-12, atol=1e-12)
    pure_noise = VectorField(GaussianProblem.default(schedule=RectifiedFlow())).at(1.0)
    assert afs_x0_coefficient(pure_noise) == 0.0          # finite at alpha = 0: x0_hat = 0, d = x
    for name in ("dpmpp_3m", "unipc_bh2", "deis", "ipndm", "lms"):
        base = Sampler(problem, name, progress=False).run(steps=10, noise=_noise())
        afs = Sampler(problem, name, progress=False, afs=True).run(steps=10, noise=_noise())
        assert afs.nfe == base.nfe - 1
        exact = problem.ode_solution(_noise() * problem.schedule.prior_std(1.0), 1.0, float(base.t[-1]))
        e_base = float((base.samples - exact).pow(2).mean().sqrt())
        e_afs = float((afs.samples - exact).pow(2).mean().sqrt())
        assert e_afs < 2 * e_base + 1e-3, (name, e_base, e_afs)


@pytest.mark.slow
def test_afs_error_is_first_order():
    """The analytic first slope is exact only for zero-mean unit-variance data: it leaves an O(h_0) error, so a
    run with AFS converges at order 1 once the solver's own error is below it (documented, measured here)."""
    steps = (128, 256, 512)
    errs = _errors(_vp_problem(), "lms", {"afs": True}, "time_uniform", steps)
    assert abs(-_fit(steps, errs) - 1.0) <= 0.3, errs


def test_step_orders():
    lam = [-5.0 + j for j in range(11)]
    assert step_orders(lam, 3, False, False) == (1, 2, 3, 3, 3, 3, 3, 3, 3, 3)
    assert step_orders(lam, 3, True, False) == (1, 2, 3, 3, 3, 3, 3, 3, 2, 1)          # min(order, n - i)
    assert step_orders(lam, 3, "auto", False) == (1, 2, 3, 3, 3, 3, 3, 3, 2, 1)      # n < 15: diffusers' rule
    lam20 = [-5.0 + 0.5 * j for j in range(21)] + [math.inf]
    assert step_orders(lam20, 2, "auto", True)[-2:] == (2, 1)                           # into zero noise
    assert step_orders([-math.inf] + lam, 3, False, False)[:4] == (1, 1, 2, 3)          # start at pure noise
    assert step_orders(lam + [math.inf], 3, False, True, singular_end=False)[-1] == 3
    assert step_orders(lam + [math.inf], 3, False, True, singular_end=True)[-1] == 1


def test_unipc_state_carries_the_corrected_sample():
    """The corrected x_i is what the next predictor starts from; switching the corrector off changes the result
    without changing the NFE."""
    problem = _vp_problem()
    on = Sampler(problem, "unipc_bh2", progress=False).run(steps=8, noise=_noise())
    off = Sampler(problem, "unipc_bh2", progress=False, use_corrector=False).run(steps=8, noise=_noise())
    assert on.nfe == off.nfe == 8
    assert float((on.samples - off.samples).abs().max()) > 1e-4
