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
    """Register a reader of another framework's schedulers for `Sampler(model, scheduler=...)`.

    Registering the same adapter twice has no effect; adapters are asked in the order they were registered.

    Args:
        adapter: `adapter(model, scheduler, prediction=, sample_shape=) -> SamplerParts | None`: the field, solver
            and grid it makes of the model and scheduler, or None when the scheduler is not one it reads.
    """
    if adapter not in _SCHEDULER_ADAPTERS:
        _SCHEDULER_ADAPTERS.append(adapter)


def parts_from_scheduler(model: Any, scheduler: Any, prediction: str | None,
                         sample_shape: Sequence[int] | None) -> SamplerParts:
    """The field, solver and grid the first registered adapter that reads `scheduler` makes of it.

    Args:
        model: The network the scheduler drives.
        scheduler: A scheduler (or its config) of another framework, e.g. a diffusers scheduler.
        prediction: The network's parameterization; None: the adapter reads it from the scheduler.
        sample_shape: The shape of one sample (no batch); None: read from the model, if it says.

    Returns:
        SamplerParts: The field, solver (with options) and grid (with options) the adapter made.

    Raises:
        InvalidArgument: No registered adapter reads `scheduler`.
    """
    for adapter in _SCHEDULER_ADAPTERS:
        parts = adapter(model, scheduler, prediction=prediction, sample_shape=sample_shape)
        if parts is not None:
            return parts
    raise InvalidArgument(f"scheduler={type(scheduler).__name__}: no adapter reads this scheduler; diffusers "
                          "schedulers and their configs are read by diffsolve.pretrained_adapters.diffusers")


# Field corrections (Skip-Tuning): the corrections package registers them on import.
_FIELD_CORRECTIONS: dict[str, Callable[[Field, Any], Field]] = {}


def register_field_correction(keyword: str, apply: Callable[[Field, Any], Field]) -> None:
    """Let `Sampler(..., keyword=value)` wrap its field as `apply(field, value)` (how Skip-Tuning plugs in).

    Args:
        keyword: The Sampler keyword that selects the correction (e.g. "skip_tuning").
        apply: `apply(field, value) -> Field`: the corrected field; it must not change the given one.

    Raises:
        InvalidArgument: `keyword` is registered already.
    """
    if keyword in _FIELD_CORRECTIONS:
        raise InvalidArgument(f"register_field_correction: {keyword!r} is registered already")
    _FIELD_CORRECTIONS[keyword] = apply


def field_correction(keyword: str) -> Callable[[Field, Any], Field]:
    """The field correction registered for the Sampler keyword `keyword`.

    Args:
        keyword: The Sampler keyword (e.g. "skip_tuning").

    Returns:
        Callable: `apply(field, value) -> Field`, as registered by `register_field_correction`.

    Raises:
        InvalidArgument: Nothing is registered for `keyword` (diffsolve.corrections is not imported).
    """
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
    """Make `Sampler(model, correction=c)` sample as `resolve(field, c)` says; replaces any earlier resolver.

    The corrections package registers the one resolver on import.

    Args:
        resolve: `resolve(field, correction) -> list[CorrectionRun]`: how a correction file or object is sampled
            on `field`, after checking it was tuned for that field's model.
    """
    _CORRECTION_RESOLVER[:] = [resolve]


def resolve_correction(field: Field, correction: Any) -> list[CorrectionRun]:
    """The runs of `correction` for `field`, by the registered resolver, checked against the field's identity.

    Args:
        field: The field the Sampler samples.
        correction: A correction file's path or a loaded correction object.

    Returns:
        list[CorrectionRun]: One or more ways to sample the correction, each with its solver, options and budgets.

    Raises:
        InvalidArgument: No resolver is registered (diffsolve.corrections is not imported), or the resolver
            refuses `correction` (unreadable, or tuned for another model).
    """
    if not _CORRECTION_RESOLVER:
        raise InvalidArgument("correction= needs diffsolve.corrections (import diffsolve)")
    return _CORRECTION_RESOLVER[0](field, correction)


def merge_correction(run: CorrectionRun, solver: Any, grid: Any, grid_options: Any,
                     solver_options: dict) -> tuple[str, Any, Any, dict]:
    """The solver, grid and options to sample `run` with; what the caller gave besides must agree with it.

    Args:
        run: The correction run the Sampler samples.
        solver: The caller's `solver=` (a name or a Solver), or None.
        grid: The caller's `grid=`; anything but None is refused (the correction fixes its grid).
        grid_options: The caller's `grid_options=`; anything but None is refused.
        solver_options: The caller's solver keywords; each must equal the run's own value.

    Returns:
        tuple[str, Any, Any, dict]: The run's solver name, its grid and grid options (None where it names none),
            and its solver options without those two.

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
        # built once here: a Sampler holds no state that a later run() fills in
        self._samplers = [make(run.correction) for run in runs] if self.multi else []

    def _sampler(self, i: int, owner: Any) -> Any:
        return self._samplers[i] if self.multi else owner

    def held(self, owner: Any) -> list[tuple[Any, int, int]]:
        """Every budget the correction holds, in the file's order.

        Args:
            owner: The Sampler these budgets belong to (it samples a file of one run itself).

        Returns:
            list[tuple[Any, int, int]]: (the Sampler that runs it, its step count, its model evaluations) for each
                budget; a run tuned for an NFE alone gets the most steps that fit it.
        """
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

        Args:
            owner: The Sampler these budgets belong to.
            steps: The step count asked for, or None.
            nfe: The model-evaluation budget asked for, or None.

        Returns:
            tuple[Any, int]: The Sampler that runs the matching budget (`owner` for a file of one run) and the
                budget's step count.

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
