"""A field's source distribution: where its trajectories start, when that is not the standard normal.

A plain velocity field (a flow-matching model) may have been trained from any source: a callable
`source(n, generator) -> tensor [n, *sample_shape]` that draws from the torch.Generator it is given, or a
`torch.distributions.Distribution` whose `sample((n,))` is `[n, *sample_shape]` (its batch and event shape
together are one sample's shape). This module checks a source once, draws from it with a seed (batch
invariance is built on top, in `diffsolve.noise.draw_start`) and states its identity for caches.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Union

import torch
from torch.distributions import Distribution

from diffsolve.errors import InvalidArgument

Source = Union[Callable[[int, torch.Generator], torch.Tensor], Distribution]

ALLOWED = ("None (standard normal), a torch.distributions.Distribution whose sample((n,)) is [n, *sample_shape] "
           "with its parameters on the CPU, or a callable source(n, generator) -> tensor [n, *sample_shape] that "
           "draws from the torch.Generator it is given")
PROBE_SEED, PROBE_N = 0, 2


def describe_source(source: Any) -> str:
    """A source's repr on one line (a Distribution's spans several), cut to 160 characters, for messages.

    Args:
        source: the source.

    Returns:
        The text.
    """
    text = " ".join(repr(source).split())
    return text if len(text) <= 160 else text[:157] + "..."


def seeded_draw(source: Source, n: int, seed: int) -> torch.Tensor:
    """`n` samples of `source` from one seed, leaving torch's global random state as it was.

    A callable gets a CPU torch.Generator seeded with `seed`; a Distribution (which takes no generator) is
    sampled with the CPU global generator seeded with `seed` inside `torch.random.fork_rng`, which restores it.

    Args:
        source: a callable or a Distribution (checked by `check_source`).
        n: the number of samples.
        seed: the seed.

    Returns:
        What the source returned, [n, *sample_shape].
    """
    if isinstance(source, Distribution):
        with torch.random.fork_rng(devices=[]):
            # only the CPU generator: torch.manual_seed would also reseed (and not restore) every CUDA generator
            torch.default_generator.manual_seed(int(seed))
            return source.sample((int(n),))
    return source(int(n), torch.Generator(device="cpu").manual_seed(int(seed)))


def check_source(source: Any, sample_shape: tuple[int, ...] | None = None) -> tuple[Source | None, tuple | None]:
    """Check a source with one probe draw (two samples from seed 0): a floating tensor of shape
    `[2, *sample_shape]` with finite values, on the CPU for a Distribution.

    Args:
        source: None, a Distribution or a callable `source(n, generator)`.
        sample_shape: one sample's shape as the model declares it; None: taken from the probe.

    Returns:
        (the source, one sample's shape): (None, sample_shape) for None.

    Raises:
        InvalidArgument: naming `source=` and what is allowed.
    """
    if source is None:
        return None, sample_shape
    name = describe_source(source)
    if isinstance(source, (str, bytes)) or not (isinstance(source, Distribution) or callable(source)):
        raise InvalidArgument(f"source={name}: must be {ALLOWED}")
    try:
        probe = seeded_draw(source, PROBE_N, PROBE_SEED)
    except Exception as e:        # the user's code: whatever it raises is reported as a bad source
        raise InvalidArgument(f"source={name} failed to draw {PROBE_N} samples ({type(e).__name__}: {e}); it "
                              f"must be {ALLOWED}") from e
    if not isinstance(probe, torch.Tensor) or not probe.is_floating_point() or probe.dim() < 1:
        what = f"dtype {probe.dtype}" if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise InvalidArgument(f"source={name} returned {what} for {PROBE_N} samples; it must be {ALLOWED}")
    shape = tuple(probe.shape[1:])
    if probe.shape[0] != PROBE_N or (sample_shape is not None and shape != tuple(sample_shape)):
        want = f"[{PROBE_N}, *{tuple(sample_shape)}]" if sample_shape is not None else f"[{PROBE_N}, ...]"
        raise InvalidArgument(f"source={name} returned shape {tuple(probe.shape)} for {PROBE_N} samples, "
                              f"expected {want} (one row per sample, each of the model's sample shape)")
    if isinstance(source, Distribution) and probe.device.type != "cpu":
        raise InvalidArgument(f"source={name} draws on {probe.device}: keep a distribution's parameters on "
                              "the CPU (its draws are moved to the run's device, so a seed gives the same starts on "
                              "every device)")
    if not bool(torch.isfinite(probe).all()):
        raise InvalidArgument(f"source={name} drew NaN or Inf values; it must be {ALLOWED}")
    return source, shape


def _tensor_digest(v: torch.Tensor) -> str:
    t = v.detach().cpu().contiguous()
    t = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return f"{t.dtype}{tuple(t.shape)}:{hashlib.sha256(t.numpy().tobytes()).hexdigest()}"


def _distribution_identity(dist: Distribution) -> str | None:
    """Class, shapes, parameters (by content) and nested distributions; None for anything else (transforms)."""
    parts = [type(dist).__qualname__, f"batch={tuple(dist.batch_shape)}", f"event={tuple(dist.event_shape)}"]
    params = sorted(getattr(dist, "arg_constraints", {}) or {})
    for name in params:
        # getattr fills lazy parameters (a Categorical's logits from its probs): the same values either way
        value = getattr(dist, name, None)
        if isinstance(value, torch.Tensor):
            parts.append(f"{name}={_tensor_digest(value)}")
        elif isinstance(value, (int, float)):
            parts.append(f"{name}={value!r}")
    for name, value in sorted(vars(dist).items()):
        if name in params or name.startswith("_") and not isinstance(value, Distribution):
            continue
        if isinstance(value, Distribution):
            inner = _distribution_identity(value)
            if inner is None:
                return None
            parts.append(f"{name}={inner}")
        elif value is None or isinstance(value, (bool, int, float, str)):
            parts.append(f"{name}={value!r}")
        else:
            return None
    return f"{parts[0]}({', '.join(parts[1:])})"


def source_identity(source: Source | None) -> str | None:
    """A stable string naming a source: "normal" for None; a Distribution's class, shapes and parameter tensors
    (by content); a callable's `identity` (a string attribute or a method returning one); None when unknown,
    which keeps the field out of every cache.

    Args:
        source: the source.

    Returns:
        The identity, or None.
    """
    if source is None:
        return "normal"
    if isinstance(source, Distribution):
        full = _distribution_identity(source)
        digest = hashlib.sha256(full.encode()).hexdigest() if full is not None else None
        return f"{type(source).__qualname__}:sha256:{digest}" if digest is not None else None
    ident = getattr(source, "identity", None)
    ident = ident() if callable(ident) else ident
    return f"callable:{ident}" if isinstance(ident, str) else None
