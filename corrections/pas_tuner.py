"""`diffsolve tune directions`: learned weights (given with --from-weights, or learned first) and then PAS-style
direction corrections on them (corrections.pas), saved as one file for `Sampler(model, "pas", directions=file)`.

    diffsolve tune directions --model mnist-ddpm --solver deis --nfe 5 --out pas-deis.safetensors
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffsolve.errors import InvalidArgument
from diffsolve.corrections.io import CoefficientCorrection, as_coefficient_correction
from diffsolve.corrections.pas import DEFAULT_RANK, learn_directions
from diffsolve.corrections.teacher import field_of
from diffsolve.corrections.tuners import WeightsTuneSettings, save_tuned, teacher_of, weights_of
from diffsolve.corrections.tuning import TuneContext, check_count, check_rate, option, parse_float, parse_int, \
    register_tuner


@dataclass(frozen=True)
class DirectionsTuneSettings(WeightsTuneSettings):
    """Settings of `diffsolve tune directions`: the weights tuner's options (used when it learns the weights first)
    plus the directions' own.

    Attributes:
        samples: Training trajectories of the weights and the directions (default 128).
        batch_size: Minibatch size (default 16).
        from_weights: A learned-weights file to build on (its grids for --nfe); None learns the weights first.
        rank: Basis vectors per step (default 4).
        directions_epochs: Epochs of the directions (default 20).
        directions_lr: Learning rate of the directions (default 3e-3).

    Raises:
        InvalidArgument: A field is invalid (the message names its flag).
    """
    samples: int = option(128, "training trajectories (default 128)", aliases=("--n",), parse=parse_int)
    batch_size: int = option(16, "minibatch size (default 16)", aliases=("--batch",), parse=parse_int)
    from_weights: str | None = option(None, "learned weights file to build on (default: learn them first)")
    rank: int = option(DEFAULT_RANK, f"basis vectors per step (default {DEFAULT_RANK})", parse=parse_int)
    directions_epochs: int = option(20, "epochs of the directions (default 20)", parse=parse_int)
    directions_lr: float = option(3e-3, "learning rate of the directions (default 3e-3)", parse=parse_float)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("--rank", self.rank)
        check_count("--directions-epochs", self.directions_epochs)
        check_rate("--directions-lr", self.directions_lr)

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "pas-<solver>.safetensors".
        """
        return f"pas-{self.solver}.safetensors"


def _weights_for(model: Any, st: DirectionsTuneSettings, ctx: TuneContext) -> CoefficientCorrection:
    """The learned weights at st.nfe: the grids of --from-weights (refused when one is missing), else learned."""
    if st.from_weights is None:
        return weights_of(model, st, ctx)
    corr = as_coefficient_correction(st.from_weights)
    corr.check_field(field_of(model))
    by_nfe = {corr.nfe_for(k): k for k in corr.grids}
    missing = [k for k in st.nfe if k not in by_nfe]
    if missing:
        raise InvalidArgument(f"--from-weights {st.from_weights}: no grid for NFE {missing}; it holds NFE "
                              f"{sorted(by_nfe)}")
    keep = [by_nfe[k] for k in st.nfe]
    return replace(corr, grids={k: corr.grids[k] for k in keep}, weights={k: corr.weights[k] for k in keep})


def tune_directions(model: Any, st: DirectionsTuneSettings, ctx: TuneContext) -> Path:
    """The `directions` tuner: learned weights (given or learned first), then their direction corrections, saved.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: An option the training refuses, or --from-weights lacks an NFE of --nfe.
    """
    start = time.perf_counter()
    teacher, teach = teacher_of(model, st, ctx)
    weights = _weights_for(model, st, ctx)
    corr = learn_directions(model, weights, rank=st.rank, n=st.samples, batch_size=st.batch_size,
                            epochs=st.directions_epochs, lr=st.directions_lr, seed=st.seed, teacher=teacher,
                            dtype=ctx.dtype, log=ctx.log, **teach)
    return save_tuned(corr, st, ctx, start)


register_tuner("directions", DirectionsTuneSettings, tune_directions,
               "PAS-style direction corrections on learned multistep weights (solver 'pas')",
               auto={"solver": "deis", "samples": 64, "epochs": 24, "batch_size": 8, "directions_epochs": 12,
                     "from_weights": "candidate:weights"})     # builds on the weights candidate's file
