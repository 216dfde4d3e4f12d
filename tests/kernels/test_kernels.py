"""Every fused Triton kernel against its PyTorch reference, run by Triton's interpreter on CPU tensors.

TRITON_INTERPRET=1 is set per test (monkeypatch); diffsolve loads its @triton.jit module lazily, once per
interpreter setting, so it does not matter whether triton or diffsolve were imported before this module.
"""
from __future__ import annotations

import importlib

import pytest
import torch

pytest.importorskip("triton")

from diffsolve.errors import InvalidArgument  # noqa: E402
from diffsolve.kernels import (KernelUnavailable, coefficient_tensor, lincomb, lincomb_pair,  # noqa: E402
                               lincomb_pair_reference, lincomb_reference)
from conftest import untrained_corrections  # noqa: E402

lincomb_module = importlib.import_module("diffsolve.kernels.lincomb")   # the package attribute is the function

# Kernel vs reference, |kernel - ref| <= atol + rtol |ref|, elementwise. Both accumulate in float32 for the half
# types and round once at the end, so the only differences are fp32 summation order and the coefficient's
# rounding (kernel scalars are fp32): ~1-2 ulp of the output dtype (the interpreter's bf16 store can differ by
# one bf16 ulp from PyTorch's round-to-nearest-even).
TOLERANCES = {
    #                (atol,   rtol)
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (2e-3, 2e-3),     # fp16 ulp at 1 is 9.8e-4
    torch.bfloat16: (2e-2, 1.6e-2),  # bf16 ulp at 1 is 7.8e-3: two ulps
}
DTYPES = list(TOLERANCES)
MAX_SOLVER_TERMS = 6     # the longest combination a registered solver makes (rk4: y0 + 4 slopes; multistep: x + 5)


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DIFFSOLVE_KERNELS", raising=False)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype | None = None):
    atol, rtol = TOLERANCES[dtype or want.dtype]
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got.double() - want.double()).abs()
    bound = atol + rtol * want.double().abs()
    assert bool((err <= bound).all()), f"max err {float(err.max()):.3g} (atol {atol}, rtol {rtol})"


def make(shape, dtype, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(k)]


def coeffs_of(k, form, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(max(batch, 1), k, generator=g, dtype=torch.float64)
    if form == "floats":
        return [float(v) for v in c[0]]
    if form == "shared":
        return c[0].clone()
    return c


# --- lincomb ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", list(range(1, MAX_SOLVER_TERMS + 1)) + [8, 11])
@pytest.mark.parametrize("form", ["floats", "shared", "per_sample"])
def test_lincomb_matches_reference(dtype, k, form):
    ts = make((3, 5, 7), dtype, k)
    c = coeffs_of(k, form, 3)
    assert_close(lincomb(c, ts, backend="triton"), lincomb_reference(c, ts))


def test_per_sample_coefficients_act_per_sample():
    x, d = make((4, 3, 3), torch.float32, 2)
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    for got in (lincomb(c, [x, d], backend="triton"), lincomb_reference(c, [x, d])):
        for b in range(4):
            assert torch.allclose(got[b], float(c[b, 0]) * x[b] + float(c[b, 1]) * d[b], atol=1e-6)


def _awkward():
    base = torch.randn(6, 5, 9, 11, dtype=torch.float64)
    cases = {
        "one_element": [torch.randn(1), torch.randn(1)],
        "zero_dim": [torch.tensor(1.5), torch.tensor(-0.25)],
        "odd_1d": [torch.randn(1031), torch.randn(1031)],
        "odd_4d": [torch.randn(3, 5, 7, 9), torch.randn(3, 5, 7, 9)],
        "transposed": [base[:, 0].transpose(-1, -2), base[:, 1].transpose(-1, -2)],
        "strided_slice": [base[::2, :, ::3], base[1::2, :, 1::3]],
        "channels_last": [base.to(memory_format=torch.channels_last), (2 * base).to(memory_format=torch.channels_last)],
        "mixed_layouts": [base.to(memory_format=torch.channels_last), base.contiguous() + 1, base.permute(0, 1, 3, 2).transpose(-1, -2)],
        "expanded": [torch.randn(4, 1, 6).expand(4, 3, 6), torch.randn(4, 3, 6)],
        "empty": [torch.randn(0, 3), torch.randn(0, 3)],
    }
    return cases


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(_awkward()))
@pytest.mark.parametrize("form", ["floats", "per_sample"])
def test_lincomb_awkward_inputs(case, dtype, form):
    ts = [t.to(dtype) for t in _awkward()[case]]
    if form == "per_sample" and ts[0].dim() == 0:
        form = "shared"
    c = coeffs_of(len(ts), form, ts[0].shape[0] if ts[0].dim() else 1)
    got = lincomb(c, ts, backend="triton")
    assert_close(got, lincomb_reference(c, ts))
    if case == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_coefficient_tensor_from_host_list():
    c = coefficient_tensor([0.5, -2.0], batch=3)
    assert c.shape == (3, 2) and c.dtype == torch.float64
    x, d = make((3, 4), torch.float32, 2)
    assert_close(lincomb(c, [x, d], backend="triton"), 0.5 * x - 2.0 * d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", [1, 3, 6, 10])
def test_lincomb_pair_matches_reference(dtype, k):
    ts = make((2, 3, 5), dtype, k)
    rows = [coeffs_of(k, "floats", 2, seed=3), coeffs_of(k, "per_sample", 2, seed=4)]
    got = lincomb_pair(rows, ts, backend="triton")
    want = lincomb_pair_reference(rows, ts)
    for g, w in zip(got, want):
        assert_close(g, w)


# --- the dispatcher -----------------------------------------------------------------------------------------------
def _count_triton(monkeypatch):
    calls = []
    real = lincomb_module.combine_triton

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(lincomb_module, "combine_triton", spy)
    return calls


def test_env_var_forces_each_backend(monkeypatch):
    calls = _count_triton(monkeypatch)
    ts = make((2, 3), torch.float32, 2)
    monkeypatch.setenv("DIFFSOLVE_KERNELS", "torch")
    lincomb([1.0, 2.0], ts)
    assert calls == []
    monkeypatch.setenv("DIFFSOLVE_KERNELS", "triton")
    lincomb([1.0, 2.0], ts)
    assert calls == [1]
    lincomb([1.0, 2.0], ts, backend="torch")        # the argument wins over the environment
    assert calls == [1]
    monkeypatch.setenv("DIFFSOLVE_KERNELS", "auto")
    lincomb([1.0, 2.0], ts)                        # auto never takes the interpreter on CPU tensors
    assert calls == [1]


def test_bad_backend_names_are_rejected(monkeypatch):
    ts = make((2,), torch.float32, 1)
    with pytest.raises(InvalidArgument, match="backend"):
        lincomb([1.0], ts, backend="cuda")
    monkeypatch.setenv("DIFFSOLVE_KERNELS", "fast")
    with pytest.raises(InvalidArgument, match="DIFFSOLVE_KERNELS"):
        lincomb([1.0], ts)


def test_forced_triton_that_cannot_run_raises_clearly(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailable, match="CUDA"):
        lincomb([1.0], make((2,), torch.float32, 1), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(KernelUnavailable, match="dtype"):
        lincomb([1.0], [torch.ones(3, dtype=torch.int32)], backend="triton")
    with pytest.raises(KernelUnavailable, match="shapes"):
        lincomb([1.0, 1.0], [torch.ones(3), torch.ones(1)], backend="triton")
    # auto falls back instead (broadcasting keeps working through the reference)
    assert torch.equal(lincomb([1.0, 1.0], [torch.ones(3), torch.ones(1)]), torch.full((3,), 2.0))


# --- every solver through the kernels -----------------------------------------------------------------------------
def _run(name, backend, monkeypatch):
    from diffsolve.problems import GaussianProblem
    from diffsolve.sampler import Sampler
    from diffsolve.schedules import VPContinuous
    monkeypatch.setenv("DIFFSOLVE_KERNELS", backend)
    problem = GaussianProblem.default(dim=5, schedule=VPContinuous(t_min=1e-2))
    sampler = Sampler(problem, name, grid="time_uniform", grid_options={"final": "min"}, progress=False)
    return sampler.run(steps=3, batch_size=2, seed=0).samples


@untrained_corrections
@pytest.mark.slow
def test_every_solver_gives_the_same_samples_through_the_kernels(monkeypatch):
    from diffsolve.solvers import available_solvers
    calls = _count_triton(monkeypatch)
    compared, through_kernels, not_applicable = [], [], {}
    for name in available_solvers():
        try:
            want = _run(name, "torch", monkeypatch)
        except InvalidArgument as e:       # a solver that does not take this (Gaussian, VP) problem
            not_applicable[name] = str(e)
            continue
        before = len(calls)
        got = _run(name, "triton", monkeypatch)
        if len(calls) > before:          # external integrators (torchdiffeq) do their own arithmetic
            through_kernels.append(name)
        # Same float32 arithmetic up to rounding order. The EDM-frame slope (y - D) / s with s down to ~1e-2
        # cancels terms ~100x larger than the result, so fp32 rounding shows at ~2e-5 (heun, edm_churn measured).
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (name, float((got - want).abs().max()))
        compared.append(name)
    assert {"euler", "heun", "rk4", "dpmpp_2m"} <= set(through_kernels), (through_kernels, not_applicable)
