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
import threading
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.checks import check_writable
from diffsolve.errors import InvalidArgument, check_float
from diffsolve.files import atomic_write_bytes
from diffsolve.sampler import Sampler, register_field_correction
from diffsolve.field import EvalPoint, Field, FieldOutput, FieldWrapper, VectorField, model_identity, model_spec_of


def depth_scales(levels: int, rho_top: float = 1.0, rho_bottom: float = 0.8) -> list[float]:
    """rho per skip level (`levels`), index 0 the highest resolution: linear in depth from rho_top to rho_bottom.

    Raises:
        InvalidArgument: `levels` is below 1.
    """
    if levels < 1:
        raise InvalidArgument(f"a UNet needs at least one skip level, got {levels}")
    if levels == 1:
        return [float(rho_bottom)]
    return [rho_top + (rho_bottom - rho_top) * k / (levels - 1) for k in range(levels)]


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


def _check_settings(rho_bottom: Any, rho_top: Any, active: Any) -> tuple[float, float, tuple[float, float] | None]:
    rb = check_float("rho_bottom", rho_bottom, positive=True)
    rt = check_float("rho_top", rho_top, positive=True)
    if active is not None:
        if not (isinstance(active, (tuple, list)) and len(active) == 2):
            raise InvalidArgument(f"active={active!r}: must be a pair (s_lo, s_hi) of EDM noise levels, or None")
        lo, hi = check_float("active[0]", active[0], nonnegative=True), float(active[1])
        if not hi > lo:
            raise InvalidArgument(f"active={active!r}: need s_lo < s_hi")
        active = (lo, hi)
    return rb, rt, active


class _Target:
    """How one network kind takes its skip scales: a call keyword or hooks on named modules (top to bottom)."""

    def __init__(self, net: torch.nn.Module, outputs_of: Sequence[str] | None, inputs_of: Sequence[str] | None):
        self.net = net
        modules = dict(net.named_modules())
        if outputs_of is not None or inputs_of is not None:
            if outputs_of is not None and inputs_of is not None:
                raise InvalidArgument("give outputs_of= or inputs_of=, not both")
            names = list(outputs_of if outputs_of is not None else inputs_of)
            missing = [n for n in names if n not in modules]
            if not names or missing:
                raise InvalidArgument(f"{'outputs_of' if outputs_of is not None else 'inputs_of'}={names!r}: "
                                      f"not submodules of the network: {missing}")
            self.kind = "outputs" if outputs_of is not None else "inputs"
            self.modules = [modules[n] for n in names]
        elif hasattr(net, "skip_scales") and hasattr(net, "num_skip_levels"):
            self.kind, self.modules = "keyword", []
        elif hasattr(net, "up_blocks") and hasattr(net, "down_blocks"):
            # diffusers UNets: up_blocks[0] is the deepest level and receives the deepest skips
            self.kind, self.modules = "up_blocks", list(reversed(list(net.up_blocks)))
        else:
            raise InvalidArgument(f"{type(net).__name__} has no known skip connections: name the modules whose "
                                  "outputs are skip features (outputs_of=) or whose inputs receive them (inputs_of=)")

    @property
    def levels(self) -> int:
        return self.net.num_skip_levels if self.kind == "keyword" else len(self.modules)

    def entries(self, scales: Sequence[float]) -> list[tuple[torch.nn.Module, str, Any]]:
        """(module, kind, factor) for each hooked module; levels at rho 1 are left out (no multiply at all)."""
        if self.kind == "keyword":
            return [(self.net, "keyword", list(scales))]
        return [(m, self.kind, rho) for m, rho in zip(self.modules, scales) if rho != 1.0]


# The scaling reaches the network per call: hooks installed once per module (marked on the module, so a deepcopy
# that copies the hooks copies the mark too) read the factors that the calling thread has entered. A network
# shared with other threads, other samplers or plain callers is never changed: outside an active context of the
# calling thread the hooks do nothing.
_LOCAL = threading.local()
_MARK = "_diffsolve_skip_hooks"
_INSTALL = threading.Lock()


def _active(module: torch.nn.Module) -> list:
    table = getattr(_LOCAL, "active", None)
    return table.get(id(module), []) if table else []


def _install(module: torch.nn.Module, post: bool) -> None:
    with _INSTALL:
        marks = module.__dict__.get(_MARK, frozenset())
        want = "post" if post else "pre"
        if want in marks:
            return
        if post:
            module.register_forward_hook(_post_hook)
        else:
            module.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        module.__dict__[_MARK] = marks | {want}


def _pre_hook(module, args, kwargs):
    entries = _active(module)
    if not entries:
        return None
    for _, kind, factor in entries:
        if kind == "keyword":
            given = kwargs.get("skip_scale")
            scales = list(factor) if given is None else [a * b for a, b in zip(given, factor)]
            kwargs = {**kwargs, "skip_scale": scales}
        elif kind == "up_blocks":
            if "res_hidden_states_tuple" in kwargs:
                kwargs = {**kwargs, "res_hidden_states_tuple": tuple(r * factor
                                                                     for r in kwargs["res_hidden_states_tuple"])}
            else:
                args = (args[0], tuple(r * factor for r in args[1]), *args[2:])
        elif kind == "inputs":
            args = (args[0] * factor, *args[1:])
    return args, kwargs


def _post_hook(module, args, out):
    for _, kind, factor in _active(module):
        if kind == "outputs":
            out = out * factor if isinstance(out, torch.Tensor) else (out[0] * factor, *out[1:])
    return out


class SkipTuned:
    """The scaling as a context manager on a torch network `net` (see the module docstring).

    It applies to the network's calls made by the thread that entered it, while it is entered; contexts may nest,
    overlap across threads and exit in any order. `rho=` gives one factor per skip level (top to bottom) instead of
    the linear `rho_top` .. `rho_bottom`; `outputs_of=` / `inputs_of=` name the modules that output or receive the
    skips for a network diffsolve does not know; `active=` as in SkipSettings.

    Raises:
        InvalidArgument: `net` is not a torch module, a factor or `active` is invalid, or the skips are not found.
    """

    def __init__(self, net: Any, rho_bottom: float = 0.8, rho_top: float = 1.0, *, rho: Sequence[float] | None = None,
                 outputs_of: Sequence[str] | None = None, inputs_of: Sequence[str] | None = None,
                 active: tuple[float, float] | None = None):
        if not isinstance(net, torch.nn.Module):
            raise InvalidArgument(f"skip tuning hooks a torch.nn.Module, got {type(net).__name__}")
        self.rho_bottom, self.rho_top, self.active = _check_settings(rho_bottom, rho_top, active)
        self.target = _Target(net, outputs_of, inputs_of)
        if rho is not None:
            if isinstance(rho, (str, bytes)) or not hasattr(rho, "__iter__"):
                raise InvalidArgument(f"rho={rho!r}: give one factor per skip level (top to bottom)")
            scales = [check_float(f"rho[{k}]", v, positive=True) for k, v in enumerate(rho)]
            if len(scales) != self.target.levels:
                raise InvalidArgument(f"rho= has {len(scales)} factors; this network has {self.target.levels} "
                                      "skip levels (top to bottom)")
        else:
            scales = depth_scales(self.target.levels, self.rho_top, self.rho_bottom)
        self.scales = scales
        self._entries = self.target.entries(scales)
        for module, kind, _ in self._entries:
            _install(module, post=kind == "outputs")

    @property
    def net(self) -> torch.nn.Module:
        """The tuned network."""
        return self.target.net

    def applies_at(self, p: EvalPoint) -> bool:
        """Whether the point `p` lies in the active range (InvalidArgument for a per-sample point)."""
        if self.active is None:
            return True
        if p.per_sample:
            raise InvalidArgument("active= needs one noise level for the batch; this point is per sample")
        return self.active[0] <= p.s <= self.active[1]

    def __enter__(self) -> "SkipTuned":
        if not hasattr(_LOCAL, "active"):
            _LOCAL.active, _LOCAL.tokens = {}, {}
        token = object()
        for module, kind, factor in self._entries:
            _LOCAL.active.setdefault(id(module), []).append((token, kind, factor))
        _LOCAL.tokens.setdefault(id(self), []).append(token)
        return self

    def __exit__(self, *exc) -> None:
        tokens = getattr(_LOCAL, "tokens", {}).get(id(self))
        if not tokens:
            return
        token = tokens.pop()
        if not tokens:
            del _LOCAL.tokens[id(self)]
        for module, _, _ in self._entries:
            kept = [e for e in _LOCAL.active.get(id(module), []) if e[0] is not token]
            if kept:
                _LOCAL.active[id(module)] = kept
            else:
                _LOCAL.active.pop(id(module), None)


class SkipTunedField(FieldWrapper):
    """The scaling as a field wrapper of `field`: `tuning` is active during this wrapper's own calls only."""

    stacks_on_corrections = True     # Skip-Tuning is applied on top of any solver, a learned one too

    def __init__(self, field: Field, tuning: SkipTuned):
        super().__init__(field)
        self.tuning = tuning

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner field's output at (`x`, `p`), the scaling entered where it applies."""
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
        """This wrapper's part of the field identity: the factors and the active range."""
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
    declare their spec. `settings=` takes a tuner's result (a SkipSettings or its JSON file); the others as SkipTuned.

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
    """Write the settings as JSON to `path`: the folder checked first, a temp file in it, then an atomic rename.

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
    """Settings written by `save_settings` / `diffsolve tune skip` to `path`, each field checked with its type.

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
    rb, rt, active = _check_settings(data["rho_bottom"], data["rho_top"], active)
    metric = data.get("metric", {})
    if not isinstance(metric, dict):
        raise InvalidArgument(f"{path}: metric={metric!r} must be an object")
    nfe = _optional(data, "nfe", int, path)
    return SkipSettings(rho_bottom=rb, rho_top=rt, active=active, model=_optional(data, "model", str, path),
                        solver=_optional(data, "solver", str, path), nfe=nfe, metric=dict(metric))


def golden_section(f: Callable[[float], float], lo: float, hi: float, evaluations: int = 10,
                   report: Callable[[float, float], None] | None = None) -> tuple[float, float, list]:
    """Minimise a unimodal f on [lo, hi] with `evaluations` calls (golden-section search; Kiefer 1953).

    `report(x, f(x))` is called after each evaluation. Returns (best x, its f, history of (x, f(x))).
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
    """Samples of `solver` at `nfe` from the per-seed noise of `seeds`, the skips scaled (rho 1: the bare model).

    `solver_options` go to the Sampler, `skip_options` to `skip_tuned`, `run_kwargs` to `Sampler.run`.
    """
    field = skip_tuned(model, rho_bottom, rho_top, active=active, **dict(skip_options or {})) \
        if rho_bottom != 1.0 or rho_top != 1.0 else (model if isinstance(model, Field) else VectorField(model))
    s = Sampler(field, solver, progress=False, **dict(solver_options or {}))
    return s.run(nfe=nfe, seed=[int(v) for v in seeds], **run_kwargs).samples


def search_rho(model: Any, solver: str, nfe: int, metric: Callable[[torch.Tensor], float], *,
               tune_seeds: Sequence[int], rho_range: tuple[float, float] = (0.5, 1.0), rho_top: float = 1.0,
               evaluations: int = 8, progress: Callable[[str], None] | None = print,
               **sample_options: Any) -> tuple[float, float, float, list]:
    """Golden-section search of rho_bottom on the tuning noise only: (best rho, its metric, the untuned metric,
    history). rho_bottom = 1 wins when no scaling beats the bare model.
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


def tune_skip(model: Any, solver: str, nfe: int, metric: Callable[[torch.Tensor], float], *,
              tune_seeds: Sequence[int], eval_seeds: Sequence[int], rho_range: tuple[float, float] = (0.5, 1.0),
              rho_top: float = 1.0, active: tuple[float, float] | None = None, evaluations: int = 8,
              solver_options: Mapping[str, Any] | None = None, skip_options: Mapping[str, Any] | None = None,
              progress: Callable[[str], None] | None = print, tune_rho_top: bool = False,
              active_choices: Sequence[tuple[float, float] | None] = (), **run_kwargs: Any) -> SkipSettings:
    """Search rho_bottom (golden section on `rho_range`) minimising `metric(samples)` on samples from `tune_seeds`.

    Then score the choice and the untuned model on `eval_seeds`, which must not overlap.
    `tune_rho_top`: then a golden section of rho_top between rho_bottom and 1; `active_choices`: noise ranges
    (EDM levels, or None for everywhere) tried with the rho found, the best on the tuning noise kept.
    `skip_options` go to `skip_tuned` (outputs_of= / inputs_of= for a network diffsolve does not know).

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
    say = progress or (lambda _: None)
    if best != 1.0 and tune_rho_top:
        given_top = rho_top
        rho_top, value, more = golden_section(
            lambda r: metric(skip_samples(model, solver, nfe, tune, best, r, **options)), best, 1.0,
            evaluations=max(3, evaluations // 2),
            report=lambda r, y: say(f"skip tuning: rho_top={r:.4f} metric={y:.6g} (tuning noise)"))
        if value < best_value:
            best_value = value
        else:
            rho_top = given_top
        history += [("rho_top", *h) for h in more]
    if best != 1.0:
        for act in active_choices:
            _check_settings(best, rho_top, act)
            value = float(metric(skip_samples(model, solver, nfe, tune, best, rho_top,
                                              **{**options, "active": act})))
            say(f"skip tuning: active={act} metric={value:.6g} (tuning noise)")
            history.append(("active", list(act) if act is not None else None, value))
            if value < best_value:
                best_value, active = value, act
                options["active"] = act
    held_tuned = float(metric(skip_samples(model, solver, nfe, held, best, rho_top if best != 1.0 else 1.0,
                                           **options)))
    held_untuned = float(metric(skip_samples(model, solver, nfe, held, 1.0, 1.0, **options)))
    if progress is not None:
        progress(f"skip tuning: chose rho_bottom={best:.4f}; held-out metric {held_tuned:.6g} "
                 f"(untuned {held_untuned:.6g})")
    return SkipSettings(rho_bottom=best, rho_top=rho_top, active=active, model=model_identity(_network(model)),
                        solver=solver, nfe=int(nfe),
                        metric={"tuning": best_value, "tuning_untuned": untuned_tune, "held_out": held_tuned,
                                "held_out_untuned": held_untuned, "history": [list(h) for h in history],
                                "tune_seeds": [tune[0], tune[-1], len(tune)],
                                "eval_seeds": [held[0], held[-1], len(held)]})


register_field_correction("skip_tuning", lambda field, settings: skip_tuned(field, settings=settings))
