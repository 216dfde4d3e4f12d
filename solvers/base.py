"""The solver protocol and the registry.

A step integrates one interval (diffrax style) and holds no hidden state:

    x1, error, state = solver.step(ev, x0, t0, t1, state, coeffs)

`t0` and `t1` are `EvalPoint`s (host floats from the plan, or per-sample device tensors); `coeffs` is the
solver's own typed per-step data (a frozen dataclass), precomputed on the host for a fixed grid by `plan`, or
by `coefficients(field, t0, t1)` for an interval that an adaptive controller chose; `error` is an estimate of
the local error (embedded pairs) or None. Nothing about a run is kept on the solver object, so one solver
serves any batch size, device or number of runs.
"""
from __future__ import annotations

import collections.abc
import inspect
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch

from diffsolve.errors import InvalidArgument, unknown_name
from diffsolve.field import EvalPoint, Field
from diffsolve.grids import NOT_INVERTIBLE, is_increasing, refuse_increasing
from diffsolve.solvers.run import Evaluator


@dataclass(frozen=True)
class StepCoefficients:
    """Base of every solver's per-step data: host floats and points, computed before the loop."""


@dataclass(frozen=True)
class Plan:
    """Everything a fixed-grid run's steps need, computed on the host in float64 before the loop.

    Attributes:
        t: the grid times, float64, `steps + 1` values (decreasing to sample, increasing to invert).
        points: the path scalars (an `EvalPoint`) at each grid time.
        coeffs: one StepCoefficients (the solver's own frozen dataclass) per step.
        nfe: the model evaluations the run will make (per sample, before guidance).
    """

    t: torch.Tensor                          # grid times, float64, steps + 1 values
    points: tuple[EvalPoint, ...]            # path scalars at each grid time
    coeffs: tuple[Any, ...]                  # one StepCoefficients per step
    nfe: int                                 # model evaluations the run will make

    @property
    def steps(self) -> int:
        """The number of steps: one fewer than the grid's times."""
        return self.t.numel() - 1

    @property
    def ends_at_zero(self) -> bool:
        """Whether the grid's last time is exactly t = 0 (zero noise)."""
        return float(self.t[-1]) == 0.0


StepOutput = tuple[torch.Tensor, Optional[torch.Tensor], Any]


class Solver:
    """Base class: metadata plus the plan / init / step protocol.

    A subclass sets the class attributes below and implements `step`, plus `coefficients` (single-step solvers)
    or `plan` (multistep ones, which need the whole grid); `init` gives a multistep solver's empty history.
    One solver object serves any number of runs: nothing about a run is kept on it.

    Attributes:
        name: the registry name, shown in results and errors.
        order: the global order of convergence with the default options.
        calls_per_step: model evaluations per step (before savings on the first or last steps).
        deterministic: False for stochastic samplers (they draw `ev.noise(j)` and cannot invert).
        needs_schedule: True when the solver needs the noise schedule (False: any velocity field).
        adaptive: True for solvers that integrate the whole span in one call (`plan_adaptive`, solvers.adaptive).
        model_family: the one kind of model a sampler is for ("consistency", "shortcut"), or None for any.
        citation: the paper the method comes from.
    """

    name: ClassVar[str] = "solver"
    order: int = 1                      # global order of convergence with the default options
    calls_per_step: int = 1             # model evaluations per step (before savings on first/last steps)
    deterministic: ClassVar[bool] = True
    needs_schedule: ClassVar[bool] = True
    adaptive: ClassVar[bool] = False    # the whole span in one call (solvers.adaptive)
    model_family: ClassVar[str | None] = None   # samplers for one kind of model only (consistency, shortcut)
    citation: ClassVar[str] = ""

    # --- direction ------------------------------------------------------------------------------
    # A deterministic fixed-step solver integrates a grid either way: decreasing (sampling, noise to data) or
    # increasing (inversion, data to noise). Stochastic and span (adaptive) solvers refuse an increasing grid
    # with the reason below.
    def inversion_refusal(self) -> str | None:
        """Why this solver cannot integrate from data to noise, or None when it can.

        Returns:
            The reason (stochastic and span solvers), or None for a deterministic fixed-step solver.
        """
        return None if self.deterministic else NOT_INVERTIBLE

    def check_direction(self, t: torch.Tensor, field: Field | None = None) -> bool:
        """True for an increasing (inversion) grid after checking this solver may run it; False for sampling.

        With `field` a plain velocity field (schedule=None), t = 0 is an ordinary point of the ODE (no 0/0
        slope), so an inversion grid may start there.

        Args:
            t: the grid times.
            field: the field it is for; None: treated as having a schedule.

        Returns:
            True for an increasing grid (inversion), False for a decreasing one (sampling).

        Raises:
            InvalidArgument: an increasing grid for a solver that cannot invert, or one starting at t = 0 with a
                schedule.
        """
        if not is_increasing(t):
            return False
        why = self.inversion_refusal()
        if why is not None:
            raise refuse_increasing(self.name, why)
        if float(t[0]) == 0.0 and (field is None or field.has_schedule):
            raise InvalidArgument(
                "an inversion grid handed to a solver must start above zero noise (t[0] > 0): the slope is 0/0 at "
                "t = 0. Sampler.invert takes the step out of t = 0 itself (the data prediction there is the data, "
                "no model call) and plans the rest of the grid")
        return True

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Model evaluations (per sample, before guidance) that `steps` steps will make.

        Args:
            steps: the number of steps.
            field: the field to be sampled.
            ends_at_zero: whether the grid ends at t = 0 (some solvers save the last evaluation there).

        Returns:
            The number of model calls.
        """
        return steps * self.calls_per_step

    def fit_steps(self, steps: int) -> int:
        """The largest step count this solver accepts that is at most `steps` (shortcut models: powers of two).

        Args:
            steps: the step count asked for.

        Returns:
            The step count the solver will take.
        """
        return steps

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The grid's points and every step's coefficients, on the host.

        Args:
            field: the field to be sampled.
            t: the grid times, float64 (decreasing, or increasing to invert).

        Returns:
            The Plan of the run.

        Raises:
            InvalidArgument: the solver needs a schedule the field lacks, or cannot run the grid's direction.
        """
        self.check_field(field)
        pts = self.grid_points(field, t)
        coeffs = tuple(self.coefficients(field, pts[i], pts[i + 1]) for i in range(len(pts) - 1))
        return Plan(t=t, points=pts, coeffs=coeffs, nfe=self.count_calls(coeffs, field, pts))

    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint) -> Any:
        """The per-step data for one interval (single-step solvers; multistep ones need the whole grid).

        Args:
            field: the field being sampled.
            t0: the interval's start point.
            t1: its end point.

        Returns:
            The solver's StepCoefficients for that step.

        Raises:
            NotImplementedError: a solver that plans whole grids only.
        """
        raise NotImplementedError(f"{type(self).__name__} plans whole grids only")

    def count_calls(self, coeffs: tuple, field: Field, pts: tuple[EvalPoint, ...]) -> int:
        """The model evaluations of a planned run: `model_calls` for its steps, given whether it ends at t = 0.

        Args:
            coeffs: the plan's per-step coefficients.
            field: the field sampled.
            pts: the grid's points.

        Returns:
            The number of model calls (per sample, before guidance).
        """
        return self.model_calls(len(coeffs), field, float(pts[-1].t) == 0.0)

    def init(self, plan: Plan) -> Any:
        """The state before the first step (a multistep solver's empty history); `()` for single-step solvers.

        Args:
            plan: the run's plan.

        Returns:
            The initial state handed to the first `step`.
        """
        return ()

    def step(self, ev: Evaluator, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any,
             coeffs: Any) -> StepOutput:
        """Integrate one interval from `t0` to `t1`.

        Args:
            ev: calls the field (`ev.denoise(x, p)`, `ev.velocity(x, p)`), counted and checked; `ev.noise(j)`.
            x: the state at `t0`.
            t0: the interval's start point.
            t1: its end point.
            state: what the previous step returned.
            coeffs: this step's StepCoefficients from the plan.

        Returns:
            `(x1, error, state)`: the state at `t1`, an embedded local-error estimate or None, the next state.
        """
        raise NotImplementedError

    # --- helpers shared by subclasses -----------------------------------------------------------
    def check_field(self, field: Field) -> None:
        """Raise InvalidArgument when the solver needs a noise schedule and `field` has none.

        Args:
            field: the field to be sampled.
        """
        if self.needs_schedule:
            field.require_schedule(self.name)

    def grid_points(self, field: Field, t: torch.Tensor) -> tuple[EvalPoint, ...]:
        """The field's path scalars at every time of `t`, after checking the grid's direction.

        Args:
            field: the field to be sampled.
            t: the grid times.

        Returns:
            One EvalPoint per time.
        """
        self.check_direction(t, field)
        return tuple(field.at(float(v)) for v in t)

    def options(self) -> dict:
        """The options this solver was built with (for describe / solvers --verbose)."""
        return {}

    def describe(self) -> dict:
        """The solver's metadata as a dict (name, order, calls_per_step, deterministic, ...), for listings."""
        return {"name": self.name, "order": self.order, "calls_per_step": self.calls_per_step,
                "deterministic": self.deterministic, "needs_schedule": self.needs_schedule,
                "adaptive": self.adaptive, "model_family": self.model_family,
                **({"plain_order": self.plain_order} if getattr(self, "plain_order", None) is not None else {})}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryEntry:
    """One registered solver name: its factory, fixed settings, changeable defaults and one-line summary."""

    name: str
    factory: Callable[..., Solver]
    fixed: dict                 # what the name stands for (an alias's order, method, tableau): not overridable
    defaults: dict              # the name's own defaults, which options may change
    summary: str

    def parameters(self) -> dict[str, tuple[Any, Any]]:
        """{option: (type hint, default)} of what a user may pass, read from the factory's signature."""
        sig = inspect.signature(self.factory)
        hints = _hints(self.factory)
        out = {}
        for k, p in sig.parameters.items():
            if k in self.fixed or k == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[k] = (hints.get(k, Any), self.defaults.get(k, p.default))
        return out


_REGISTRY: dict[str, RegistryEntry] = {}


def register(name: str, factory: Callable[..., Solver], summary: str = "", *, defaults: dict | None = None,
             **fixed: Any) -> None:
    """Register `factory(**defaults, **user_options, **fixed)` under `name` (k-diffusion style names).

    Args:
        name: the registry name (e.g. "dpmpp_2m").
        factory: a Solver class or a function that returns a Solver.
        summary: one line shown by `diffsolve solvers`.
        defaults: the name's own defaults, which a user's options may change.
        **fixed: what the name stands for (an alias's order, method or tableau); a user may not override them.

    Raises:
        InvalidArgument: `name` is registered already.
    """
    if name in _REGISTRY:
        raise InvalidArgument(f"solver name {name!r} is registered already")
    _REGISTRY[name] = RegistryEntry(name, factory, dict(fixed), dict(defaults or {}), summary)


def _hints(factory: Callable) -> dict:
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:               # a hint that does not resolve: the solver's own checks still run
        return {}


def _conforms(value: Any, hint: Any) -> bool | None:
    """True / False when the hint says (bool, int, float, str, None and unions of them), None when it cannot."""
    if hint is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_conforms(value, h) for h in typing.get_args(hint)]
        if any(v is True for v in verdicts):
            return True
        return False if all(v is False for v in verdicts) else None
    if origin is not None and isinstance(origin, type):      # Sequence[...], dict[...], tuple[...]
        if issubclass(origin, collections.abc.Callable):
            return callable(value)
        return isinstance(value, origin) and not (isinstance(value, str) and origin is not str)
    if isinstance(hint, type) and hint is not typing.Any:     # a class: a Solver, a ButcherTableau, a dict
        return isinstance(value, hint)
    return None


def _coerce(value: Any, hint: Any) -> Any:
    """numpy scalars to the Python type the hint names, so a solver's own checks see plain ints and floats."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return bool(value) if type(value).__name__ == "bool_" else value
    if int in args and isinstance(value, numbers.Integral):
        return int(value)
    if float in args and isinstance(value, numbers.Real):
        return float(value)
    return value


def _describe(hint: Any) -> str:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return " or ".join("None" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)


def get_solver(name: "str | Solver", **options: Any) -> Solver:
    """A solver from its registry name (see `available_solvers()`), or the solver itself.

    Options are checked by type against the solver's signature before it is built (a string is not a bool,
    numpy integers are integers), and an alias's defining settings cannot be overridden.

    Args:
        name: a registry name, or a Solver (returned as is; it takes no options).
        **options: the solver's keyword options.

    Returns:
        The built Solver.

    Raises:
        InvalidArgument: an unknown name (with the nearest names), an unknown option or one of the wrong type,
            an alias's fixed setting, or options given with a Solver object.
    """
    if isinstance(name, Solver):
        if options:
            raise InvalidArgument(f"solver options {sorted(options)} given with a Solver object; set them on it")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown_name("solver", name, _REGISTRY)
    entry = _REGISTRY[name]
    fixed = sorted(k for k in options if k in entry.fixed and not _same(options[k], entry.fixed[k]))
    if fixed:
        raise InvalidArgument(f"solver {name!r} stands for {', '.join(f'{k}={entry.fixed[k]!r}' for k in fixed)}; "
                              f"drop {', '.join(fixed)}= or use a solver name that takes it")
    params = entry.parameters()
    unknown = sorted(set(options) - set(params) - set(entry.fixed))
    if unknown:
        raise InvalidArgument(f"solver {name!r} does not take option(s) {unknown}; its options are "
                              f"{sorted(params)}")
    checked = {}
    for k, v in options.items():
        if k in entry.fixed:
            continue
        hint = params[k][0]
        if _conforms(v, hint) is False:
            raise InvalidArgument(f"solver {name!r}: {k}={v!r} must be {_describe(hint)}")
        checked[k] = _coerce(v, hint)
    return entry.factory(**{**entry.defaults, **checked, **entry.fixed})


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str)
    except Exception:
        return False


def available_solvers(deterministic: bool | None = None) -> list[str]:
    """The registered solver names, sorted.

    Args:
        deterministic: None: every solver; True: the deterministic (ODE) ones; False: the stochastic samplers.

    Returns:
        The names, for `get_solver` and `Sampler(solver=...)`.
    """
    names = sorted(_REGISTRY)
    if deterministic is None:
        return names
    return [n for n in names if get_solver(n).deterministic == deterministic]


def registry_entries() -> dict[str, RegistryEntry]:
    """A copy of the registry: name -> RegistryEntry (factory, fixed settings, defaults, summary).

    Returns:
        The entries by name (changing the copy does not change the registry).
    """
    return dict(_REGISTRY)
