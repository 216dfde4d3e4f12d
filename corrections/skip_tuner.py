"""`diffsolve tune skip`: Skip-Tuning's rho_bottom for one solver and NFE (golden-section search of a metric on the
tuning seeds, scored on held-out seeds), its settings and the metric it minimises.

    diffsolve tune skip --model mnist-unet-deep --solver dpmpp_2m --nfe 5 --out skip-dpmpp_2m.json
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
from diffsolve.field import model_spec_of
from diffsolve.models.quality import fd_metric
from diffsolve.corrections.skip import save_settings, tune_skip
from diffsolve.corrections.tuning import (TuneContext, TuneSettings, check_count, check_rate, option, parse_float,
                                          parse_int, parse_pair, register_tuner)

SKIP_TUNE_SEED, SKIP_EVAL_SEED = 7_000_000, 9_000_000     # tuning and held-out noise of `tune skip`: disjoint


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


register_tuner("skip", SkipTuneSettings, run_skip, "Skip-Tuning's rho for one solver and NFE", uses_teacher=False)
