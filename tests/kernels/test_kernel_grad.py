"""Gradients through the fused lincomb kernel against PyTorch autograd through the reference (Triton's interpreter).

The kernel's backward is again a lincomb for the tensors (grad T_k = c_k grad_out) and a reduction for the
coefficient tensors (grad c_k = sum grad_out * T_k over the sample dims, or over everything for [K]).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from diffsolve.kernels import lincomb, lincomb_pair, lincomb_reference  # noqa: E402

# Gradients wrt the tensors, |kernel - ref| <= atol + rtol |ref| elementwise: both form c_k * grad_out in the
# accumulation dtype (fp32 for the half types) and round once to the input's dtype; the kernel takes c_k as fp32,
# so ~1 ulp of the input dtype (bf16: the interpreter's store may round one ulp away from PyTorch's).
TENSOR_GRAD_TOL = {
    #                (atol,   rtol)
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-6, 2e-6),
    torch.float16: (2e-3, 2e-3),     # fp16 ulp at 1 is 9.8e-4
    torch.bfloat16: (2e-2, 1.6e-2),  # bf16 ulp at 1 is 7.8e-3: two ulps
}
# Gradients wrt coefficients: sums of grad_out * T_k in the accumulation dtype (fp32 for the halves, from the same
# rounded inputs on both paths), differing only in summation order; bounded relative to sum |grad_out * T_k|.
COEF_GRAD_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
DTYPES = list(TENSOR_GRAD_TOL)
TERMS = [1, 2, 3, 6, 11]         # 11: beyond the 8 inputs of one launch, chained through a partial sum


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("DIFFSOLVE_KERNELS", raising=False)


def make(shape, dtype, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(k)]


def coeffs_of(k, form, batch, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(max(batch, 1), k, generator=g, dtype=torch.float64)
    if form == "floats":
        return [float(v) for v in c[0]]
    c = c[0].clone() if form == "shared" else c
    return c.to(dtype).requires_grad_()


def grads(backend, coeffs, tensors, leaves=None):
    """d/d(inputs) of <lincomb(coeffs, tensors), w> for a fixed random w, through autograd."""
    out = lincomb(coeffs, tensors, backend=backend)
    assert out.requires_grad and out.grad_fn is not None, f"{backend} path dropped the autograd graph"
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out.dtype)
    leaves = leaves if leaves is not None else list(tensors) + (
        [coeffs] if isinstance(coeffs, torch.Tensor) else [])
    # retain_graph: both backends run on the same input views (some built by ops, e.g. 2 * base)
    return out, w, torch.autograd.grad((out * w).sum(), leaves, retain_graph=True)


def assert_grads_close(got, want, tensors, coeffs, out, w):
    k = len(tensors)
    for j, (g, r, t) in enumerate(zip(got[:k], want[:k], tensors)):
        atol, rtol = TENSOR_GRAD_TOL[t.dtype]
        assert g.dtype == t.dtype and r.dtype == t.dtype and g.shape == t.shape
        err = (g.double() - r.double()).abs()
        assert bool((err <= atol + rtol * r.double().abs()).all()), f"grad T_{j}: max err {float(err.max()):.3g}"
    if isinstance(coeffs, torch.Tensor):
        g, r = got[k], want[k]
        assert g.dtype == coeffs.dtype and g.shape == coeffs.shape
        acc = torch.float64
        wf = w.to(acc).reshape(coeffs.shape[0] if coeffs.dim() == 2 else 1, -1)
        scale = torch.stack([(wf * t.detach().to(acc).reshape(wf.shape[0], -1)).abs().sum(1) for t in tensors], -1)
        scale = scale if coeffs.dim() == 2 else scale[0]
        rtol = COEF_GRAD_RTOL[tensors[0].dtype]
        err = (g.double() - r.double()).abs()
        assert bool((err <= 1e-30 + rtol * scale).all()), f"grad c: max err {float(err.max()):.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("k", TERMS)
@pytest.mark.parametrize("form", ["floats", "shared", "per_sample"])
def test_triton_gradients_match_reference_autograd(dtype, k, form):
    ts = make((3, 5, 7), dtype, k)
    c = coeffs_of(k, form, 3)
    out, w, got = grads("triton", c, ts)
    _, _, want = grads("torch", c, ts)
    assert_grads_close(got, want, ts, c, out, w)


def _views(shape, make_views):
    leaf = torch.randn(shape, dtype=torch.float32, generator=torch.Generator().manual_seed(3)).requires_grad_()
    return make_views(leaf), [leaf]


def _plain(shape, k, dtype=torch.float32):
    ts = make(shape, dtype, k)
    return ts, ts


# name -> () -> (inputs, leaves to differentiate against: a view's base, so strided and expanded views are covered)
AWKWARD = {
    "odd_1d": lambda: _plain((1031,), 2),
    "odd_4d": lambda: _plain((3, 5, 7, 9), 3),
    "one_element": lambda: _plain((1,), 2),
    "zero_dim": lambda: _plain((), 2),
    "empty": lambda: _plain((0, 3), 2),
    "transposed": lambda: _views((6, 5, 9, 11), lambda b: [b[:, 0].transpose(-1, -2), b[:, 1].transpose(-1, -2)]),
    "strided_slice": lambda: _views((6, 5, 9, 11), lambda b: [b[::2, :, ::3], b[1::2, :, 1::3]]),
    "channels_last": lambda: _views((2, 3, 4, 5), lambda b: [b.to(memory_format=torch.channels_last),
                                                             (2 * b).to(memory_format=torch.channels_last)]),
    "expanded": lambda: _views((4, 1, 6), lambda b: [b.expand(4, 3, 6), b.expand(4, 3, 6) * 0.5]),
    "mixed_dtypes": lambda: (lambda ts: (ts, ts))([*make((3, 4), torch.float32, 1),
                                                   *make((3, 4), torch.bfloat16, 1, seed=5)]),
}


@pytest.mark.parametrize("case", list(AWKWARD))
@pytest.mark.parametrize("form", ["floats", "shared", "per_sample"])
def test_gradients_on_awkward_inputs(case, form):
    ts, leaves = AWKWARD[case]()
    batch = ts[0].shape[0] if ts[0].dim() else 1
    if form == "per_sample" and ts[0].dim() == 0:
        form = "shared"       # a 0-d tensor has no batch dimension
    c = coeffs_of(len(ts), form, batch)
    if isinstance(c, torch.Tensor):
        leaves = [*leaves, c]
    out, w, got = grads("triton", c, ts, leaves)
    _, _, want = grads("torch", c, ts, leaves)
    for g, r, x in zip(got, want, leaves):
        assert g.dtype == x.dtype and g.shape == x.shape
        tol = 2e-2 if x.dtype == torch.bfloat16 else 1e-5
        assert torch.allclose(g.double(), r.double(), rtol=tol, atol=tol), (case, float((g - r).abs().max()))
    if case == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("form", ["shared", "per_sample"])
def test_graph_kept_when_only_the_coefficients_require_grad(form):
    # learned solvers: step coefficients from a small network, the state itself without grad
    ts = [t.detach() for t in make((4, 3), torch.float32, 3)]
    c = coeffs_of(3, form, 4)
    out = lincomb(c, ts, backend="triton")
    assert out.requires_grad, "the Triton path dropped the graph of a coefficient tensor"
    (got,) = torch.autograd.grad(out.sum(), c)
    (want,) = torch.autograd.grad(lincomb(c, ts, backend="torch").sum(), c)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_mixed_float_and_tensor_coefficients():
    ts = make((2, 3, 4), torch.float32, 3)
    c1 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(lincomb([0.5, c1, -2.0], ts, backend="triton").sum(), [*ts, c1])
    want = torch.autograd.grad(lincomb([0.5, c1, -2.0], ts, backend="torch").sum(), [*ts, c1])
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and torch.allclose(g, r, rtol=1e-6, atol=1e-6)


def test_no_autograd_node_when_nothing_requires_grad():
    ts = [t.detach() for t in make((2, 3), torch.float32, 2)]
    assert lincomb([1.0, 2.0], ts, backend="triton").grad_fn is None
    with torch.no_grad():
        out = lincomb(coeffs_of(2, "per_sample", 2), make((2, 3), torch.float32, 2), backend="triton")
    assert not out.requires_grad


def test_double_backward_matches_reference():
    ts = make((2, 5), torch.float64, 3)
    c = coeffs_of(3, "per_sample", 2)
    res = []
    for backend in ("triton", "torch"):
        out = lincomb(c, ts, backend=backend)
        g_t = torch.autograd.grad((out ** 2).sum(), ts, create_graph=True)
        res.append(torch.autograd.grad(sum((g ** 2).sum() for g in g_t), [c, *ts]))
    for g, r in zip(*res):
        assert torch.allclose(g, r, rtol=1e-10, atol=1e-12)


def test_lincomb_pair_is_differentiable():
    ts = make((3, 4), torch.float32, 2)
    c = coeffs_of(2, "per_sample", 3)
    a, b = lincomb_pair([[0.5, 1.5], c], ts, backend="triton")
    got = torch.autograd.grad((a * 2 + b).sum(), [*ts, c])
    want = torch.autograd.grad((lincomb_reference([0.5, 1.5], ts) * 2 + lincomb_reference(c, ts)).sum(), [*ts, c])
    for g, r in zip(got, want):
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-6)
