"""What the Sampler takes from the layers above it, by registration: scheduler adapters (diffusers), field
corrections (Skip-Tuning) and correction files (`Sampler(model, correction=path)`). The sampler names no module
above it; those modules register here when imported.

A correction file says how it is sampled as one or more `CorrectionRun`s: a registered solver, its options (the
grid among them) and the budgets it was tuned for. `TunedBudgets` holds them for one Sampler: a run asks for one
of those budgets (steps= or nfe=), anything else is refused naming the budgets the file holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Sequence

from diffsolve.errors import InvalidArgument
from diffsolve.field import Field
from diffsolve.solvers.base import Solver


@dataclass
class SamplerParts:
    """What an adapter hands the Sampler for another framework's model + scheduler."""

    field: Field
    solver: str | Solver
    solver_options: dict = dc_field(default_factory=dict)
    grid: Any = None
    grid_options: dict = dc_field(default_factory=dict)


# Adapters (diffusers) register how they read a scheduler; the core never imports them.
_SCHEDULER_ADAPTERS: list[Callable[..., SamplerParts | None]] = []


def register_scheduler_adapter(adapter: Callable[..., SamplerParts | None]) -> None:
    """Add `adapter(model, scheduler, prediction=, sample_shape=) -> SamplerParts | None` (None: not its scheduler)."""
    if adapter not in _SCHEDULER_ADAPTERS:
        _SCHEDULER_ADAPTERS.append(adapter)


def parts_from_scheduler(model: Any, scheduler: Any, prediction: str | None,
                         sample_shape: Sequence[int] | None) -> SamplerParts:
    """The field, solver and grid the first adapter that reads `scheduler` makes of it (InvalidArgument: none)."""
    for adapter in _SCHEDULER_ADAPTERS:
        parts = adapter(model, scheduler, prediction=prediction, sample_shape=sample_shape)
        if parts is not None:
            return parts
    raise InvalidArgument(f"scheduler={type(scheduler).__name__}: no adapter reads this scheduler; diffusers "
                          "schedulers and their configs are read by diffsolve.pretrained_adapters.diffusers")


# Field corrections (Skip-Tuning): the corrections package registers them on import.
_FIELD_CORRECTIONS: dict[str, Callable[[Field, Any], Field]] = {}


def register_field_correction(keyword: str, apply: Callable[[Field, Any], Field]) -> None:
    """Let `Sampler(..., keyword=value)` wrap its field as `apply(field, value)`; a second `keyword` is refused."""
    if keyword in _FIELD_CORRECTIONS:
        raise InvalidArgument(f"register_field_correction: {keyword!r} is registered already")
    _FIELD_CORRECTIONS[keyword] = apply


def field_correction(keyword: str) -> Callable[[Field, Any], Field]:
    """The registered field correction `keyword` (InvalidArgument when diffsolve.corrections is not imported)."""
    if keyword not in _FIELD_CORRECTIONS:
        raise InvalidArgument(f"{keyword}= needs diffsolve.corrections (import diffsolve)")
    return _FIELD_CORRECTIONS[keyword]


# ------------------------------------------------------------------------------------------------
# Correction files
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorrectionRun:
    """One way to sample a correction.

    Attributes:
        solver: The registered solver's name.
        options: Its keyword options; "grid" / "grid_options" among them go to the Sampler's grid.
        steps: The step counts it was tuned for; empty: the most steps that fit `nfe`.
        nfe: The one budget this run serves in a file of several runs; None: every budget of `steps`.
        correction: The correction object this run comes from (a file of several runs builds one Sampler each).
    """
    solver: str
    options: dict
    steps: tuple[int, ...] = ()
    nfe: int | None = None
    correction: Any = None


_CORRECTION_RESOLVER: list[Callable[[Field, Any], list[CorrectionRun]]] = []


def register_correction_resolver(resolve: Callable[[Field, Any], list[CorrectionRun]]) -> None:
    """Make `Sampler(model, correction=c)` sample as `resolve(field, c)` says (the corrections package does)."""
    _CORRECTION_RESOLVER[:] = [resolve]


def resolve_correction(field: Field, correction: Any) -> list[CorrectionRun]:
    """The runs of `correction` (a file or a correction object) for `field`, checked against its identity."""
    if not _CORRECTION_RESOLVER:
        raise InvalidArgument("correction= needs diffsolve.corrections (import diffsolve)")
    return _CORRECTION_RESOLVER[0](field, correction)


def merge_correction(run: CorrectionRun, solver: Any, grid: Any, grid_options: Any,
                     solver_options: dict) -> tuple[str, Any, Any, dict]:
    """(solver, grid, grid_options, solver options) of `run`; what the caller gave must agree with it.

    Raises:
        InvalidArgument: a solver, grid or solver option given besides the correction that differs from its own.
    """
    options = dict(run.options)
    own_grid, own_grid_options = options.pop("grid", None), options.pop("grid_options", None)
    if solver is not None and solver != run.solver and getattr(solver, "name", None) != run.solver:
        raise InvalidArgument(f"solver={getattr(solver, 'name', solver)!r} disagrees with correction=, which is "
                              f"sampled with {run.solver!r}: leave solver= out (the correction names it)")
    if grid is not None or grid_options is not None:
        raise InvalidArgument("grid= / grid_options= with correction=: the correction fixes the grid it was tuned on; "
                              "leave them out")
    clash = sorted(k for k, v in solver_options.items() if k not in options or not _same(options[k], v))
    if clash:
        raise InvalidArgument(f"solver options {clash} disagree with correction=, which sets {sorted(options)}: "
                              "leave them out")
    return run.solver, own_grid, own_grid_options, options


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):      # tensors and objects holding them: not comparable as a whole
        return False


class TunedBudgets:
    """The budgets a Sampler made with `correction=` may run, and the Sampler of each (files of several runs).

    Args:
        runs: The correction's runs (resolve_correction).
        make: `make(correction)`: a Sampler for one run's correction, on the same field.
    """

    def __init__(self, runs: list[CorrectionRun], make: Callable[[Any], Any]):
        self.runs = runs
        self.multi = len(runs) > 1
        self._make = make
        self._samplers: dict[int, Any] = {}

    def _sampler(self, i: int, owner: Any) -> Any:
        if not self.multi:
            return owner
        if i not in self._samplers:
            self._samplers[i] = self._make(self.runs[i].correction)
        return self._samplers[i]

    def held(self, owner: Any) -> list[tuple[Any, int, int]]:
        """(sampler, steps, nfe) of every budget the correction holds, in the file's order."""
        out = []
        for i, run in enumerate(self.runs):
            s = self._sampler(i, owner)
            if not run.steps:
                out.append((s, s.steps_for_nfe(run.nfe), run.nfe))
                continue
            for steps in run.steps:
                out.append((s, steps, s.solver.plan(s.field, s.times(steps)).nfe * s.field.evals_per_call))
        return out

    def choose(self, owner: Any, steps: int | None, nfe: int | None) -> tuple[Any, int]:
        """The Sampler and the step count for a run of `steps` steps or `nfe` evaluations.

        Raises:
            InvalidArgument: both or neither given, or a budget the correction does not hold (named with those held).
        """
        if (steps is None) == (nfe is None):
            raise InvalidArgument("give steps= or nfe= (one of the budgets the correction was tuned for)")
        held = self.held(owner)
        for s, k, n in held:
            if (steps is not None and k == steps) or (nfe is not None and n == nfe):
                return s, k
        raise InvalidArgument(
            f"{'steps' if steps is not None else 'nfe'}={steps if steps is not None else nfe}: the correction was "
            f"tuned for NFE {sorted({n for _, _, n in held})} (steps {sorted({k for _, k, _ in held})}); use one of "
            "those, or tune this budget with `diffsolve tune`")
