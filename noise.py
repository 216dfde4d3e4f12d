"""Initial noise: from one seed, one seed per sample, or a torch.Generator."""
from __future__ import annotations

from typing import Sequence

import torch

from .errors import InvalidArgument


def draw_noise(shape: Sequence[int], *, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise. A list of seeds gives each sample its own stream, so sample i does not depend on the batch."""
    shape = tuple(int(v) for v in shape)
    if seed is not None and generator is not None:
        raise InvalidArgument("give seed= or generator=, not both")
    if seed is None or isinstance(seed, int):
        gen = generator
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
        # Drawn on the CPU, in float32, then moved: the same seed gives the same numbers on every device and dtype.
        where = gen.device if gen is not None else "cpu"
        return torch.randn(shape, generator=gen, dtype=torch.float32, device=where).to(device=device, dtype=dtype)
    seeds = list(seed)
    if len(seeds) != shape[0]:
        raise InvalidArgument(f"seed= has {len(seeds)} entries but the batch has {shape[0]} samples")
    rows = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
            for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)
