"""Noise: the initial draw (from one seed, one seed per sample, or a torch.Generator) and the per-run step noise.

Step noise for stochastic solvers is counter based (Salmon et al. 2011, "Parallel random numbers: as easy as
1, 2, 3"): the normal draw of sample b at step i, draw j, entry k is a hash of (key_b, i, j, k), computed with
integer tensor ops on the sample's device. It therefore depends on the sample's key and the step, never on call
order, batch size or the sample's position in a batch, and needs no host-device sync or generator state.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from diffsolve.errors import InvalidArgument, check_int
from diffsolve.field.source import Source, describe_source, seeded_draw

_M32 = 0xFFFFFFFF
_SALT_STEP = 0x5EED5A17          # separates the step-noise stream from the initial noise of the same seed


# torch.Generator.manual_seed's range: any seed in it gives its own stream
MIN_SEED, MAX_SEED = -(2 ** 63), 2 ** 64 - 1


def check_seed(seed: object) -> "int | list[int] | None":
    """None, one integer seed, or one integer seed per sample (a list, tuple, range, or 1-D integer array/tensor);
    numpy integers are integers, strings and floats are not; every seed lies in [-2**63, 2**64 - 1] (the range
    torch.Generator.manual_seed takes).

    Args:
        seed: the seed(s) to check.

    Returns:
        None, an int, or a list of ints.

    Raises:
        InvalidArgument: a seed of another type or out of range.
    """
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return check_int("seed", seed, MIN_SEED, MAX_SEED)
    if isinstance(seed, (str, bytes)) or isinstance(seed, bool):
        raise InvalidArgument(f"seed={seed!r}: must be an integer in [-2**63, 2**64 - 1] or a list of them, one per "
                              "sample")
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 1 or seed.is_floating_point() or seed.dtype == torch.bool:
            raise InvalidArgument(f"seed= as a tensor must be 1-D with an integer dtype, got {seed.dtype} "
                                  f"{tuple(seed.shape)}")
        seed = seed.tolist()
    try:
        items = list(seed)
    except TypeError:
        raise InvalidArgument(f"seed={seed!r}: must be an integer in [-2**63, 2**64 - 1] or a list of them, one "
                              "per sample") from None
    if not items:
        raise InvalidArgument("seed= is an empty list: give one seed per sample")
    return [check_int(f"seed[{i}]", v, MIN_SEED, MAX_SEED) for i, v in enumerate(items)]


def draw_noise(shape: Sequence[int], *, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise. A list of seeds gives each sample its own stream, so sample i does not depend on the
    batch.

    Drawn on the CPU in float32, then moved: the same seed gives the same numbers on every device and dtype.

    Args:
        shape: `(batch, *sample_shape)`.
        seed: one seed, one per sample, or None.
        generator: a torch.Generator instead of `seed`; neither: torch's global generator.
        device: where the noise goes (default CPU).
        dtype: its dtype (default float32).

    Returns:
        The noise tensor.

    Raises:
        InvalidArgument: both seed and generator, a bad seed, or a seed list of the wrong length.
    """
    shape = tuple(int(v) for v in shape)
    seed = check_seed(seed)
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


def draw_start(shape: Sequence[int], *, source: Source | None = None, seed: int | Sequence[int] | None = None,
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The starts of a run: `draw_noise` for the standard normal (source None), else draws from the field's source.

    A list of seeds draws each sample alone from its own seed (sample i does not depend on the batch); one seed
    or a generator draws the whole batch at once (a callable from the generator itself; a Distribution, which
    takes no generator, from one seed drawn from it). Seeded draws leave torch's global random state unchanged;
    with neither, a Distribution draws from torch's global generator and a callable from a generator seeded by
    one global draw.

    Args:
        shape: `(batch, *sample_shape)`.
        source: the field's source (`Field.source`, checked there); None: standard normal.
        seed: one seed, one per sample, or None.
        generator: a torch.Generator instead of `seed`.
        device: where the starts go (default CPU).
        dtype: their dtype (None: float32).

    Returns:
        The starts, `shape`.

    Raises:
        InvalidArgument: both seed and generator, a bad seed, a seed list of the wrong length, or a source that
            drew another shape.
    """
    dtype = dtype or torch.float32
    if source is None:
        return draw_noise(shape, seed=seed, generator=generator, device=device, dtype=dtype)
    shape = tuple(int(v) for v in shape)
    seed = check_seed(seed)
    if seed is not None and generator is not None:
        raise InvalidArgument("give seed= or generator=, not both")
    if isinstance(seed, list):
        if len(seed) != shape[0]:
            raise InvalidArgument(f"seed= has {len(seed)} entries but the batch has {shape[0]} samples")
        rows = [seeded_draw(source, 1, s).to(device=device, dtype=dtype) for s in seed]
        out = torch.cat(rows) if rows else torch.empty(shape, device=device, dtype=dtype)
    elif seed is None and isinstance(source, torch.distributions.Distribution) and generator is None:
        out = source.sample((shape[0],))
    elif seed is None and generator is not None and not isinstance(source, torch.distributions.Distribution):
        out = source(shape[0], generator)
    else:
        if seed is None:
            # one draw from the generator (or the global one): reproducible under it, like NoiseSource.for_run
            where = generator.device if generator is not None else "cpu"
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=where).item())
        out = seeded_draw(source, shape[0], seed)
    if tuple(out.shape) != shape:
        raise InvalidArgument(f"source={describe_source(source)} drew shape {tuple(out.shape)} where {shape} was "
                              "asked for: it must return [n, *sample_shape] for every n")
    return out.to(device=device, dtype=dtype)


def _agree(batch_size: int | None, seed: object, batch: int, what: str) -> None:
    """batch_size=, a list of seeds and the noise or shape must name one batch size."""
    if batch_size is not None and batch_size != batch:
        raise InvalidArgument(f"batch_size={batch_size} disagrees with {what}, which holds {batch} samples")
    if isinstance(seed, list) and len(seed) != batch:
        raise InvalidArgument(f"seed= has {len(seed)} entries (one per sample) but {what} gives {batch} samples")


def start_noise(sample_shape: Sequence[int] | None, source: Source | None, *, noise: torch.Tensor | None,
                shape: Sequence[int] | None, batch_size: int | None, seed: int | list[int] | None,
                generator: torch.Generator | None, device: torch.device | str | None,
                dtype: torch.dtype | None) -> torch.Tensor:
    """The starts of a run: `noise=` checked and moved, else drawn (`draw_start`) for `shape=` or `batch_size=`.

    Args:
        sample_shape: The model's shape of one sample (no batch); None: not declared.
        source: The field's source of starts (`Field.source`); None: standard normal.
        noise: Given starts `(batch, *sample_shape)`, or None to draw them.
        shape: `(batch, *sample_shape)` of the noise to draw (or to check `noise` against), or None.
        batch_size: The number of samples to draw when `shape` is None (None: one per seed, or 1).
        seed: A checked seed (`check_seed`): one, one per sample, or None.
        generator: A torch.Generator instead of `seed`, or None.
        device: Where the starts go; None keeps `noise`'s device (drawn starts: CPU).
        dtype: The starts' dtype; None keeps `noise`'s (drawn starts: float32).

    Returns:
        torch.Tensor: The starts, `(batch, *sample_shape)`.

    Raises:
        InvalidArgument: `noise` is not a floating tensor of the model's shape, `shape` is malformed or does not
            fit `sample_shape`, no shape is known, or batch_size=, the seeds and noise/shape disagree.
    """
    if noise is not None:
        if not isinstance(noise, torch.Tensor):
            raise InvalidArgument(f"noise= must be a torch.Tensor, got {type(noise).__name__}")
        want = tuple(shape) if shape is not None else (
            (noise.shape[0], *sample_shape) if sample_shape is not None else None)
        if want is not None and tuple(noise.shape) != want:
            raise InvalidArgument(f"noise has shape {tuple(noise.shape)} but the model expects {want} "
                                  "(batch, *sample_shape)")
        if not noise.is_floating_point():
            raise InvalidArgument(f"noise= must be a floating-point tensor, got dtype {noise.dtype}")
        _agree(batch_size, seed, noise.shape[0], "noise=")
        return noise.to(device=device or noise.device, dtype=dtype or noise.dtype)
    if shape is not None:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)) or not shape:
            raise InvalidArgument(f"shape={shape!r}: must be (batch, *sample_shape), a tuple of integers")
        shape = tuple(check_int(f"shape[{i}]", v, 0 if i == 0 else 1) for i, v in enumerate(shape))
        if sample_shape is not None and shape[1:] != tuple(sample_shape):
            raise InvalidArgument(f"shape={shape} does not fit the model, whose samples have shape "
                                  f"{tuple(sample_shape)}: pass shape=(batch, *{tuple(sample_shape)})")
        _agree(batch_size, seed, shape[0], "shape=")
    else:
        if sample_shape is None:
            raise InvalidArgument("shape= is missing: the model does not declare its sample shape; "
                                  "pass shape=(batch, ...) or noise=")
        batch = batch_size if batch_size is not None else (len(seed) if isinstance(seed, list) else 1)
        _agree(batch_size, seed, batch, "batch_size=")
        shape = (batch, *sample_shape)
    return draw_start(shape, source=source, seed=seed, generator=generator, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Counter-based hashing (host side for keys, tensor side for draws)
# ------------------------------------------------------------------------------------------------
def _mix32_py(x: int) -> int:
    """lowbias32 (C. Wellons, "Prospecting for hash functions"): a 32-bit bijective integer hash."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    x ^= x >> 16
    return x


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 tensors holding 32-bit values; products wrap, and only their low 32 bits are kept."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_key(seed: int, index: int = 0) -> tuple[int, int]:
    """Two 32-bit keys for one sample from an arbitrary Python int seed (and a sample index, for one-seed batches).

    Args:
        seed: any Python int.
        index: the sample's index in a one-seed batch (0 for a per-sample seed).

    Returns:
        The pair of keys.
    """
    s = int(seed)
    lo, hi = s & _M32, (s >> 32) & _M32
    k1 = _mix32_py(lo ^ _mix32_py(hi ^ _mix32_py(int(index) ^ _SALT_STEP)))
    k2 = _mix32_py(k1 ^ 0x68E31DA4 ^ _mix32_py(hi + 0x1B56C4E9))
    return k1, k2


class NoiseSource:
    """Per-run step noise: `draw(i, j)` is a standard normal tensor shaped like the run's state, for step i, draw j.

    Sample b's numbers are a function of (keys[b], i, j) only. Build it with `NoiseSource.for_run` from the same
    seed= / generator= the run's initial noise came from.

    Args:
        keys: one pair of 32-bit keys per sample (see `sample_key`).
        sample_shape: one sample's shape.
        device: where draws are made (default CPU).
        dtype: their dtype (default float32).
    """

    def __init__(self, keys: Sequence[tuple[int, int]], sample_shape: Sequence[int], *,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        self.sample_shape = tuple(int(v) for v in sample_shape)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.keys = [(int(a) & _M32, int(b) & _M32) for a, b in keys]
        kt = torch.tensor(self.keys, dtype=torch.int64).reshape(-1, 2)
        self._k1 = kt[:, :1].to(self.device)
        self._k2 = kt[:, 1:].to(self.device)
        numel = math.prod(self.sample_shape)
        # Two counters per entry: the pair of uniforms of one Box-Muller draw.
        self._ctr = torch.arange(numel, dtype=torch.int64, device=self.device)[None, :]

    @property
    def batch_size(self) -> int:
        """The number of samples (one key pair each)."""
        return len(self.keys)

    @classmethod
    def for_run(cls, shape: Sequence[int], *, seed: int | Sequence[int] | None = None,
                generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> "NoiseSource":
        """Keys from a seed list (one per sample: batch invariant), one seed (key of (seed, index)), a generator
        (one base seed drawn from it before the loop), or neither (a base seed from torch's global generator).

        Args:
            shape: the run's `(batch, *sample_shape)`.
            seed: as the run's seed=.
            generator: as the run's generator=.
            device: where the draws are made.
            dtype: their dtype.

        Returns:
            The NoiseSource.

        Raises:
            InvalidArgument: both seed and generator, or a seed list whose length is not the batch.
        """
        shape = tuple(int(v) for v in shape)
        seed = check_seed(seed)
        if seed is not None and generator is not None:
            raise InvalidArgument("give seed= or generator=, not both")
        if seed is not None and not isinstance(seed, int):
            seeds = [int(s) for s in seed]
            if len(seeds) != shape[0]:
                raise InvalidArgument(f"seed= has {len(seeds)} entries but the batch has {shape[0]} samples")
            keys = [sample_key(s) for s in seeds]
        else:
            if seed is None:
                # One host draw, before the loop: reproducible under torch.manual_seed or the given generator.
                where = generator.device if generator is not None else "cpu"
                seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=where).item())
            keys = [sample_key(int(seed), b) for b in range(shape[0])]
        return cls(keys, shape[1:], device=device, dtype=dtype)

    def draw(self, i: int, j: int = 0) -> torch.Tensor:
        """Standard normal noise for step i, draw j: [batch, *sample_shape].

        Args:
            i: the step.
            j: the draw within the step (default 0).

        Returns:
            The noise, on the source's device and dtype.
        """
        step = _mix32_py(_mix32_py(int(i) ^ 0x2C1B3C6D) ^ (int(j) * 0x297A2D39 + 0x9E3779B9))
        base = _mix32(self._k1 ^ step)                             # [B, 1]
        ctr = self._ctr * 2                                        # [1, n]
        h1 = _mix32(_mix32(_mix32(ctr ^ base) + self._k2) ^ step)
        h2 = _mix32(_mix32(_mix32((ctr + 1) ^ base) + self._k2) ^ step)
        # 24-bit uniforms in (0, 1): exact in float32, so the draw is the same on every device.
        u1 = ((h1 >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        u2 = ((h2 >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        return z.reshape(self.batch_size, *self.sample_shape).to(self.dtype)

    def entropy(self, b: int) -> int:
        """A 64-bit integer seed for sample b (for Brownian trees that take a seed, such as torchsde's).

        Args:
            b: the sample's index.

        Returns:
            An int below 2**63.
        """
        k1, k2 = self.keys[b]
        return ((k1 & 0x7FFFFFFF) << 32) | (k2 & 0xFFFFFFFF)     # disjoint bits, below 2^63

    def subset(self, index: Sequence[int]) -> "NoiseSource":
        """The noise of the chosen samples, unchanged.

        Args:
            index: the samples' indices.

        Returns:
            A NoiseSource over those samples.
        """
        return NoiseSource([self.keys[k] for k in index], self.sample_shape, device=self.device, dtype=self.dtype)
