"""Noise-adding update of SDE samplers: x' = a x + sum_k b_k D_k + c z (DDPM ancestral, SDE-DPM-Solver++, EDM churn).

z is either given (the exact path: `noisy_update(..., noise=z)`) or drawn inside the kernel from Philox with a
(seed, offset) pair (`seed=`), which saves writing and re-reading z. The reference draws z with torch.randn
from a generator seeded by (seed, offset): the same distribution, not the same numbers as the kernel.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .backend import use_triton
from .lincomb import combine_triton, lincomb, lincomb_reference


def _with_noise(coeffs, noise_coeff):
    if isinstance(coeffs, torch.Tensor):
        if noise_coeff is not None:
            raise ValueError("with a coefficient tensor, its last column is the noise coefficient; "
                             "leave noise_coeff=None")
        return coeffs
    if noise_coeff is None:
        raise ValueError("noise_coeff is missing")
    return [*coeffs, noise_coeff]


def reference_noise(like: torch.Tensor, seed: int, offset: int = 0) -> torch.Tensor:
    """Standard normal noise for the reference path, reproducible from (seed, offset)."""
    gen = torch.Generator(device=like.device).manual_seed((int(seed) * 1_000_003 + int(offset)) % (2 ** 63))
    z = torch.randn(like.shape, generator=gen, device=like.device, dtype=torch.float32)
    return z.to(like.dtype)


def noisy_update_reference(coeffs, tensors: Sequence[torch.Tensor], noise_coeff=None,
                           noise: torch.Tensor | None = None, *, seed: int | None = None,
                           offset: int = 0) -> torch.Tensor:
    """a x + sum_k b_k D_k + c z in PyTorch; coeffs = (a, b_1, ...) and noise_coeff = c (or a [.., K+1] tensor)."""
    if noise is None:
        if seed is None:
            raise ValueError("give noise= (a tensor) or seed= (noise drawn from it)")
        noise = reference_noise(tensors[0], seed, offset)
    return lincomb_reference(_with_noise(coeffs, noise_coeff), [*tensors, noise])


def noisy_update(coeffs, tensors: Sequence[torch.Tensor], noise_coeff=None, noise: torch.Tensor | None = None, *,
                 seed: int | None = None, offset: int = 0, backend: str | None = None) -> torch.Tensor:
    """The fused noisy update: with `noise=` exactly lincomb; with `seed=` the noise is drawn in the kernel.

    `offset` advances the Philox counter: use a different (seed, offset) per step, e.g. offset = step * numel.
    """
    full = _with_noise(coeffs, noise_coeff)
    if noise is not None:
        return lincomb(full, [*tensors, noise], backend=backend)
    if seed is None:
        raise ValueError("give noise= (a tensor) or seed= (noise drawn from it)")
    if use_triton(tensors, backend):
        return combine_triton([full], list(tensors), seed=int(seed), noise_offset=int(offset))[0]
    return noisy_update_reference(full, tensors, None, seed=seed, offset=offset)
