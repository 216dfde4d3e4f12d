"""The built-in tuners of `diffsolve tune`: amed, gits, grid, weights and skip (see corrections.tuning).

    diffsolve tune amed --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out amed-ipndm.safetensors
    diffsolve tune gits --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out gits-ipndm.safetensors
    diffsolve tune grid --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out learned-ipndm.safetensors
    diffsolve tune weights --model mnist-unet --solver deis --nfe 5 --out weights-deis.safetensors
    diffsolve tune skip --model mnist-unet-deep --solver dpmpp_2m --nfe 5 --out skip-dpmpp_2m.json

`amed`: `--solver amed` trains the AMED-Solver, any other base (ipndm, ipndm_v, dpmpp_2m, deis, dpm_solver_2, euler)
an AMED-Plugin predictor for it. `weights` learns a multistep rule's weight offsets together with its grid, for
`Sampler(model, "learned_multistep", base=..., coefficients=file)`. On a plain velocity field (the moons flows)
everything runs in the field's own time t, without AFS. `skip` searches Skip-Tuning's rho_bottom (golden section)
for one solver and NFE, minimising the FD of the built-in classifier's features (MNIST-shaped models) or
`--metric module:attr` on the tuning seeds, then scores it on other seeds. Runs are seeded and reproducible.
"""
from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.field import as_field, model_spec_of
from diffsolve.grids import GRIDS
from diffsolve.models.quality import fd_metric
from diffsolve.corrections.coefficients import GRID_STARTS, learn_coefficients
from diffsolve.corrections.grid_search import gits_grid, learn_grid
from diffsolve.corrections.io import to_amed_table
from diffsolve.corrections.skip import save_settings, tune_skip
from diffsolve.corrections.train import train_amed
from diffsolve.corrections.tuning import (TuneContext, TuneSettings, check_count, check_one_of, check_rate,
                                          option, parse_float, parse_int, parse_names, parse_pair, register_tuner)

SKIP_TUNE_SEED, SKIP_EVAL_SEED = 7_000_000, 9_000_000     # tuning and held-out noise of `tune skip`: disjoint


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


def teacher_of(settings: TuneSettings, ctx: TuneContext) -> tuple[str, dict]:
    """The teacher mode and the keyword arguments that pass its settings on to a trainer.

    Args:
        settings: The tuner's settings (--teacher, --ref-rtol).
        ctx: What the caller knows about the model (its reference settings, whether it is image-shaped).

    Returns:
        (mode, keyword arguments): "fine" or "reference", and `teacher_options` for the reference teacher.
    """
    teacher = settings.teacher or ("fine" if ctx.image else "reference")       # tune() chose it by the model's shape
    if teacher != "reference":
        return teacher, {}
    ref = (ReferenceSettings(method="dopri5", rtol=settings.ref_rtol, atol=settings.ref_rtol)
           if settings.ref_rtol is not None else ctx.reference)
    return teacher, {"teacher_options": {"settings": ref}}


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
    teacher, teach = teacher_of(st, ctx)
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
    teacher, teach = teacher_of(st, ctx)
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
    teacher, teach = teacher_of(st, ctx)
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
    teacher, teach = teacher_of(st, ctx)
    # a plain velocity field: native time, no AFS, and the default starts (named by a noise schedule) left out
    plain = not as_field(model).has_schedule
    corr = learn_coefficients(model, base=st.solver, nfe=st.nfe, afs=None if not st.no_afs else False, n=st.samples,
                              batch_size=st.batch_size, epochs=st.epochs, lr=st.lr, weight_lr=st.weight_lr,
                              seed=st.seed, teacher=teacher, dtype=ctx.dtype, log=ctx.log,
                              grid_options={"lr": st.grid_lr},
                              grid_starts=None if plain and st.starts == GRID_STARTS else st.starts, **teach)
    return save_tuned(corr, st, ctx, start)


# ------------------------------------------------------------------------------------------------
# Skip-Tuning
# ------------------------------------------------------------------------------------------------
def parse_ranges(text: str, flag: str) -> tuple[tuple[float, float] | None, ...]:
    """'lo,hi;lo,hi' noise ranges; 'all' for everywhere (None).

    Args:
        text: The text given.
        flag: The option string, named in the error.

    Returns:
        (tuple): One (lo, hi) pair or None per range.

    Raises:
        InvalidArgument: A range is not two numbers.
    """
    return tuple(None if c.strip() == "all" else parse_pair(c, flag) for c in text.split(";") if c.strip())


@dataclass(frozen=True)
class SkipTuneSettings(TuneSettings):
    """Settings of `diffsolve tune skip` (Skip-Tuning's rho for one solver and one NFE); the output is a .json file.

    Attributes:
        solver: The solver whose runs are tuned (default dpmpp_2m).
        samples: Tuning samples (default 1000).
        eval_samples: Held-out samples for the final score (--eval-samples, old --eval-n; default 1000).
        rho_range: Search interval of rho_bottom (default 0.5, 1.0).
        rho_top: rho of the highest-resolution skip (default 1).
        active: EDM noise levels (lo, hi) where the scaling applies; None is everywhere.
        tune_rho_top: Then search rho_top between the rho_bottom found and 1.
        active_choices: Noise ranges (None: everywhere) to try with the rho found; the best on the tuning noise is kept.
        evaluations: Metric evaluations of the search (default 8).
        grid: The solver's grid; None is the model's.
        metric: 'module:attr', a callable metric(samples) -> float to minimise; None is the built-in classifier's FD
            (MNIST-shaped models only).

    Raises:
        InvalidArgument: A field is invalid, or more than one NFE is given.
    """
    solver: str = option("dpmpp_2m", "the solver whose runs are tuned (default dpmpp_2m)")
    samples: int = option(1000, "tuning samples (default 1000)", aliases=("--n",), parse=parse_int)
    eval_samples: int = option(1000, "held-out samples for the final score (default 1000)", aliases=("--eval-n",),
                               parse=parse_int)
    rho_range: tuple[float, float] = option((0.5, 1.0), "search interval of rho_bottom (default 0.5,1.0)",
                                            parse=parse_pair)
    rho_top: float = option(1.0, "rho of the highest-resolution skip (default 1)", parse=parse_float)
    active: tuple[float, float] | None = option(None, "'lo,hi' EDM noise levels where the scaling applies "
                                                "(default: everywhere)", parse=parse_pair)
    tune_rho_top: bool = option(False, "then search rho_top between the rho_bottom found and 1")
    active_choices: tuple = option((), "noise ranges to try with the rho found, 'lo,hi;lo,hi' (EDM levels; 'all' "
                                   "for everywhere); the best on the tuning noise is kept", parse=parse_ranges)
    evaluations: int = option(8, "metric evaluations of the search (default 8)", parse=parse_int)
    grid: str | None = option(None, "the solver's grid (default: the model's)")
    metric: str | None = option(None, "'module:attr', a callable metric(samples) -> float to minimise (default: the "
                                "built-in classifier's FD for MNIST-shaped models)")
    suffix = ".json"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("--eval-samples", self.eval_samples)
        check_count("--evaluations", self.evaluations)
        check_rate("--rho-top", self.rho_top)
        if len(self.nfe) != 1:
            raise InvalidArgument(f"--nfe {','.join(map(str, self.nfe))!r}: skip tuning takes one NFE (rho is tuned "
                                  "for one budget), e.g. --nfe 5")

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "skip-<solver>-nfe<N>.json".
        """
        return f"skip-{self.solver}-nfe{self.nfe[0]}.json"


def _metric(spec: str | None, model: Any, ctx: TuneContext):
    if spec is None:
        ms = model_spec_of(model)
        if ms is None or tuple(ms.sample_shape or ()) != (1, 28, 28):
            raise InvalidArgument("--metric: this model's samples are not MNIST digits, so the built-in classifier's "
                                  "FD does not apply; name a callable metric(samples) -> float as 'module:attr'")
        return fd_metric(ms.data_range or (-1.0, 1.0)), "FD (built-in classifier, held-out real digits)"
    if ctx.import_object is None:
        raise InvalidArgument("--metric 'module:attr' needs a context that imports objects")
    obj = ctx.import_object(spec, "--metric")
    what = (f"{'a built-in function' if inspect.isbuiltin(obj) else 'a ' + type(obj).__name__} "
            f"({getattr(obj, '__module__', None)}.{obj.__qualname__})" if hasattr(obj, "__qualname__")
            else f"a {type(obj).__name__} ({obj!r:.40})")
    need = "name a callable metric(samples) -> float (lower is better)"
    if not callable(obj) or isinstance(obj, type):
        raise InvalidArgument(f"--metric {spec!r} is {what}, not a metric: {need}")
    try:
        inspect.signature(obj).bind(None)
    except TypeError:
        raise InvalidArgument(f"--metric {spec!r} is {what} that does not take one samples argument: {need}"
                              ) from None
    except ValueError:          # no signature to read (some extension functions): judged by its first result
        pass

    def checked(samples: torch.Tensor) -> float:
        value = obj(samples)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise InvalidArgument(f"--metric {spec!r} returned {type(value).__name__}, not a number: {need}"
                                  ) from None
    return checked, spec


def run_skip(model: Any, st: SkipTuneSettings, ctx: TuneContext) -> Path:
    """The `skip` tuner: search rho_bottom on the tuning seeds, score it on held-out seeds, save the settings as JSON.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model (its import_object reads --metric).

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: More than one NFE, a --metric that is not a callable metric(samples) -> float (or the
            default FD on a model whose samples are not MNIST digits), or an option tune_skip refuses.
    """
    start = time.perf_counter()
    if len(st.nfe) != 1:
        raise InvalidArgument(f"--nfe {','.join(map(str, st.nfe))!r}: skip tuning takes one NFE (rho is tuned for "
                              "one budget)")
    nfe, n, log = st.nfe[0], st.samples, ctx.log or (lambda s: None)
    metric, metric_name = _metric(st.metric, model, ctx)
    lo, hi = st.rho_range
    log(f"skip tuning {ctx.model_name}: {st.solver} at NFE {nfe}, rho_bottom in [{lo}, {hi}], metric {metric_name}, "
        f"{n} tuning samples, {st.eval_samples} held-out")
    found = tune_skip(model, st.solver, nfe, metric, rho_range=(lo, hi), rho_top=st.rho_top, active=st.active,
                      evaluations=st.evaluations,
                      tune_seeds=range(SKIP_TUNE_SEED + st.seed * n, SKIP_TUNE_SEED + (st.seed + 1) * n),
                      eval_seeds=range(SKIP_EVAL_SEED, SKIP_EVAL_SEED + st.eval_samples),
                      solver_options={"grid": st.grid} if st.grid else None, progress=log,
                      tune_rho_top=st.tune_rho_top, active_choices=list(st.active_choices))
    seconds = time.perf_counter() - start
    found = dataclasses.replace(found, metric={**found.metric, "name": metric_name, "model_name": ctx.model_name,
                                               "seconds": round(seconds, 1)})
    path = save_settings(found, st.out_path())
    log(f"wrote {path}: rho_bottom={found.rho_bottom:.4f}, held-out {found.metric['held_out']:.4g} "
        f"(untuned {found.metric['held_out_untuned']:.4g}) in {seconds:.0f}s")
    return path


# `auto=`: the light recipes `diffsolve tune auto` tries (its deadline stops their epochs early when time is short)
register_tuner("amed", AMEDTuneSettings, tune_amed, "train an AMED-Solver or AMED-Plugin predictor",
               auto={"solver": "deis", "samples": 48, "epochs": 12, "batch_size": 16})
register_tuner("gits", GITSTuneSettings, tune_gits, "a GITS grid (dynamic programming on teacher trajectories)")
register_tuner("grid", GridTuneSettings, tune_grid, "a grid learned by gradient (LD3-style)",
               auto={"solver": "deis", "samples": 48, "epochs": 16, "batch_size": 16, "lr": 0.1})
register_tuner("weights", WeightsTuneSettings, tune_weights, "learned multistep weight offsets and their grid",
               auto={"solver": "deis", "samples": 48, "epochs": 24, "batch_size": 16, "starts": ("karras",)})
register_tuner("skip", SkipTuneSettings, run_skip, "Skip-Tuning's rho for one solver and NFE", uses_teacher=False)
