"""The built-in tuners of `diffsolve tune`: amed, gits, grid and weights (see corrections.tuning; skip is in
corrections.skip_tuner, directions in corrections.pas_tuner, auto in corrections.auto).

    diffsolve tune amed --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out amed-ipndm.safetensors
    diffsolve tune gits --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out gits-ipndm.safetensors
    diffsolve tune grid --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out learned-ipndm.safetensors
    diffsolve tune weights --model mnist-unet --solver deis --nfe 5 --out weights-deis.safetensors

`amed`: `--solver amed` trains the AMED-Solver, any other base (ipndm, ipndm_v, dpmpp_2m, deis, dpm_solver_2, euler)
an AMED-Plugin predictor for it. `weights` learns a multistep rule's weight offsets together with its grid, for
`Sampler(model, "learned_multistep", base=..., coefficients=file)`. On a plain velocity field (the moons flows)
everything runs in the field's own time t, without AFS. Runs are seeded and reproducible on one machine and thread
count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffsolve.errors import InvalidArgument
from diffsolve.field import as_field
from diffsolve.grids import GRIDS
from diffsolve.corrections.coefficients import GRID_STARTS, learn_coefficients
from diffsolve.corrections.gits import gits_grid
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.corrections.io import to_amed_table
from diffsolve.corrections.teacher import field_of
from diffsolve.corrections.teacher_choice import choose_teacher
from diffsolve.corrections.train import train_amed
from diffsolve.corrections.tuning import (TuneContext, TuneSettings, check_count, check_one_of, check_rate,
                                          option, parse_float, parse_int, parse_names, reference_settings,
                                          register_tuner)

PLAIN_STARTS = ("time_uniform",)        # the starting grids a plain velocity field (no noise schedule) can take


def _check_starts(starts: tuple[str, ...]) -> None:
    bad = [v for v in starts if v not in GRIDS]
    if bad:
        raise InvalidArgument(f"--starts {','.join(starts)!r}: unknown grid {bad[0]!r}; allowed values: "
                              f"{', '.join(sorted(GRIDS))}")


@dataclass(frozen=True)
class GradientSettings(TuneSettings):
    """A tuner trained by Adam on minibatches: TuneSettings plus the training options.

    Attributes:
        epochs: Passes over the training trajectories (default 20).
        batch_size: Minibatch size (--batch-size, old --batch; default 32).
        lr: Adam's learning rate (default 0.05).
        starts: Grid names also fitted from (the lowest training loss is kept); empty: none.

    Raises:
        InvalidArgument: A field is invalid, or a start is not a registered grid (the message names the flag).
    """

    epochs: int = option(20, "epochs", parse=parse_int)
    batch_size: int = option(32, "minibatch size", aliases=("--batch",), parse=parse_int)
    lr: float = option(0.05, "Adam learning rate", parse=parse_float)
    starts: tuple[str, ...] = option((), "comma-separated grid names also fitted from (the lowest training loss "
                                     "is kept)", parse=parse_names)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("--epochs", self.epochs)
        if self.batch_size is not None:     # None: the tuner's own default (WeightsTuneSettings)
            check_count("--batch-size", self.batch_size)
        check_rate("--lr", self.lr)
        _check_starts(self.starts)


@dataclass(frozen=True)
class AMEDTuneSettings(GradientSettings):
    """Settings of `diffsolve tune amed`: GradientSettings with its own defaults, plus the predictor's options.

    Attributes:
        solver: "amed" (AMED-Solver, the default) or the AMED-Plugin base solver.
        samples: Training trajectories; None is 128 (64 for the --from-grid stage).
        epochs: Training epochs (default 10).
        lr: Adam's learning rate (default 5e-3).
        loss: "step" (step-wise, the default) or "endpoint".
        no_afs: No analytical first step (one more NFE).
        features: "auto" (default), "module", "denoised" or "none" (time-only).
        module: The submodule whose output feeds the predictor; None: the known bottleneck.
        from_grid: First learn 2(N-1)-step grids of the base with the data-mean AFS and start the predictor from
            them as per-step constants (how the shipped MNIST one was made).
        grid_epochs: Epochs of the --from-grid stage (default 8).
        grid_lr: Learning rate of the --from-grid stage (default 0.05).

    Raises:
        InvalidArgument: A field is invalid (the message names its flag).
    """
    solver: str = option("amed", "amed (AMED-Solver) or the AMED-Plugin base solver")
    samples: int | None = option(None, "training trajectories (default 128; 64 for the --from-grid stage)",
                                 aliases=("--n",), parse=parse_int)
    epochs: int = option(10, "epochs (default 10)", parse=parse_int)
    lr: float = option(5e-3, "Adam learning rate (default 5e-3)", parse=parse_float)
    loss: str = option("step", "step-wise (step) or endpoint loss")
    no_afs: bool = option(False, "no analytical first step (one more NFE)")
    features: str = option("auto", "auto, module, denoised or none (time-only)")
    module: str | None = option(None, "submodule whose output feeds the predictor")
    from_grid: bool = option(False, "first learn 2(N-1)-step grids of the base with the data-mean AFS and start the "
                             "predictor from them as per-step constants (how the shipped MNIST one was made)")
    grid_epochs: int = option(8, "--from-grid: epochs of the grid stage", parse=parse_int)
    grid_lr: float = option(0.05, "--from-grid: learning rate of the grid stage", parse=parse_float)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_one_of("--loss", self.loss, ("step", "endpoint"))
        check_one_of("--features", self.features, ("auto", "module", "denoised", "none"))
        check_count("--grid-epochs", self.grid_epochs)
        check_rate("--grid-lr", self.grid_lr)

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "amed-<solver>.safetensors".
        """
        return f"amed-{self.solver}.safetensors"


@dataclass(frozen=True)
class GITSTuneSettings(TuneSettings):
    """Settings of `diffsolve tune gits`: those of TuneSettings (samples: teacher trajectories, default 128)."""
    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "gits-<solver>.safetensors".
        """
        return f"gits-{self.solver}.safetensors"


@dataclass(frozen=True)
class GridTuneSettings(GradientSettings):
    """Settings of `diffsolve tune grid` (a grid learned by gradient): GradientSettings with its own sample count.

    Attributes:
        samples: Training trajectories (default 96).
    """
    samples: int = option(96, "training trajectories (default 96)", aliases=("--n",), parse=parse_int)

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "learned-<solver>.safetensors".
        """
        return f"learned-{self.solver}.safetensors"


@dataclass(frozen=True)
class WeightsTuneSettings(GradientSettings):
    """Settings of `diffsolve tune weights` (learned multistep weight offsets and their grid).

    Attributes:
        solver: The base rule: "deis" (default), "ipndm" or "ipndm_v".
        samples: Training trajectories; None: 64 on a Gaussian path, 128 on a plain velocity field.
        epochs: Epochs of the joint stage (default 30); `batch_size` its minibatch size (None: 8, 16 on a plain field).
        lr: Learning rate of the grid in the joint stage (default 0.02).
        weight_lr: Learning rate of the offsets (default 5e-3).
        grid_lr: Learning rate of the starting-grid stage (default 0.2).
        no_afs: No analytical first step (one more NFE).
        starts: The starting grids (default GRID_STARTS).

    Raises:
        InvalidArgument: A field is invalid (the message names its flag).
    """
    solver: str = option("deis", "base rule: deis, ipndm or ipndm_v")
    samples: int | None = option(None, "trajectories (default 64; 128 plain field)", aliases=("--n",), parse=parse_int)
    epochs: int = option(30, "epochs (default 30)", parse=parse_int)
    batch_size: int | None = option(None, "batch (default 8; 16 plain field)", aliases=("--batch",), parse=parse_int)
    lr: float = option(0.02, "learning rate of the grid in the joint stage (default 0.02)", parse=parse_float)
    weight_lr: float = option(5e-3, "learning rate of the offsets (default 5e-3)", parse=parse_float)
    grid_lr: float = option(0.2, "learning rate of the starting-grid stage (default 0.2)", parse=parse_float)
    no_afs: bool = option(False, "no analytical first step (one more NFE)")
    starts: tuple[str, ...] = option(GRID_STARTS, "comma-separated starting grids (default "
                                     f"{','.join(GRID_STARTS)})", parse=parse_names)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rate("--weight-lr", self.weight_lr)
        check_rate("--grid-lr", self.grid_lr)

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "weights-<solver>.safetensors".
        """
        return f"weights-{self.solver}.safetensors"


def teacher_of(model: Any, settings: TuneSettings, ctx: TuneContext) -> tuple[str, dict]:
    """The teacher mode and the keyword arguments that pass its settings on to a trainer.

    Args:
        model: The model or field (its sample shape chooses the teacher when --teacher is not given).
        settings: The tuner's settings (--teacher, --ref-rtol).
        ctx: What the caller knows about the model (its reference settings, whether it is image-shaped).

    Returns:
        (mode, keyword arguments): "fine" or "reference", and `teacher_options` for the reference teacher.
    """
    teacher = choose_teacher(field_of(model), settings.teacher, ctx.image)     # tune() has chosen it already
    if teacher != "reference":
        return teacher, {}
    return teacher, {"teacher_options": {"settings": reference_settings(settings, ctx)}}


def save_tuned(corr: Any, settings: TuneSettings, ctx: TuneContext, start: float) -> Path:
    """Write a trained correction to the settings' output file (the model's name in its meta) and log it.

    Args:
        corr: The correction (anything with `meta` and `save(path)`).
        settings: The tuner's settings (the output path).
        ctx: The model's name and the log.
        start: `time.perf_counter()` when tuning began (the logged seconds).

    Returns:
        The written file's path.
    """
    if ctx.model_name is not None:
        corr.meta["model"] = ctx.model_name
    path = corr.save(settings.out_path())
    if ctx.log:
        ctx.log(f"wrote {path} and {path.name}.json ({path.stat().st_size} bytes) in "
                f"{time.perf_counter() - start:.0f}s")
    return path


def tune_amed(model: Any, st: AMEDTuneSettings, ctx: TuneContext) -> Path:
    """The `amed` tuner: train an AMED predictor (after a learned-grid stage with --from-grid) and save it.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: --from-grid on a plain velocity field, or an option train_amed / learn_grid refuses.
    """
    start = time.perf_counter()
    teacher, teach = teacher_of(model, st, ctx)
    plain = not as_field(model).has_schedule      # a plain velocity field: native time, no AFS
    init = None
    if st.from_grid:
        if plain:
            raise InvalidArgument("--from-grid starts from the data-mean AFS, which a plain velocity field (schedule="
                                  "None) has not; train without --from-grid")
        g = learn_grid(model, base=st.solver, nfe=st.nfe, afs=True, n=64 if st.samples is None else st.samples,
                       batch_size=st.batch_size, epochs=st.grid_epochs, lr=st.grid_lr, seed=st.seed, teacher=teacher,
                       dtype=ctx.dtype, log=ctx.log, starts=st.starts, **teach)
        init = to_amed_table(g, model)
    corr = train_amed(model, base=st.solver, nfe=st.nfe, afs=not (st.no_afs or plain), loss=st.loss,
                      features=st.features, init=init, module=st.module,
                      n_train=128 if st.samples is None else st.samples, batch_size=st.batch_size, epochs=st.epochs,
                      lr=st.lr, seed=st.seed, teacher=teacher, dtype=ctx.dtype, log=ctx.log, **teach)
    return save_tuned(corr, st, ctx, start)


def tune_gits(model: Any, st: GITSTuneSettings, ctx: TuneContext) -> Path:
    """The `gits` tuner: GITS grids (gits_grid) for the settings' solver and NFEs, saved.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: An option gits_grid refuses.
    """
    start = time.perf_counter()
    teacher, teach = teacher_of(model, st, ctx)
    corr = gits_grid(model, base=st.solver, nfe=st.nfe, n=st.samples, seed=st.seed, teacher=teacher, dtype=ctx.dtype,
                     log=ctx.log, **teach)
    return save_tuned(corr, st, ctx, start)


def tune_grid(model: Any, st: GridTuneSettings, ctx: TuneContext) -> Path:
    """The `grid` tuner: grids learned by gradient (learn_grid), saved.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: An option learn_grid refuses.
    """
    start = time.perf_counter()
    teacher, teach = teacher_of(model, st, ctx)
    corr = learn_grid(model, base=st.solver, nfe=st.nfe, n=st.samples, batch_size=st.batch_size, epochs=st.epochs,
                      lr=st.lr, seed=st.seed, teacher=teacher, dtype=ctx.dtype, log=ctx.log, starts=st.starts,
                      **teach)
    return save_tuned(corr, st, ctx, start)


def tune_weights(model: Any, st: WeightsTuneSettings, ctx: TuneContext) -> Path:
    """The `weights` tuner: learned multistep weight offsets and their grids (learn_coefficients), saved.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: An option learn_coefficients refuses.
    """
    start = time.perf_counter()
    return save_tuned(weights_of(model, st, ctx), st, ctx, start)


def weights_of(model: Any, st: WeightsTuneSettings, ctx: TuneContext) -> Any:
    """Learned multistep weights as the settings ask (learn_coefficients), the frame taken from the model.

    On a plain velocity field the weights run in the field's own time without AFS, and starting grids that need a
    noise schedule (karras, logsnr_uniform, ...) are left out.

    Args:
        model: The model or field.
        st: The weights settings (or a settings class derived from them).
        ctx: What the caller knows about the model.

    Returns:
        (CoefficientCorrection): The learned weights and grids.

    Raises:
        InvalidArgument: An option learn_coefficients refuses.
    """
    teacher, teach = teacher_of(model, st, ctx)
    plain = not as_field(model).has_schedule
    starts = tuple(v for v in st.starts if v in PLAIN_STARTS) if plain else st.starts
    return learn_coefficients(model, base=st.solver, nfe=st.nfe, afs=False if st.no_afs else None, n=st.samples,
                              batch_size=st.batch_size, epochs=st.epochs, lr=st.lr, weight_lr=st.weight_lr,
                              seed=st.seed, teacher=teacher, dtype=ctx.dtype, log=ctx.log,
                              grid_options={"lr": st.grid_lr}, grid_starts=starts, **teach)


register_tuner("amed", AMEDTuneSettings, tune_amed, "train an AMED-Solver or AMED-Plugin predictor",
               auto={"solver": "deis", "samples": 48, "epochs": 12, "batch_size": 16})
register_tuner("gits", GITSTuneSettings, tune_gits, "a GITS grid (dynamic programming on teacher trajectories)")
register_tuner("grid", GridTuneSettings, tune_grid, "a grid learned by gradient (LD3-style)",
               auto={"solver": "deis", "samples": 48, "epochs": 16, "batch_size": 16, "lr": 0.1})
register_tuner("weights", WeightsTuneSettings, tune_weights, "learned multistep weight offsets and their grid",
               auto={"solver": "deis", "epochs": 24})     # samples, batches and starts: the library defaults
