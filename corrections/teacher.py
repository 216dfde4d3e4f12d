"""Teacher trajectories and shared helpers for training corrections.

A teacher gives the exact (or nearly exact) probability-flow states at the coarse grid times from the same noise:
`mode='reference'` is bench/reference.py's adaptive float64 solve (cached on disk; the default for cheap models),
`mode='fine'` a fine-grid solve with a diffsolve solver (DPM-Solver++(3M) on the union of the coarse times and a
fine EDM grid) in the state's dtype, for networks where a float64 adaptive solve is too slow on a CPU.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
from diffsolve.field import Field, _network_of, as_field
from diffsolve.grids import karras
from diffsolve.noise import draw_start
from diffsolve.sampler import Sampler
from diffsolve.corrections.cost import teacher_phase

# Bottleneck blocks of known networks: the built-in UNet, diffusers' UNet2DModel, ADM/LDM UNets, and the shared MNIST
# DDPM (no downsampling; its middle block is the second 32-channel 7x7-conv block).
FEATURE_MODULES = ("mid", "mid_block", "middle_block", "gt.blocks.2")


def field_of(model: Any) -> Field:
    """The Field of `model`: itself when it is one, else `as_field(model)`.

    Args:
        model: A Field, or a model `as_field` accepts.

    Returns:
        The field.
    """
    return model if isinstance(model, Field) else as_field(model)


def training_field(field: Field, n: int) -> Field:
    """The field of a trainer's n training samples: sample i takes row i of the field's per-sample conditions.

    Args:
        field: The field (conditioned or not).
        n: The number of training samples the trainer draws.

    Returns:
        The field itself (no conditions, or exactly n rows), else the field of its first n rows.

    Raises:
        InvalidArgument: The field holds conditions for fewer than n samples.
    """
    rows = field.condition_rows
    if rows is None or rows == n:
        return field
    if rows < n:
        raise InvalidArgument(f"the field holds conditions for {rows} samples but the trainer draws {n} training "
                              f"samples: give one condition per training sample (train on {rows} samples, or draw "
                              f"{n} conditions)")
    return field.select(torch.arange(n))


def sample_shape_of(field: Field) -> tuple[int, ...]:
    """The shape of one sample the field declares.

    Args:
        field: The field.

    Returns:
        Its `sample_shape`, as a tuple.

    Raises:
        InvalidArgument: The model does not declare its sample shape.
    """
    shape = getattr(field, "sample_shape", None)
    if shape is None:
        raise InvalidArgument("the model does not declare its sample shape; wrap it in a VectorField with "
                              "sample_shape=")
    return tuple(shape)


def noise_for(field: Field, seeds: Sequence[int], dtype: torch.dtype = torch.float32, device: Any = None):
    """The starts of `field`, one sample per seed (the library's seeded draw, batch invariant): standard normal,
    or drawn from the field's source (`Field.source`).

    Args:
        field: The field whose sample shape and source are used.
        seeds: One seed per sample.
        dtype: Dtype of the noise (default float32).
        device: Where to draw it; None is the default device.

    Returns:
        (torch.Tensor): [len(seeds), *sample_shape].

    Raises:
        InvalidArgument: The model does not declare its sample shape.
    """
    return draw_start((len(seeds), *sample_shape_of(field)), source=getattr(field, "source", None), seed=list(seeds),
                      dtype=dtype, device=device)


def default_feature_module(field: Field) -> str | None:
    """The bottleneck of known networks (FEATURE_MODULES), or None.

    Args:
        field: The field whose network is searched.

    Returns:
        The first of FEATURE_MODULES the network has, or None (no such module, or not a torch module).
    """
    net = _network_of(field)
    if not isinstance(net, torch.nn.Module):
        return None
    names = dict(net.named_modules())
    for name in FEATURE_MODULES:
        if name in names:
            return name
    return None


@contextlib.contextmanager
def frozen(field: Field):
    """The network's parameters without gradients for the duration (restored afterwards).

    Args:
        field: The field whose network is frozen (a non-torch network is left alone).

    Returns:
        A context manager.
    """
    net = _network_of(field)
    params = list(net.parameters()) if isinstance(net, torch.nn.Module) else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@teacher_phase()           # its model evaluations count as the teacher's (corrections.cost)
def teacher_states(field: Field, noise: torch.Tensor, times: Sequence[float] | torch.Tensor, *,
                   mode: str = "reference", fine_steps: int = 96, solver: str = "dpmpp_3m",
                   settings: Any = None, cache: bool = True, seeds: Sequence[int] | None = None) -> torch.Tensor:
    """States at `times` (returned in decreasing order, the first the start) from standard-normal `noise`.

    On a field with per-sample conditions (Conditioned) sample i is solved with row i of them.

    Args:
        field: The field to solve.
        noise: Standard-normal noise, [B, ...].
        times: The times wanted (deduplicated and sorted from the largest; the first is the start).
        mode: "reference" (the adaptive float64 solve, cached on disk) or "fine" (a fine-grid diffsolve solve).
        fine_steps: Steps of the fine EDM grid in "fine" mode.
        solver: The solver of "fine" mode (default DPM-Solver++(3M)).
        settings: ReferenceSettings for "reference" mode; None is its defaults.
        cache: Use the on-disk cache of reference solves.
        seeds: The noise seeds, keys of the reference cache; None when unknown.

    Returns:
        [len(times), B, ...] in noise's dtype.

    Raises:
        InvalidArgument: `mode` is neither "reference" nor "fine", or the field holds per-sample conditions for
            fewer than B samples.
    """
    field = training_field(field, noise.shape[0])      # sample i takes row i of per-sample conditions
    t = torch.as_tensor(times, dtype=torch.float64).reshape(-1).unique(sorted=True).flip(0)
    if mode == "reference":
        ref = solve_reference(field, noise, t, settings=settings or ReferenceSettings(), cache=cache, seeds=seeds)
        return ref.at(t).to(noise.dtype)
    if mode != "fine":
        raise InvalidArgument(f"teacher mode={mode!r}; allowed values: 'reference', 'fine'")
    fine = karras(fine_steps, field.schedule, final="zero")
    fine = fine[fine <= float(t[0])]
    coarse = [float(v) for v in t]
    extra = [float(v) for v in fine if all(abs(float(v) - c) > 1e-6 * max(c, 1e-12) for c in coarse)]
    grid = torch.tensor(coarse + extra, dtype=torch.float64).unique(sorted=True).flip(0)
    s = Sampler(field, solver, grid=grid, progress=False, check_finite=False)
    with torch.no_grad():
        out = s.solve(s.plan(), noise, return_trajectory=True)
    idx = [int((grid == v).nonzero()[0]) for v in t]
    return out.trajectory[idx]


def mean_denoised_at_start(field: Field, t_start: float, n: int = 128, seed: int = 987_654,
                           batch: int = 64) -> torch.Tensor:
    """The mean data prediction at the largest noise (sample shape), from n noise draws: the AFS offset.

    Args:
        field: The field (a Gaussian path).
        t_start: The largest time, where the data prediction is taken.
        n: Number of noise draws.
        seed: The first noise seed (seeds seed .. seed + n - 1).
        batch: Samples per model call.

    Returns:
        The mean, float32, in the sample shape (over the field's per-sample conditions too, when it has them).
    """
    total = None
    with torch.no_grad():
        p = field.at(float(t_start))
        scale = field.schedule.prior_std(float(t_start))
        for k in range(0, n, batch):
            seeds = range(seed + k, seed + min(n, k + batch))
            x = noise_for(field, seeds) * scale
            rows = field.condition_rows     # per-sample conditions: the draws cycle through them
            at = field if rows is None else field.select(torch.arange(k, k + len(seeds)) % rows)
            D = at.denoise(x, p).double().sum(0)
            total = D if total is None else total + D
    return (total / n).float()
