"""Update-step arithmetic: x_next = sum_k c_k T_k. Solvers call `lincomb`, never torch arithmetic, for their updates.

Each fused Triton kernel sits beside its PyTorch reference; `DIFFSOLVE_KERNELS=auto|triton|torch` (or the
`backend=` argument) picks one (see kernels.backend).
"""
from .backend import BACKENDS, KernelUnavailable, requested_backend, use_triton
from .lincomb import (coefficient_tensor, lincomb, lincomb_pair, lincomb_pair_reference, lincomb_reference,
                      lincomb_triton)
from .convert import denoise_update, denoise_update_reference, prediction_coefficients
from .sde import noisy_update, noisy_update_reference

__all__ = ["lincomb", "lincomb_reference", "lincomb_triton", "lincomb_pair", "lincomb_pair_reference",
           "coefficient_tensor", "denoise_update", "denoise_update_reference", "prediction_coefficients",
           "noisy_update", "noisy_update_reference", "KernelUnavailable", "BACKENDS", "requested_backend",
           "use_triton"]
