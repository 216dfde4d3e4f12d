"""The linear combination every solver update reduces to: the PyTorch reference and the fused Triton kernel.

Coefficients are Python floats (one per tensor, shared by the batch), or a tensor of shape [K] (shared) or
[batch, K] (one row per sample) that may live on the device, so that a captured CUDA graph can replay them.
Half-precision inputs are accumulated in float32; the result has tensors[0]'s dtype, shape and memory format.
Every path is differentiable in the tensors and in coefficient tensors (learned solvers compute coefficients with
a network); the Triton path through an autograd Function whose backward is again a lincomb.
"""
from __future__ import annotations

from numbers import Real
from typing import Sequence

import torch

from diffsolve.kernels.backend import KernelUnavailable, accumulation_dtype, requested_backend, same_layout, triton_impl, use_triton

_LOW_PRECISION = (torch.float16, torch.bfloat16)
MAX_FUSED_TERMS = 8     # more inputs are chained through a float32 partial sum


def _check(coeffs, tensors) -> int:
    k = coeffs.shape[-1] if isinstance(coeffs, torch.Tensor) else len(coeffs)
    if k != len(tensors) or not tensors:
        raise ValueError(f"lincomb needs as many coefficients as tensors, got {k} and {len(tensors)}")
    if isinstance(coeffs, torch.Tensor) and coeffs.dim() not in (1, 2):
        raise ValueError(f"a coefficient tensor must have shape [K] or [batch, K], got {tuple(coeffs.shape)}")
    return k


def _coef_ref(coeffs, k: int, like: torch.Tensor, acc: torch.dtype):
    if (isinstance(coeffs, torch.Tensor) and coeffs.dim() == 1 and not coeffs.requires_grad
            and coeffs.device.type == "cpu" == like.device.type):
        # one coefficient per term, on the host with the state: as a number it folds into add_'s alpha (one pass,
        # no temporary) instead of a separate multiply; reading a CPU tensor syncs with nothing
        return float(coeffs[k])
    if isinstance(coeffs, torch.Tensor):
        c = coeffs[..., k].to(device=like.device, dtype=acc)
        return c.reshape(-1, *([1] * (like.dim() - 1))) if coeffs.dim() == 2 else c
    return coeffs[k]


def lincomb_reference(coeffs: Sequence[float] | torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k coeffs[k] * tensors[k], accumulated in float32 for half-precision inputs, returned in tensors[0]'s dtype.

    Args:
        coeffs: K floats, or a tensor [K] or [batch, K] (per-sample coefficients).
        tensors: K tensors of one shape.

    Returns:
        The combination.

    Raises:
        ValueError: as many coefficients as tensors are needed, and a coefficient tensor must be [K] or [batch, K].
    """
    _check(coeffs, tensors)
    out_dtype = tensors[0].dtype
    acc_dtype = torch.float32 if out_dtype in _LOW_PRECISION else out_dtype
    c0 = _coef_ref(coeffs, 0, tensors[0], acc_dtype)
    acc = tensors[0].to(acc_dtype) * c0
    for k, t in enumerate(tensors[1:], start=1):
        c = _coef_ref(coeffs, k, tensors[0], acc_dtype)
        term = t.to(acc_dtype) if isinstance(c, Real) else c * t.to(acc_dtype)
        alpha = c if isinstance(c, Real) else 1
        # acc is this function's own buffer: accumulating in place saves an allocation (and its first-touch page
        # faults) per term, which on the CPU costs more than the arithmetic.
        acc = acc.add_(term, alpha=alpha) if term.shape == acc.shape else acc.add(term, alpha=alpha)
    return acc.to(out_dtype)


# --------------------------------------------------------------------------------------------------------------
# Triton path
# --------------------------------------------------------------------------------------------------------------
def _batch(t: torch.Tensor) -> int:
    return t.shape[0] if t.dim() >= 1 else 1


def coefficient_tensor(values, batch: int | None = None, *, device=None, dtype=torch.float64) -> torch.Tensor:
    """Host float64 coefficients -> a device tensor [K] (or [batch, K] when `values` is per sample / batch= given).

    Args:
        values: the coefficients.
        batch: expand a [K] row to [batch, K].
        device: the result's device.
        dtype: the result's dtype (default float64).

    Returns:
        The contiguous coefficient tensor.
    """
    c = torch.as_tensor(values, dtype=torch.float64)
    if batch is not None and c.dim() == 1:
        c = c.expand(batch, -1)
    return c.to(device=device, dtype=dtype).contiguous()


def _row_tensor(row, batch: int, device, acc: torch.dtype) -> torch.Tensor:
    """One coefficient row as a tensor [K] (shared) or [batch, K] (per sample)."""
    if isinstance(row, torch.Tensor):
        return row.to(device=device, dtype=acc)
    if all(isinstance(c, Real) for c in row):
        return torch.tensor([float(c) for c in row], dtype=torch.float64).to(device=device, dtype=acc)
    vals = []
    for c in row:   # floats and tensors (0-d, or one value per sample)
        c = torch.as_tensor(c, dtype=acc, device=device).reshape(-1)
        if c.numel() not in (1, batch):
            raise ValueError(f"a tensor coefficient must hold 1 or {batch} (batch) values, got {c.numel()}")
        vals.append(c.expand(batch))
    return torch.stack(vals, dim=-1)


def _as_rows(rows, k: int, batch: int, device, acc: torch.dtype):
    """(scalars, ctensor): M rows of floats for kernel arguments, or a [M, KC] / [batch, M, KC] tensor in acc."""
    if acc != torch.float64 and all(not isinstance(r, torch.Tensor) and all(isinstance(c, Real) for c in r)
                                    for r in rows):
        return [list(map(float, r)) for r in rows], None   # kernel scalar arguments are fp32
    rows = [_row_tensor(r, batch, device, acc) for r in rows]
    if any(r.shape[-1] != k for r in rows):
        raise ValueError(f"coefficient rows must have {k} entries")
    if any(r.dim() == 2 for r in rows):
        rows = [r if r.dim() == 2 else r.unsqueeze(0).expand(batch, -1) for r in rows]
        if any(r.shape[0] != batch for r in rows):
            raise ValueError(f"per-sample coefficients must have {batch} rows (the batch)")
    return None, torch.stack(rows, dim=-2).contiguous()


def _split_rows(scalars, ctensor, start: int, stop: int, prepend_one: bool):
    """Columns [start, stop) of the coefficients, optionally with a leading 1 for a carried partial sum."""
    if scalars is not None:
        return [([1.0] if prepend_one else []) + r[start:stop] for r in scalars], None
    part = ctensor[..., start:stop]
    if prepend_one:
        part = torch.cat([torch.ones_like(part[..., :1]), part], dim=-1)
    return None, part.contiguous()


def combine_triton(rows, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """M (1 or 2) combinations of the same inputs in one pass; `rows`: M coefficient rows (floats, [K] or [batch, K]).

    Args:
        rows: the coefficient rows.
        tensors: the K inputs, of one shape.

    Returns:
        One tensor per row.

    Raises:
        KernelUnavailable: the kernels cannot be loaded.
    """
    impl = triton_impl()
    k = len(tensors)
    ref = tensors[0]
    dense, fmt = same_layout(list(tensors))
    acc = accumulation_dtype(ref.dtype)
    outs = [torch.empty(ref.shape, dtype=ref.dtype, device=ref.device, memory_format=fmt) for _ in rows]
    if ref.numel() == 0:
        return tuple(outs)
    batch = _batch(ref)
    scalars, ctensor = _as_rows(rows, k, batch, ref.device, acc)
    per_sample = ref.numel() // batch
    if k <= MAX_FUSED_TERMS:
        impl.launch(outs, dense, scalars=scalars, ctensor=ctensor, per_sample=per_sample, acc=acc)
        return tuple(outs)
    # Long combinations: the first MAX_FUSED_TERMS terms into a partial sum kept in the accumulation dtype.
    s, c = _split_rows(scalars, ctensor, 0, MAX_FUSED_TERMS, False)
    partials = [torch.empty(ref.shape, dtype=acc, device=ref.device, memory_format=fmt) for _ in rows]
    impl.launch(partials, dense[:MAX_FUSED_TERMS], scalars=s, ctensor=c, per_sample=per_sample, acc=acc)
    start = MAX_FUSED_TERMS
    while True:
        stop = min(start + MAX_FUSED_TERMS - 1, k)
        last = stop == k
        s, c = _split_rows(scalars, ctensor, start, stop, True)
        if len(partials) == 2:
            dst = outs if last else [torch.empty_like(p) for p in partials]
            # two outputs: combine each partial with its own row
            for j in range(2):
                sj = [s[j]] if s is not None else None
                cj = c[..., j:j + 1, :].contiguous() if c is not None else None
                impl.launch([dst[j]], [partials[j], *dense[start:stop]], scalars=sj, ctensor=cj,
                            per_sample=per_sample, acc=acc)
        else:
            dst = outs if last else [torch.empty_like(partials[0])]
            impl.launch(dst, [partials[0], *dense[start:stop]], scalars=s, ctensor=c, per_sample=per_sample,
                        acc=acc)
        if last:
            return tuple(outs)
        partials, start = dst, stop


def _needs_grad(coeffs, tensors: Sequence[torch.Tensor]) -> bool:
    if not torch.is_grad_enabled():
        return False
    if any(t.requires_grad for t in tensors):
        return True
    if isinstance(coeffs, torch.Tensor):
        return coeffs.requires_grad
    return any(isinstance(c, torch.Tensor) and c.requires_grad for c in coeffs)


def _coefficient_grad(g: torch.Tensor, coeffs: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """d/dc_k = sum(g T_k) over the sample dims ([batch, K] coefficients) or over everything ([K])."""
    if g.numel() == 0:
        return torch.zeros_like(coeffs)
    acc = accumulation_dtype(tensors[0].dtype)
    # mul + sum rather than a batched matmul: matmuls may run in TF32 where the user enabled it
    rows = coeffs.shape[0] if coeffs.dim() == 2 else 1
    gf = g.to(acc).reshape(rows, -1)
    cols = [(gf * t.to(acc).reshape(rows, -1)).sum(dim=1) for t in tensors]
    grad = torch.stack(cols, dim=-1)
    return (grad if coeffs.dim() == 2 else grad[0]).to(coeffs.dtype)


class _LincombTriton(torch.autograd.Function):
    """The fused kernel with its adjoint: grad T_k = c_k grad_out (again a lincomb), grad c_k = <grad_out, T_k>."""

    @staticmethod
    def forward(ctx, coeffs: torch.Tensor | None, floats: tuple[float, ...] | None, *tensors: torch.Tensor):
        out = combine_triton([coeffs if coeffs is not None else list(floats)], list(tensors))[0]
        ctx.floats = floats
        ctx.dtypes = [t.dtype for t in tensors]
        # the inputs are kept alive only when a coefficient needs its gradient
        ctx.save_for_backward(coeffs, *(tensors if ctx.needs_input_grad[0] else ()))
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        coeffs, *tensors = ctx.saved_tensors
        wanted = [k for k, need in enumerate(ctx.needs_input_grad[2:]) if need]
        rows = {k: [ctx.floats[k]] if coeffs is None else coeffs[..., k:k + 1] for k in wanted}
        grads: list[torch.Tensor | None] = [None] * len(ctx.dtypes)
        if torch.is_grad_enabled():
            # create_graph=True: through lincomb, so that double backward records this Function again
            for k in wanted:
                grads[k] = lincomb(rows[k], [g], backend="triton")
        else:
            # two gradients per read of grad_out (the kernel writes up to two outputs per pass)
            for j in range(0, len(wanted), 2):
                ks = wanted[j:j + 2]
                for k, out in zip(ks, combine_triton([rows[k] for k in ks], [g])):
                    grads[k] = out
        grads = [gr if gr is None else gr.to(dt) for gr, dt in zip(grads, ctx.dtypes)]
        grad_c = _coefficient_grad(g, coeffs, tensors) if ctx.needs_input_grad[0] else None
        return grad_c, None, *grads


def lincomb_triton(coeffs: Sequence[float] | torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The fused kernel for lincomb_reference: one read of each input, one write, fp32 accumulation for halves.

    Differentiable in the tensors and in coefficient tensors; with nothing requiring grad it calls the kernel
    directly (no autograd node, so nothing is added to the per-step cost of sampling).

    Args:
        coeffs: K floats, or a tensor [K] or [batch, K] (per-sample coefficients).
        tensors: K tensors of one shape.

    Returns:
        The combination, in tensors[0]'s dtype.
    """
    _check(coeffs, tensors)
    tensors = list(tensors)
    if not _needs_grad(coeffs, tensors):
        return combine_triton([coeffs], tensors)[0]
    if isinstance(coeffs, torch.Tensor):
        return _LincombTriton.apply(coeffs, None, *tensors)
    if all(isinstance(c, Real) for c in coeffs):
        return _LincombTriton.apply(None, tuple(float(c) for c in coeffs), *tensors)
    # floats mixed with tensors: stack them (differentiably) into one [K] or [batch, K] coefficient tensor
    row = _row_tensor(coeffs, _batch(tensors[0]), tensors[0].device, accumulation_dtype(tensors[0].dtype))
    return _LincombTriton.apply(row, None, *tensors)


def lincomb_pair_reference(rows, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two combinations of the same inputs (e.g. x0_hat and the update that uses it).

    Args:
        rows: two coefficient rows.
        tensors: the inputs.

    Returns:
        The two combinations.
    """
    return lincomb_reference(rows[0], tensors), lincomb_reference(rows[1], tensors)


def lincomb_pair(rows, tensors: Sequence[torch.Tensor], *, backend: str | None = None):
    """Two combinations of the same inputs in one pass over them (Triton), or the reference.

    Args:
        rows: two coefficient rows.
        tensors: the inputs.
        backend: "auto", "triton" or "torch"; None: the environment's.

    Returns:
        The two combinations.

    Raises:
        ValueError: not two rows, or rows that do not fit the inputs. KernelUnavailable: Triton forced, unable to run.
    """
    if len(rows) != 2:
        raise ValueError(f"lincomb_pair takes two coefficient rows, got {len(rows)}")
    for r in rows:
        _check(r, tensors)
    if use_triton(tensors, backend):
        if any(_needs_grad(r, tensors) for r in rows):
            return lincomb_triton(rows[0], tensors), lincomb_triton(rows[1], tensors)   # differentiable, two passes
        return combine_triton(list(rows), list(tensors))
    return lincomb_pair_reference(rows, tensors)


def lincomb(coeffs: Sequence[float] | torch.Tensor, tensors: Sequence[torch.Tensor], *,
            backend: str | None = None) -> torch.Tensor:
    """sum_k coeffs[k] tensors[k]: the fused Triton kernel where it can run (see kernels.backend), else the reference.

    Args:
        coeffs: K floats, or a tensor [K] or [batch, K] (per-sample coefficients).
        tensors: K tensors of one shape.
        backend: "auto", "triton" or "torch"; None: $DIFFSOLVE_KERNELS, else "auto".

    Returns:
        The combination, in tensors[0]'s dtype (accumulated in float32 for half-precision inputs).

    Raises:
        ValueError: coefficients and tensors that do not match. KernelUnavailable: Triton forced, unable to run.
    """
    if use_triton(tensors, backend):
        return lincomb_triton(coeffs, tensors)
    return lincomb_reference(coeffs, tensors)


__all__ = ["lincomb", "lincomb_reference", "lincomb_triton", "lincomb_pair", "lincomb_pair_reference",
           "combine_triton", "coefficient_tensor", "KernelUnavailable", "requested_backend"]
