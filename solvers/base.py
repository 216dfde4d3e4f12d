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

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Protocol

import torch

from ..errors import InvalidArgument, unknown_name
from ..field import EvalPoint, Field, FieldOutput
from ..grids import NOT_INVERTIBLE, is_increasing, refuse_increasing


class Evaluator(Protocol):
    """What a step may call: the field's data prediction or slope, counted and checked by the loop."""

    field: Field
    step: int

    def denoise(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor: ...

    def velocity(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor: ...

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput: ...

    def noise(self, draw: int = 0) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepCoefficients:
    """Base of every solver's per-step data: host floats and points, computed before the loop."""


@dataclass(frozen=True)
class Plan:
    """Everything a fixed-grid run's steps need, computed on the host in float64 before the loop."""

    t: torch.Tensor                          # grid times, float64, steps + 1 values
    points: tuple[EvalPoint, ...]            # path scalars at each grid time
    coeffs: tuple[Any, ...]                  # one StepCoefficients per step
    nfe: int                                 # model evaluations the run will make

    @property
    def steps(self) -> int:
        return self.t.numel() - 1

    @property
    def ends_at_zero(self) -> bool:
        return float(self.t[-1]) == 0.0


StepOutput = tuple[torch.Tensor, Optional[torch.Tensor], Any]


class Solver:
    """Base class: metadata plus the plan / init / step protocol."""

    name: ClassVar[str] = "solver"
    order: int = 1                      # global order of convergence with the default options
    calls_per_step: int = 1             # model evaluations per step (before savings on first/last steps)
    deterministic: ClassVar[bool] = True
    needs_schedule: ClassVar[bool] = True
    adaptive: ClassVar[bool] = False    # the whole span in one call (solvers.adaptive)
    citation: ClassVar[str] = ""

    # --- direction ------------------------------------------------------------------------------
    # A deterministic fixed-step solver integrates a grid either way: decreasing (sampling, noise to data) or
    # increasing (inversion, data to noise). Stochastic and span (adaptive) solvers refuse an increasing grid
    # with the reason below.
    def inversion_refusal(self) -> str | None:
        """Why this solver cannot integrate from data to noise, or None when it can."""
        return None if self.deterministic else NOT_INVERTIBLE

    def check_direction(self, t: torch.Tensor) -> bool:
        """True for an increasing (inversion) grid after checking this solver may run it; False for sampling."""
        if not is_increasing(t):
            return False
        why = self.inversion_refusal()
        if why is not None:
            raise refuse_increasing(self.name, why)
        if float(t[0]) == 0.0:
            raise InvalidArgument(
                "an inversion grid handed to a solver must start above zero noise (t[0] > 0): the slope is 0/0 at "
                "t = 0. Sampler.invert takes the step out of t = 0 itself (the data prediction there is the data, "
                "no model call) and plans the rest of the grid")
        return True

    def model_calls(self, steps: int, field: Field, ends_at_zero: bool) -> int:
        """Model evaluations (per sample, before guidance) that `steps` steps will make."""
        return steps * self.calls_per_step

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The grid's points and every step's coefficients, on the host."""
        self.check_field(field)
        pts = self.grid_points(field, t)
        coeffs = tuple(self.coefficients(field, pts[i], pts[i + 1]) for i in range(len(pts) - 1))
        return Plan(t=t, points=pts, coeffs=coeffs, nfe=self.count_calls(coeffs, field, pts))

    def coefficients(self, field: Field, t0: EvalPoint, t1: EvalPoint) -> Any:
        """The per-step data for one interval (single-step solvers; multistep ones need the whole grid)."""
        raise NotImplementedError(f"{type(self).__name__} plans whole grids only")

    def count_calls(self, coeffs: tuple, field: Field, pts: tuple[EvalPoint, ...]) -> int:
        return self.model_calls(len(coeffs), field, float(pts[-1].t) == 0.0)

    def init(self, plan: Plan) -> Any:
        return ()

    def step(self, ev: Evaluator, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any,
             coeffs: Any) -> StepOutput:
        raise NotImplementedError

    # --- helpers shared by subclasses -----------------------------------------------------------
    def check_field(self, field: Field) -> None:
        if self.needs_schedule:
            field.require_schedule(self.name)

    def grid_points(self, field: Field, t: torch.Tensor) -> tuple[EvalPoint, ...]:
        self.check_direction(t)
        return tuple(field.at(float(v)) for v in t)

    def options(self) -> dict:
        """The options this solver was built with (for describe / solvers --verbose)."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "order": self.order, "calls_per_step": self.calls_per_step,
                "deterministic": self.deterministic, "needs_schedule": self.needs_schedule,
                "adaptive": self.adaptive}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistryEntry:
    name: str
    factory: Callable[..., Solver]
    defaults: dict
    summary: str


_REGISTRY: dict[str, RegistryEntry] = {}


def register(name: str, factory: Callable[..., Solver], summary: str = "", **defaults: Any) -> None:
    """Register `factory(**defaults, **user_options)` under `name` (k-diffusion style names)."""
    if name in _REGISTRY:
        raise InvalidArgument(f"solver name {name!r} is registered already")
    _REGISTRY[name] = RegistryEntry(name, factory, dict(defaults), summary)


def get_solver(name: "str | Solver", **options: Any) -> Solver:
    """A solver from its registry name (see `available_solvers()`), or the solver itself."""
    if isinstance(name, Solver):
        if options:
            raise InvalidArgument(f"solver options {sorted(options)} given with a Solver object; set them on it")
        return name
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown_name("solver", name, _REGISTRY)
    entry = _REGISTRY[name]
    try:
        return entry.factory(**{**entry.defaults, **options})
    except TypeError as e:
        raise InvalidArgument(f"solver {name!r} does not take these options: {sorted(options)} ({e})") from None


def available_solvers(deterministic: bool | None = None) -> list[str]:
    names = sorted(_REGISTRY)
    if deterministic is None:
        return names
    return [n for n in names if get_solver(n).deterministic == deterministic]


def registry_entries() -> dict[str, RegistryEntry]:
    return dict(_REGISTRY)
