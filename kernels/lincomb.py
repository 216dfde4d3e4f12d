"""The linear combination every solver update reduces to, and its PyTorch reference."""
from __future__ import annotations

from typing import Sequence

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def lincomb_reference(coeffs: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k coeffs[k] * tensors[k], accumulated in float32 for half-precision inputs, returned in tensors[0]'s dtype."""
    if len(coeffs) != len(tensors) or not tensors:
        raise ValueError(f"lincomb needs as many coefficients as tensors, got {len(coeffs)} and {len(tensors)}")
    out_dtype = tensors[0].dtype
    acc_dtype = torch.float32 if out_dtype in _LOW_PRECISION else out_dtype
    acc = tensors[0].to(acc_dtype) * coeffs[0]
    for c, t in zip(coeffs[1:], tensors[1:]):
        acc = acc.add(t.to(acc_dtype), alpha=c) if isinstance(c, (int, float)) else acc + c * t.to(acc_dtype)
    return acc.to(out_dtype)


def lincomb(coeffs: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dispatch point for the fused update kernels; the PyTorch reference is the fallback."""
    return lincomb_reference(coeffs, tensors)
