"""Skip-Tuning: the encoder-to-decoder skip features of a UNet scaled by rho < 1 at sampling time (Ma et al., ICML
2024, "The Surprising Effectiveness of Skip-Tuning in Diffusion Sampling").

`skip_tuned(model, rho_bottom=0.8, rho_top=1.0)` scales the skip of depth level k (0 = highest resolution) by
rho_k, linear in depth from rho_top to rho_bottom. It works on the built-in MNIST UNet (its `skip_scale`
argument), on diffusers' `UNet2DModel` / `UNet2DConditionModel` (forward pre-hooks on the up blocks that scale the
residual tuples they receive), and on any other `nn.Module` whose skip features you name (`outputs_of=`: modules
whose outputs are skip features; `inputs_of=`: modules whose first input is one). The result is a context manager
(`with skip_tuned(unet): pipe(...)`: the calls the entering thread makes inside the block are scaled, also up to an
exception) and, for a diffsolve field or a model that declares its spec, a field wrapper that composes with every
other wrapper and scales only during its own calls. The network itself is never changed: hooks installed once read
the factors per call and per thread, so other threads, other samplers and plain callers of the same network see it
unscaled, and contexts may overlap and exit in any order. `active=(s_lo, s_hi)` limits the scaling to EDM noise
levels in that range.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.checks import check_writable
from diffsolve.corrections.skip_hooks import SkipTuned, check_skip_settings
from diffsolve.errors import InvalidArgument, check_float
from diffsolve.files import atomic_write_bytes
from diffsolve.sampler import Sampler, register_field_correction
from diffsolve.field import EvalPoint, Field, FieldOutput, FieldWrapper, VectorField, model_identity, model_spec_of


@dataclass(frozen=True)
class SkipSettings:
    """What a tuned run uses; saved as JSON beside the model's identity.

    Attributes:
        rho_bottom: The factor on the deepest skip level.
        rho_top: The factor on the highest-resolution skip level.
        active: EDM noise levels (s_lo, s_hi) where the scaling applies; None is everywhere.
        model: The network's identity, checked on load; None skips the check.
        solver: The solver it was tuned with.
        nfe: The model-call budget it was tuned at.
        metric: What the tuner measured (tuning and held-out noise).
    """

    rho_bottom: float = 0.8
    rho_top: float = 1.0
    active: tuple[float, float] | None = None       # EDM noise levels where the scaling applies (None: everywhere)
    model: str | None = None                        # the network's identity, checked on load
    solver: str | None = None
    nfe: int | None = None
    metric: dict = dc_field(default_factory=dict)   # what the tuner measured (tuning and held-out noise)


class SkipTunedField(FieldWrapper):
    """The scaling as a field wrapper: the tuning is active during this wrapper's own calls only.

    Args:
        field: the field whose network is scaled.
        tuning: the scaling of that field's network.
    """

    stacks_on_corrections = True     # Skip-Tuning is applied on top of any solver, a learned one too

    def __init__(self, field: Field, tuning: SkipTuned):
        super().__init__(field)
        self.tuning = tuning

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner field's output, the scaling entered where it applies.

        Args:
            x: the state.
            p: the evaluation point.
            kind: what to return, as `Field.evaluate` takes it.
            **kwargs: passed on to the inner field.

        Returns:
            The inner field's output.
        """
        if not self.tuning.applies_at(p):
            return self.inner.evaluate(x, p, kind, **kwargs)
        with self.tuning:
            return self.inner.evaluate(x, p, kind, **kwargs)

    def __enter__(self) -> "SkipTunedField":
        self.tuning.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.tuning.__exit__(*exc)

    def own_identity(self) -> str | None:
        """This wrapper's part of the field identity.

        Returns:
            The factors and the active range, as text.
        """
        t = self.tuning
        return f"skip={[round(v, 12) for v in t.scales]}, active={t.active}"


def _network(model: Any) -> Any:
    while isinstance(model, FieldWrapper):
        model = model.inner
    net = model.model if isinstance(model, VectorField) else model
    return getattr(net, "inner", net) if not hasattr(net, "up_blocks") and hasattr(net, "inner") else net


def skip_tuned(model: Any, rho_bottom: float = 0.8, rho_top: float = 1.0, *, rho: Sequence[float] | None = None,
               outputs_of: Sequence[str] | None = None, inputs_of: Sequence[str] | None = None,
               active: tuple[float, float] | None = None, settings: "SkipSettings | str | Path | None" = None):
    """Skip-Tuning of a network (Ma et al. 2024): a context manager, and a field wrapper for fields and models that
    declare their spec.

    Args:
        model: a diffsolve field, a model that declares its spec, or any torch network.
        rho_bottom: the factor on the deepest skip level.
        rho_top: the factor on the highest-resolution skip level.
        rho: one factor per skip level (top to bottom) instead of the linear `rho_top` .. `rho_bottom`.
        outputs_of: names of the modules whose outputs are skip features (a network diffsolve does not know).
        inputs_of: names of the modules whose first input is a skip feature (instead of `outputs_of`).
        active: EDM noise levels (s_lo, s_hi) where the scaling applies; None is everywhere.
        settings: a tuner's result (a SkipSettings or its JSON file), which replaces the three settings above.

    Returns:
        (SkipTunedField | SkipTuned): A field wrapper for a field or a model with a spec, else the context manager.

    Raises:
        InvalidArgument: The settings are invalid or were tuned on another model, or as SkipTuned.
    """
    if settings is not None:
        if not isinstance(settings, (SkipSettings, str, Path)):
            raise InvalidArgument(f"settings={settings!r}: give a SkipSettings or the path of the JSON file that "
                                  "`diffsolve tune skip` writes")
        s = load_settings(settings) if not isinstance(settings, SkipSettings) else settings
        ident = model_identity(_network(model))
        if s.model is not None and ident is not None and s.model != ident:
            raise InvalidArgument(f"these skip settings were tuned on {s.model[:60]}..., not on this model")
        rho_bottom, rho_top, active = s.rho_bottom, s.rho_top, s.active
    net = _network(model)
    tuning = SkipTuned(net, rho_bottom, rho_top, rho=rho, outputs_of=outputs_of, inputs_of=inputs_of, active=active)
    if isinstance(model, Field):
        return SkipTunedField(model, tuning)
    if model_spec_of(model) is not None:
        return SkipTunedField(VectorField(model), tuning)
    return tuning


# ------------------------------------------------------------------------------------------------
# Settings files and the tuner
# ------------------------------------------------------------------------------------------------
def save_settings(settings: SkipSettings, path: str | Path) -> Path:
    """Write the settings as JSON: the folder checked first, a temp file in it, then an atomic rename.

    Args:
        settings: the settings to write.
        path: the JSON file to write.

    Returns:
        The path written.

    Raises:
        InvalidArgument: `settings` is not a SkipSettings, or the folder is not writable.
    """
    if not isinstance(settings, SkipSettings):
        raise InvalidArgument(f"settings={type(settings).__name__}: give a SkipSettings")
    path = Path(path)
    check_writable(path.parent, "path")
    atomic_write_bytes(path, (json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n").encode())
    return path


def _optional(data: dict, key: str, kind: type, where: Path) -> Any:
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise InvalidArgument(f"{where}: {key}={value!r} must be a {kind.__name__} or null")
    return value


def load_settings(path: str | Path) -> SkipSettings:
    """Settings written by `save_settings` or `diffsolve tune skip`, each field checked with its type.

    Args:
        path: the JSON file.

    Returns:
        The settings.

    Raises:
        InvalidArgument: The file cannot be read, is not a settings file, or holds a malformed field.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{path}: not a skip-tuning settings file ({e})") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: not a skip-tuning settings file (it holds a {type(data).__name__}, not an "
                              "object with rho_bottom, rho_top, active, model)")
    missing = [k for k in ("rho_bottom", "rho_top") if k not in data]
    if missing:
        raise InvalidArgument(f"{path}: not a skip-tuning settings file (missing {missing})")
    active = data.get("active")
    if active is not None and not isinstance(active, list):
        raise InvalidArgument(f"{path}: active={active!r} must be a pair [s_lo, s_hi] or null")
    rb, rt, active = check_skip_settings(data["rho_bottom"], data["rho_top"], active)
    metric = data.get("metric", {})
    if not isinstance(metric, dict):
        raise InvalidArgument(f"{path}: metric={metric!r} must be an object")
    nfe = _optional(data, "nfe", int, path)
    return SkipSettings(rho_bottom=rb, rho_top=rt, active=active, model=_optional(data, "model", str, path),
                        solver=_optional(data, "solver", str, path), nfe=nfe, metric=dict(metric))


def golden_section(f: Callable[[float], float], lo: float, hi: float, evaluations: int = 10,
                   report: Callable[[float, float], None] | None = None) -> tuple[float, float, list]:
    """Minimise a unimodal function on an interval by golden-section search (Kiefer 1953).

    Args:
        f: the function to minimise.
        lo: the interval's lower end.
        hi: the interval's upper end.
        evaluations: how many times f is called.
        report: called as `report(x, f(x))` after each evaluation.

    Returns:
        (best x, its f, the history of (x, f(x)) in call order).
    """
    g = (math.sqrt(5.0) - 1.0) / 2.0
    history = []

    def call(v: float) -> float:
        y = float(f(v))
        history.append((v, y))
        if report is not None:
            report(v, y)
        return y

    a, b = float(lo), float(hi)
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = call(c), call(d)
    for _ in range(max(0, evaluations - 2)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = call(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = call(d)
    best = min(history, key=lambda h: h[1])
    return best[0], best[1], history


def skip_samples(model: Any, solver: str, nfe: int, seeds: Sequence[int], rho_bottom: float = 1.0,
                 rho_top: float = 1.0, *, active: tuple[float, float] | None = None,
                 solver_options: Mapping[str, Any] | None = None, skip_options: Mapping[str, Any] | None = None,
                 **run_kwargs: Any) -> torch.Tensor:
    """Samples from per-seed noise with the skips scaled (rho 1 at both ends: the bare model).

    Args:
        model: the field or model sampled.
        solver: the solver name.
        nfe: the model-call budget.
        seeds: one noise seed per sample.
        rho_bottom: the factor on the deepest skip level.
        rho_top: the factor on the highest-resolution skip level.
        active: EDM noise levels where the scaling applies; None is everywhere.
        solver_options: passed to the Sampler.
        skip_options: passed to `skip_tuned`.
        **run_kwargs: passed to `Sampler.run`.

    Returns:
        The samples, one per seed.
    """
    field = skip_tuned(model, rho_bottom, rho_top, active=active, **dict(skip_options or {})) \
        if rho_bottom != 1.0 or rho_top != 1.0 else (model if isinstance(model, Field) else VectorField(model))
    s = Sampler(field, solver, progress=False, **dict(solver_options or {}))
    return s.run(nfe=nfe, seed=[int(v) for v in seeds], **run_kwargs).samples


def search_rho(model: Any, solver: str, nfe: int, metric: Callable[[torch.Tensor], float], *,
               tune_seeds: Sequence[int], rho_range: tuple[float, float] = (0.5, 1.0), rho_top: float = 1.0,
               evaluations: int = 8, progress: Callable[[str], None] | None = print,
               **sample_options: Any) -> tuple[float, float, float, list]:
    """Golden-section search of rho_bottom on the tuning noise only; rho_bottom = 1 wins when no scaling beats the
    bare model.

    Args:
        model: the field or model sampled.
        solver: the solver name.
        nfe: the model-call budget.
        metric: lower is better, computed on a batch of samples.
        tune_seeds: the tuning noise seeds.
        rho_range: the interval of rho_bottom searched.
        rho_top: the factor on the highest-resolution skip level.
        evaluations: how many values of rho_bottom are tried.
        progress: called with a line per evaluation; None is silent.
        **sample_options: passed to `skip_samples`.

    Returns:
        (best rho_bottom, its metric, the untuned metric, the history of (rho_bottom, metric)).
    """
    say = progress or (lambda _: None)
    tune = [int(v) for v in tune_seeds]
    best, best_value, history = golden_section(
        lambda r: metric(skip_samples(model, solver, nfe, tune, r, rho_top, **sample_options)), *rho_range,
        evaluations=evaluations, report=lambda r, y: say(f"skip tuning: rho_bottom={r:.4f} metric={y:.6g} "
                                                         "(tuning noise)"))
    untuned = float(metric(skip_samples(model, solver, nfe, tune, 1.0, 1.0, **sample_options)))
    if untuned < best_value:
        best, best_value = 1.0, untuned
    return best, best_value, untuned, history


def _refine(model: Any, solver: str, nfe: int, metric: Callable[[torch.Tensor], float], tune: list[int],
            best: float, best_value: float, rho_top: float, options: dict, history: list, *, evaluations: int,
            tune_rho_top: bool, active_choices: Sequence, say: Callable[[str], None]) -> tuple[float, float]:
    """After rho_bottom: rho_top by golden section between rho_bottom and 1 (when asked), then each active range,
    each kept only where it beats the best tuning metric so far. Appends to `history` and sets options['active'];
    returns (best tuning metric, rho_top)."""
    if tune_rho_top:
        top, value, more = golden_section(
            lambda r: metric(skip_samples(model, solver, nfe, tune, best, r, **options)), best, 1.0,
            evaluations=max(3, evaluations // 2),
            report=lambda r, y: say(f"skip tuning: rho_top={r:.4f} metric={y:.6g} (tuning noise)"))
        if value < best_value:
            best_value, rho_top = value, top
        history += [("rho_top", *h) for h in more]
    for act in active_choices:
        check_skip_settings(best, rho_top, act)
        value = float(metric(skip_samples(model, solver, nfe, tune, best, rho_top, **{**options, "active": act})))
        say(f"skip tuning: active={act} metric={value:.6g} (tuning noise)")
        history.append(("active", list(act) if act is not None else None, value))
        if value < best_value:
            best_value = value
            options["active"] = act
    return best_value, rho_top


def tune_skip(model: Any, solver: str, nfe: int, metric: Callable[[torch.Tensor], float], *,
              tune_seeds: Sequence[int], eval_seeds: Sequence[int], rho_range: tuple[float, float] = (0.5, 1.0),
              rho_top: float = 1.0, active: tuple[float, float] | None = None, evaluations: int = 8,
              solver_options: Mapping[str, Any] | None = None, skip_options: Mapping[str, Any] | None = None,
              progress: Callable[[str], None] | None = print, tune_rho_top: bool = False,
              active_choices: Sequence[tuple[float, float] | None] = (), **run_kwargs: Any) -> SkipSettings:
    """Search rho_bottom minimising a metric on the tuning noise, then score the choice and the untuned model on
    held-out noise.

    Args:
        model: the field or model sampled.
        solver: the solver name.
        nfe: the model-call budget.
        metric: lower is better, computed on a batch of samples.
        tune_seeds: the tuning noise seeds.
        eval_seeds: the held-out noise seeds (must not overlap `tune_seeds`).
        rho_range: the interval of rho_bottom searched by golden section (0 < lo < hi).
        rho_top: the factor on the highest-resolution skip level.
        active: EDM noise levels where the scaling applies; None is everywhere.
        evaluations: how many values of rho_bottom are tried.
        solver_options: passed to the Sampler.
        skip_options: passed to `skip_tuned` (outputs_of= / inputs_of= for a network diffsolve does not know).
        progress: called with a line per evaluation; None is silent.
        tune_rho_top: then also search rho_top between rho_bottom and 1.
        active_choices: noise ranges (EDM levels, or None for everywhere) tried with the rho found; the best on
            the tuning noise is kept.
        **run_kwargs: passed to `Sampler.run`.

    Returns:
        The chosen settings, with the tuning and held-out metrics (tuned and untuned) and the search history.

    Raises:
        InvalidArgument: A seed list is empty, they overlap, or `rho_range` is not 0 < lo < hi.
    """
    tune, held = [int(s) for s in tune_seeds], [int(s) for s in eval_seeds]
    if not tune or not held:
        raise InvalidArgument("tune_seeds= and eval_seeds= must both name seeds")
    if set(tune) & set(held):
        raise InvalidArgument("eval_seeds= overlaps tune_seeds=: a metric computed on the tuning noise would "
                              "reward overfitting to it; score on noise the tuner never saw")
    lo, hi = (check_float("rho_range[0]", rho_range[0], positive=True),
              check_float("rho_range[1]", rho_range[1], positive=True))
    if not hi > lo:
        raise InvalidArgument(f"rho_range={tuple(rho_range)!r}: need lo < hi")
    options = dict(active=active, solver_options=solver_options, skip_options=skip_options, **run_kwargs)
    best, best_value, untuned_tune, history = search_rho(
        model, solver, nfe, metric, tune_seeds=tune, rho_range=(lo, hi), rho_top=rho_top, evaluations=evaluations,
        progress=progress, **options)
    if best != 1.0:
        best_value, rho_top = _refine(model, solver, nfe, metric, tune, best, best_value, rho_top, options, history,
                                      evaluations=evaluations, tune_rho_top=tune_rho_top,
                                      active_choices=active_choices, say=progress or (lambda _: None))
    held_tuned = float(metric(skip_samples(model, solver, nfe, held, best, rho_top if best != 1.0 else 1.0,
                                           **options)))
    held_untuned = float(metric(skip_samples(model, solver, nfe, held, 1.0, 1.0, **options)))
    if progress is not None:
        progress(f"skip tuning: chose rho_bottom={best:.4f}; held-out metric {held_tuned:.6g} "
                 f"(untuned {held_untuned:.6g})")
    return SkipSettings(rho_bottom=best, rho_top=rho_top, active=options["active"],
                        model=model_identity(_network(model)), solver=solver, nfe=int(nfe),
                        metric={"tuning": best_value, "tuning_untuned": untuned_tune, "held_out": held_tuned,
                                "held_out_untuned": held_untuned, "history": [list(h) for h in history],
                                "tune_seeds": [tune[0], tune[-1], len(tune)],
                                "eval_seeds": [held[0], held[-1], len(held)]})


register_field_correction("skip_tuning", lambda field, settings: skip_tuned(field, settings=settings))
