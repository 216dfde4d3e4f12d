"""The Triton kernel behind every fused update: Y_j = sum_k C[j, k] T_k, j < M <= 2, K <= 8.

Loaded lazily by `backend.triton_impl()` (never at `import diffsolve`): Triton fixes at decoration time whether a
kernel is compiled or run by its interpreter. One elementwise pass over flat, identically laid out inputs; the
coefficients are fp32 kernel arguments (MODE 0), a shared device vector (MODE 1), or one row per sample read by
batch index (MODE 2), so a captured CUDA graph can replay new per-sample coefficients written into that tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_TERMS = 8
BLOCK = 1024
_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
             torch.float64: tl.float64}


@triton.jit
def _coef(c_ptr, b, c_bstride, mask, s, j: tl.constexpr, k: tl.constexpr, KC: tl.constexpr, MODE: tl.constexpr,
          ACC: tl.constexpr):
    if MODE == 0:
        c = s
    elif MODE == 1:
        c = tl.load(c_ptr + (j * KC + k))
    else:
        # masked: tail lanes past the last sample would read past the coefficient rows
        c = tl.load(c_ptr + b * c_bstride + (j * KC + k), mask=mask, other=0.0)
    return c.to(ACC)


@triton.jit
def _term(acc0, acc1, t_ptr, offs, mask, c_ptr, b, c_bstride, s0, s1, k: tl.constexpr, KC: tl.constexpr,
          M: tl.constexpr, MODE: tl.constexpr, ACC: tl.constexpr):
    v = tl.load(t_ptr + offs, mask=mask, other=0.0).to(ACC)
    acc0 += _coef(c_ptr, b, c_bstride, mask, s0, 0, k, KC, MODE, ACC) * v
    if M == 2:
        acc1 += _coef(c_ptr, b, c_bstride, mask, s1, 1, k, KC, MODE, ACC) * v
    return acc0, acc1


@triton.jit
def lincomb_kernel(y0_ptr, y1_ptr, t0, t1, t2, t3, t4, t5, t6, t7, c_ptr, c_bstride,
                   s00, s01, s02, s03, s04, s05, s06, s07, s10, s11, s12, s13, s14, s15, s16, s17,
                   n, per_sample,
                   K: tl.constexpr, KC: tl.constexpr, M: tl.constexpr, MODE: tl.constexpr,
                   ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if MODE == 2:
        b = offs // per_sample
    else:
        b = 0
    # tl.full is a builtin; tl.zeros is a @jit helper, which the interpreter cannot run unless TRITON_INTERPRET
    # was set before triton was imported.
    acc0 = tl.full([BLOCK], 0.0, ACC)
    acc1 = tl.full([BLOCK], 0.0, ACC)
    acc0, acc1 = _term(acc0, acc1, t0, offs, mask, c_ptr, b, c_bstride, s00, s10, 0, KC, M, MODE, ACC)
    if K > 1:
        acc0, acc1 = _term(acc0, acc1, t1, offs, mask, c_ptr, b, c_bstride, s01, s11, 1, KC, M, MODE, ACC)
    if K > 2:
        acc0, acc1 = _term(acc0, acc1, t2, offs, mask, c_ptr, b, c_bstride, s02, s12, 2, KC, M, MODE, ACC)
    if K > 3:
        acc0, acc1 = _term(acc0, acc1, t3, offs, mask, c_ptr, b, c_bstride, s03, s13, 3, KC, M, MODE, ACC)
    if K > 4:
        acc0, acc1 = _term(acc0, acc1, t4, offs, mask, c_ptr, b, c_bstride, s04, s14, 4, KC, M, MODE, ACC)
    if K > 5:
        acc0, acc1 = _term(acc0, acc1, t5, offs, mask, c_ptr, b, c_bstride, s05, s15, 5, KC, M, MODE, ACC)
    if K > 6:
        acc0, acc1 = _term(acc0, acc1, t6, offs, mask, c_ptr, b, c_bstride, s06, s16, 6, KC, M, MODE, ACC)
    if K > 7:
        acc0, acc1 = _term(acc0, acc1, t7, offs, mask, c_ptr, b, c_bstride, s07, s17, 7, KC, M, MODE, ACC)
    tl.store(y0_ptr + offs, acc0.to(y0_ptr.dtype.element_ty), mask=mask)
    if M == 2:
        tl.store(y1_ptr + offs, acc1.to(y1_ptr.dtype.element_ty), mask=mask)


def launch(outs: list[torch.Tensor], tensors: list[torch.Tensor], *, scalars: list[list[float]] | None,
           ctensor: torch.Tensor | None, per_sample: int, acc: torch.dtype) -> None:
    """Fill `outs` (1 or 2 dense tensors laid out like `tensors`) with the combination; no host sync, no alloc.

    scalars: M rows of K floats (MODE 0), or ctensor: [M, KC] (MODE 1) / [B, M, KC] (MODE 2) in `acc` dtype.
    """
    k, m, n = len(tensors), len(outs), outs[0].numel()
    if not 1 <= k <= MAX_TERMS or m not in (1, 2):
        raise ValueError(f"kernel takes 1..{MAX_TERMS} inputs and 1..2 outputs, got {k} and {m}")
    ptrs = list(tensors) + [tensors[0]] * (MAX_TERMS - k)
    if scalars is not None:
        mode, cptr, cbs = 0, tensors[0], 0
        rows = [list(map(float, r)) + [0.0] * (MAX_TERMS - len(r)) for r in scalars] + [[0.0] * MAX_TERMS]
        s0, s1 = rows[0], rows[1]
    else:
        mode = 2 if ctensor.dim() == 3 else 1
        cptr, cbs = ctensor, (ctensor.stride(0) if mode == 2 else 0)
        s0 = s1 = [0.0] * MAX_TERMS
    grid = (triton.cdiv(n, BLOCK),)
    lincomb_kernel[grid](outs[0], outs[-1], *ptrs, cptr, cbs, *s0, *s1, n, max(per_sample, 1),
                         K=k, KC=k, M=m, MODE=mode, ACC=_TL_DTYPE[acc], BLOCK=BLOCK, num_warps=4)
