"""Update-step arithmetic: x_next = sum_k c_k T_k. Solvers call `lincomb`, never torch arithmetic, for their updates.

Each fused Triton kernel sits beside its PyTorch reference; `DIFFSOLVE_KERNELS=auto|triton|torch` (or the
`backend=` argument) picks one (see kernels.backend). `nonfinite(t)` flags NaN/inf in one pass, without a host sync.
"""
from diffsolve.kernels.backend import BACKENDS, KernelUnavailable, requested_backend, use_triton
from diffsolve.kernels.checks import nonfinite
from diffsolve.kernels.lincomb import (coefficient_tensor, lincomb, lincomb_pair, lincomb_pair_reference, lincomb_reference,
                      lincomb_triton)

__all__ = ["lincomb", "lincomb_reference", "lincomb_triton", "lincomb_pair", "lincomb_pair_reference",
           "coefficient_tensor", "nonfinite", "KernelUnavailable", "BACKENDS", "requested_backend", "use_triton"]
