"""`DiffsolveScheduler(correction=path)`: a correction file `diffsolve tune` wrote, run inside a diffusers pipeline.

The scheduler sees the network only through the outputs a pipeline hands it, so it cannot check the model
identity the file records (Sampler(model, correction=...) does): the file is used as it is, on the scheduler's own
field (the config's schedule and prediction), exactly as `Sampler(unet, scheduler=config, correction=file)` runs
it. `num_inference_steps` must be one of the step counts the file was tuned for; a tune-auto file picks the entry of
that step count, solver included.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.sampler import Sampler
from diffsolve.solvers.base import Solver
from diffsolve.corrections import AMEDCorrection, AutoCorrection, load_correction


def without_identity(corr: Any) -> Any:
    """A copy of a correction that fits any field (its model identity dropped; entries of a tune-auto file too).

    Args:
        corr: A correction object.

    Returns:
        The copy (an object without an identity is returned as it is).
    """
    if isinstance(corr, AutoCorrection):
        return AutoCorrection({n: without_identity(e) for n, e in corr.entries.items()}, None, dict(corr.meta))
    if dataclasses.is_dataclass(corr) and any(f.name == "identity" for f in dataclasses.fields(corr)):
        return dataclasses.replace(corr, identity=None)
    return corr


def tuned_sampler(field: Any, correction: Any) -> Sampler:
    """A Sampler on the scheduler's field that samples `correction` (a file's path or a correction object).

    Args:
        field: The scheduler's field.
        correction: The correction.

    Returns:
        The Sampler; its `tuned` holds the budgets.

    Raises:
        InvalidArgument: Not a correction file or object, or an AMED network predictor (not a time table).
    """
    corr = load_correction(correction) if isinstance(correction, (str, Path)) else correction
    for entry in (corr.entries.values() if isinstance(corr, AutoCorrection) else [corr]):
        if isinstance(entry, AMEDCorrection) and not entry.is_table:
            raise InvalidArgument("correction=: an AMED network predictor places each step's intermediate time per "
                                  "sample, but a pipeline lists every timestep before its loop; export it as a time "
                                  "table (AMEDCorrection.to_table(schedule), after select_steps(n)) and save that")
    return Sampler(field, correction=without_identity(corr), progress=False)


def corrected_times(tuned: Sampler, steps: int | None, custom: bool) -> tuple[Solver, torch.Tensor]:
    """The solver and grid of the correction's `steps`-step budget.

    Args:
        tuned: The Sampler of tuned_sampler.
        steps: num_inference_steps.
        custom: Whether timesteps=, sigmas= or mu= were given (refused: the correction fixes the grid).

    Returns:
        (the solver, the grid of times).

    Raises:
        InvalidArgument: custom timesteps, or a step count the file does not hold (those it holds are named).
    """
    if custom:
        raise InvalidArgument("timesteps= / sigmas= / mu= with correction=: the correction fixes its grid; pass "
                              "num_inference_steps")
    sampler, k = tuned.tuned.choose(tuned, steps, None)
    return sampler.solver, sampler.times(k)
