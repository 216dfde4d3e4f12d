"""Device-side checks of the state that never sync host and device."""
from __future__ import annotations

import torch


def nonfinite(t: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor on t's device: True where t holds a NaN, +inf or -inf; one read of t, no host sync.

    It is max |t| (the inf-norm, a single reduction that propagates NaN) tested for finiteness. A float64 sum, the
    obvious alternative, first copies a float32/half tensor to float64 (a second pass) and can overflow for float64
    values near 1e308; max |t| compares instead of adding, so it neither overflows nor misses: values up to the
    dtype's largest finite number (65504 in fp16, ~3.4e38 in bf16/fp32, ~1.8e308 in float64) are never flagged.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"nonfinite(t): t must be a tensor, got {type(t).__name__}")
    if t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
        # nothing to read, or integers and bools, which have no NaN or inf (and the inf-norm rejects both)
        return torch.zeros((), dtype=torch.bool, device=t.device)
    peak = torch.linalg.vector_norm(t, ord=float("inf"))
    # NaN fails every comparison, so one compare catches NaN and inf (torch.isfinite on it is ~6 tiny kernels)
    return torch.le(peak, torch.finfo(peak.dtype).max).logical_not_()
