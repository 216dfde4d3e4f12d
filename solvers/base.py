"""The solver protocol (diffrax style: a step takes the state and returns the new one) and the registry.

A solver is planned once per grid on the host (`plan`: every float64 coefficient of the run, no tensors on the
device), then stepped: `step(ev, x, i, plan, state) -> (x_next, state)`. Nothing about a run is kept on the
solver object, so one solver serves any batch size, device or number of runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, ClassVar, Protocol

import torch

from ..errors import InvalidArgument, unknown_name
from ..field import EvalPoint, VectorField


class Evaluator(Protocol):
    """What a step may call: the field's data prediction or slope, counted and checked by the loop."""

    def denoise(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor: ...

    def velocity(self, x: torch.Tensor, p: EvalPoint) -> torch.Tensor: ...


@dataclass(frozen=True)
class Plan:
    """Everything a run's steps need, computed on the host in float64 before the loop."""

    t: torch.Tensor                     # grid times, float64, steps + 1 values
    points: tuple[EvalPoint, ...]       # path scalars at each grid time
    nfe: int                            # model evaluations the run will make
    steps_data: tuple[Any, ...] = ()    # one entry per step, solver specific
    extra: dict = dc_field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.t.numel() - 1

    @property
    def ends_at_zero(self) -> bool:
        return float(self.t[-1]) == 0.0


class Solver:
    """Base class: metadata plus the plan / init / step protocol."""

    name: ClassVar[str] = "solver"
    order: int = 1                      # global order of convergence with the default options
    calls_per_step: int = 1             # model evaluations per step (before savings on first/last steps)
    deterministic: ClassVar[bool] = True
    needs_schedule: ClassVar[bool] = True
    citation: ClassVar[str] = ""

    def model_calls(self, steps: int, field: VectorField, ends_at_zero: bool) -> int:
        """Model evaluations (per sample, before guidance) that `steps` steps will make."""
        return steps * self.calls_per_step

    def plan(self, field: VectorField, t: torch.Tensor) -> Plan:
        raise NotImplementedError

    def init(self, plan: Plan) -> Any:
        return ()

    def step(self, ev: Evaluator, x: torch.Tensor, i: int, plan: Plan, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    # --- helpers shared by subclasses -----------------------------------------------------------
    def check_field(self, field: VectorField) -> None:
        if self.needs_schedule:
            field.require_schedule(self.name)

    def grid_points(self, field: VectorField, t: torch.Tensor) -> tuple[EvalPoint, ...]:
        return tuple(field.at(float(v)) for v in t)

    def describe(self) -> dict:
        return {"name": self.name, "order": self.order, "calls_per_step": self.calls_per_step,
                "deterministic": self.deterministic, "needs_schedule": self.needs_schedule}

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
    if name not in _REGISTRY:
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
