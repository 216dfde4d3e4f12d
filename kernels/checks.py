"""Device-side checks of the state that never sync host and device."""
from __future__ import annotations

import torch


def nonfinite(t: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor on t's device: True where t holds a NaN, +inf or -inf; one read of t, no host sync.

    One `aminmax` reduction (it propagates NaN), then two scalar tests. A float64 sum first copies a float32/half
    tensor to float64 (a second pass) and can overflow near 1e308; `vector_norm(ord=inf)` is one pass but about
    10x slower than `aminmax` on the CPU. Comparing the extremes never overflows, so values up to the dtype's
    largest finite number (65504 in fp16, ~3.4e38 in bf16/fp32, ~1.8e308 in float64) are never flagged.

    Args:
        t: any tensor (integer and empty tensors give False).

    Returns:
        The 0-d bool flag.

    Raises:
        TypeError: t is not a tensor.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"nonfinite(t): t must be a tensor, got {type(t).__name__}")
    if t.numel() == 0 or not t.is_floating_point():
        # nothing to read, or integers and bools, which have no NaN or inf
        return torch.zeros((), dtype=torch.bool, device=t.device)
    lo, hi = torch.aminmax(t)
    return torch.isfinite(lo).logical_and_(torch.isfinite(hi)).logical_not_()
