"""Learned corrections on disk: a safetensors file whose metadata holds the record (model identity
(`field.identity()`), base solver, NFE, grids), plus a JSON sidecar (`<file>.json`) with the file's sha256 and a
readable copy of the record (checked on load by corrections.record). Both are written atomically (a temporary
file beside the target, then a rename); loading onto another model is refused with a clear error.

Three kinds, each saying how it is sampled (`solver_settings()`): `AMEDCorrection` (a predictor, its base solver,
AFS data, trained grids), `GridCorrection` (GITS or learned grids) and `CoefficientCorrection` (learned weight offsets).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import torch

from diffsolve.field import Field, as_field
from diffsolve.grids import karras, time_uniform
from diffsolve.errors import InvalidArgument
from diffsolve.corrections.features import denoise_with_features
from diffsolve.corrections.predictor import AMEDPredictor, TimeTable
from diffsolve.corrections.record import FORMAT, VERSION, CorruptCorrection, read_record, write_record

SHIPPED = Path(__file__).resolve().parent / "weights"


class IdentityMismatch(InvalidArgument):
    """A correction trained for one model was given another."""


def _check_identity(saved: str | None, field: Any, what: str) -> None:
    if field is None or saved is None:
        return
    have = field.correction_identity()
    if have != saved:
        raise IdentityMismatch(
            f"this {what} was trained for another model: it records the model identity\n  {saved[:200]}\nbut this "
            f"field is\n  {str(have)[:200]}\nA learned correction only fits the network it was trained on; train "
            "one for this model with `diffsolve tune` (or diffsolve.corrections.train_amed / gits_grid / learn_grid)")


def _grid_key(steps: int) -> str:
    return str(int(steps))


def _grid_tensors(grids: dict, afs_mean: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The tensors of a file holding grids (one per step count) and, for AFS, the mean data prediction."""
    out = {f"grid.{k}": torch.tensor(v, dtype=torch.float64) for k, v in sorted(grids.items())}
    if afs_mean is not None:
        out["afs_mean"] = afs_mean.detach().cpu().float().contiguous()
    return out


# ------------------------------------------------------------------------------------------------
# AMED
# ------------------------------------------------------------------------------------------------
@dataclass
class AMEDCorrection:
    """A trained AMED predictor (or its time-only table) with everything a solver needs to use it.

    Attributes:
        predictor: The network predictor, or its time-only table.
        base: The base solver it was trained for ("amed": AMED-Solver itself).
        afs: Whether the first step is the analytical one.
        afs_mean: The mean data prediction at the largest noise, for AFS; None is zero.
        grids: Step count -> the schedule times it was trained on.
        identity: The model identity it was trained for; None matches any model.
        meta: The training record (settings, losses, timings).
    """

    predictor: AMEDPredictor | TimeTable
    base: str = "amed"
    afs: bool = True
    afs_mean: torch.Tensor | None = None
    grids: dict[int, tuple[float, ...]] = dc_field(default_factory=dict)     # steps -> schedule times
    identity: str | None = None
    meta: dict = dc_field(default_factory=dict)

    @property
    def is_table(self) -> bool:
        """True for a time-only table (per-step constants), False for a network predictor."""
        return isinstance(self.predictor, TimeTable)

    @property
    def needs_features(self) -> bool:
        """True when the predictor reads a network feature at each step's start."""
        return not self.is_table and self.predictor.needs_features

    def predictor_s_floor(self) -> float:
        """The smallest noise level a step into zero aims at (0.002 for a table)."""
        return 0.002 if self.is_table else self.predictor.s_floor

    def fixed_row(self, t0: float, t1: float) -> tuple[float, float, float]:
        """A table's constants (r, c, a) for the step from time `t0` to `t1`."""
        return self.predictor.row_for(t0, t1)

    def check_field(self, field: Any) -> None:
        """Refuse (IdentityMismatch) a `field` of another model than the recorded identity; None passes."""
        _check_identity(self.identity, field, "AMED predictor")

    def denoise_with_features(self, ev, x: torch.Tensor, p) -> tuple[torch.Tensor, torch.Tensor]:
        """The data prediction of `ev` at (`x`, `p`) and the predictor's feature."""
        if self.predictor.features == "denoised":
            D = ev.denoise(x, p)
            return D, D
        return denoise_with_features(ev, x, p, self.predictor.module)

    def grid_function(self) -> Callable[..., torch.Tensor]:
        """The grid function (steps, schedule, **options): a trained grid, else the default AMED grid (uniform in t on a
        plain velocity field); a table or unknown options raise InvalidArgument for an untrained step count.
        """
        grids = dict(self.grids)

        def amed_trained_grid(steps: int, schedule: Any, **options: Any) -> torch.Tensor:
            if steps in grids:
                return torch.tensor(grids[steps], dtype=torch.float64)
            if self.is_table:
                raise InvalidArgument(f"this AMED time table was exported for {sorted(grids)} steps, not {steps}")
            allowed = ("t_min", "t_max", "final") if schedule is None else ("rho",)
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise InvalidArgument(f"grid_options {unknown} do not apply to the default AMED grid (used where "
                                      f"the predictor has no trained grid); allowed keys: {', '.join(allowed)}")
            if schedule is None:                # a plain velocity field: its default grid, uniform in t
                return time_uniform(steps, None, **options)
            return amed_grid(steps, schedule, **options)
        return amed_trained_grid

    def to_table(self, schedule: Any) -> "AMEDCorrection":
        """The time-only export: per-step constants on each trained grid (features replaced by zeros).

        `schedule`: the noise schedule the trained grid's times belong to.

        Raises:
            InvalidArgument: The predictor has more than one trained grid (use select_steps first).
        """
        if self.is_table:
            return self
        if len(self.grids) != 1:
            raise InvalidArgument("a time table holds one grid; this predictor has grids for steps "
                                  f"{sorted(self.grids)}: use select_steps(n) first")
        (steps, grid), = self.grids.items()
        table = self.predictor.time_table(grid, schedule)
        return AMEDCorrection(table, self.base, self.afs, self.afs_mean, {steps: grid}, self.identity,
                              {**self.meta, "exported_from": "time_only_predictor"})

    def select_steps(self, steps: int) -> "AMEDCorrection":
        """A copy holding only the grid of `steps` steps (InvalidArgument when it has none)."""
        if steps not in self.grids:
            raise InvalidArgument(f"no grid for {steps} steps; have {sorted(self.grids)}")
        return AMEDCorrection(self.predictor, self.base, self.afs, self.afs_mean, {steps: self.grids[steps]},
                              self.identity, dict(self.meta))

    def nfe_for(self, steps: int) -> int:
        """Model calls of a run of `steps` steps: two per step, one fewer with AFS."""
        return 2 * steps - (1 if self.afs else 0)

    def solver_settings(self) -> tuple[str, dict]:
        """How it is sampled: ("amed", ...) or ("amed_plugin", {"base": ...}), the predictor (its grids) as option."""
        plugin = {} if self.base == "amed" else {"base": self.base}
        return ("amed_plugin" if plugin else "amed"), {**plugin, "predictor": self}

    # --- files -----------------------------------------------------------------------------------------
    def sidecar(self) -> dict:
        """The record written into the file and its JSON sidecar."""
        return {"format": FORMAT, "version": VERSION, "kind": "amed", "model_identity": self.identity,
                "base": self.base, "afs": self.afs,
                "nfe": {_grid_key(k): self.nfe_for(k) for k in sorted(self.grids)},
                "grids": {_grid_key(k): list(v) for k, v in sorted(self.grids.items())},
                "predictor": ({"type": "table", "grid": list(self.predictor.grid),
                               "rows": [list(r) for r in self.predictor.rows]} if self.is_table else
                              {"type": "network", "config": self.predictor.config}),
                "meta": self.meta}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of the file: predictor weights or table rows, and the AFS mean."""
        out = {}
        if not self.is_table:
            out.update({f"predictor.{k}": v.detach().cpu().float().contiguous()
                        for k, v in self.predictor.state_dict().items()})
        else:
            out["table"] = torch.tensor(self.predictor.rows, dtype=torch.float64)
        if self.afs_mean is not None:
            out["afs_mean"] = self.afs_mean.detach().cpu().float().contiguous()
        return out

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors) and its sidecar atomically; returns the path (InvalidArgument on a bad path)."""
        return write_record(path, self.tensors(), self.sidecar())


def as_amed_correction(obj: Any, base: str = "amed", afs: bool | None = None) -> AMEDCorrection:
    """An AMEDCorrection from itself, a file, or a bare predictor / table (used with `base`, AFS off unless asked).

    Args:
        obj: An AMEDCorrection, an AMEDPredictor, a TimeTable, or the path of a saved predictor.
        base: The base solver a bare predictor is used with; `afs`: its AFS setting (None: off).

    Raises:
        InvalidArgument: `obj` is none of these, or the file holds a grid.
    """
    if isinstance(obj, AMEDCorrection):
        return obj
    if isinstance(obj, (AMEDPredictor, TimeTable)):
        grids = {len(obj.grid) - 1: tuple(obj.grid)} if isinstance(obj, TimeTable) else {}
        return AMEDCorrection(obj, base=base, afs=bool(afs), grids=grids)
    if isinstance(obj, (str, Path)):
        corr = load_correction(obj)
        if not isinstance(corr, AMEDCorrection):
            raise InvalidArgument(f"{obj} holds a {corr.kind} grid, not an AMED predictor")
        return corr
    raise InvalidArgument(f"predictor={type(obj).__name__}: give an AMEDCorrection, an AMEDPredictor, a TimeTable "
                          "or the path of a saved predictor")


# ------------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------------
@dataclass
class GridCorrection:
    """Optimized grids (schedule times, one list per step count) for one model and base solver.

    Attributes:
        kind: "gits" or "learned".
        grids: Step count -> schedule times.
        base: The base solver the grids were optimized for.
        identity: The model identity; None matches any model.
        meta: The search or training record.
        afs_mean: The data mean for grids learned with AFS (see grid_search.to_amed_table), else None.
    """

    kind: str                                   # 'gits' or 'learned'
    grids: dict[int, tuple[float, ...]]         # steps -> times
    base: str
    identity: str | None = None
    meta: dict = dc_field(default_factory=dict)
    afs_mean: torch.Tensor | None = None        # grids learned with the data-mean AFS (see grid_search.to_amed_table)

    def check_field(self, field: Any) -> None:
        """Refuse (IdentityMismatch) a `field` of another model than the recorded identity; None passes."""
        _check_identity(self.identity, field, f"{self.kind} grid")

    def grid(self, steps: int) -> list[float]:
        """The times of the `steps`-step grid (InvalidArgument when the file has none)."""
        if steps not in self.grids:
            raise InvalidArgument(f"no {self.kind} grid for {steps} steps; this file has {sorted(self.grids)} "
                                  "(train more with `diffsolve tune`)")
        return list(self.grids[steps])

    def grid_function(self) -> Callable[..., torch.Tensor]:
        """The grid function (steps, schedule) for `grid=`; it takes no grid options."""
        def optimized_grid(steps: int, schedule: Any, **options: Any) -> torch.Tensor:
            if options:
                raise InvalidArgument(f"an optimized grid takes no grid options, got {sorted(options)}")
            return torch.tensor(self.grid(steps), dtype=torch.float64)
        optimized_grid.__name__ = self.kind
        return optimized_grid

    def solver_settings(self) -> tuple[str, dict]:
        """How it is sampled: its base solver on these grids (the grid function as the "grid" option)."""
        return self.base, {"grid": self.grid_function()}

    def sidecar(self) -> dict:
        """The record written into the file and its JSON sidecar."""
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "model_identity": self.identity,
                "base": self.base, "nfe": self.meta.get("nfe", {}),
                "grids": {_grid_key(k): list(v) for k, v in sorted(self.grids.items())}, "meta": self.meta}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of the file: one per grid, and the AFS mean."""
        return _grid_tensors(self.grids, self.afs_mean)

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors) and its sidecar atomically; returns the path."""
        return write_record(path, self.tensors(), self.sidecar())

    def merged(self, other: "GridCorrection") -> "GridCorrection":
        """The grids of both (`other` wins on a shared step count); same model and kind only (else InvalidArgument)."""
        if other.identity != self.identity or other.kind != self.kind:
            raise InvalidArgument("only grids of the same kind for the same model merge")
        meta = {**self.meta, **other.meta, "nfe": {**self.meta.get("nfe", {}), **other.meta.get("nfe", {})}}
        return GridCorrection(self.kind, {**self.grids, **other.grids}, self.base, self.identity, meta)


# ------------------------------------------------------------------------------------------------
# Learned multistep weights
# ------------------------------------------------------------------------------------------------
TIME_WORDS = {"edm": "in the EDM frame of a Gaussian path", "native": "on a plain velocity field, in its own time t"}
COEFFICIENT_TIMES = tuple(TIME_WORDS)


@dataclass
class CoefficientCorrection:
    """Learned weight offsets of a multistep base rule (corrections.learned_multistep), each set on its learned grid.

    Attributes:
        grids: Step count -> schedule times.
        weights: Step count -> one row of offsets per step, newest first.
        base: The base solver (deis, ipndm, ipndm_v).
        afs: Whether the first step is the analytical one.
        afs_mean: The data mean for AFS; None is zero.
        identity: The model identity; None matches any model.
        meta: The training record.
        time: "edm" (the EDM frame of a Gaussian path) or "native" (a plain velocity field's own time t).
    """

    grids: dict[int, tuple[float, ...]]                      # steps -> schedule times
    weights: dict[int, tuple[tuple[float, ...], ...]]        # steps -> one row of offsets per step, newest first
    base: str = "deis"
    afs: bool = True
    afs_mean: torch.Tensor | None = None
    identity: str | None = None
    meta: dict = dc_field(default_factory=dict)
    time: str = "edm"
    kind = "coefficients"

    def __post_init__(self) -> None:
        if self.time not in COEFFICIENT_TIMES:
            raise InvalidArgument(f"time={self.time!r}; allowed values: {', '.join(COEFFICIENT_TIMES)}")

    def check_field(self, field: Any) -> None:
        """Refuse (IdentityMismatch) a `field` of another model than the recorded identity, or a plain velocity field
        for weights learned in the EDM frame of a Gaussian path (and the reverse); None passes."""
        if field is not None and field.has_schedule != (self.time == "edm"):
            raise IdentityMismatch(
                f"these learned coefficients were learned {TIME_WORDS[self.time]}; this field "
                f"{'has a Gaussian path' if field.has_schedule else 'is a plain velocity field (schedule=None)'}: "
                "learn them for this model with `diffsolve tune weights` (learn_coefficients)")
        _check_identity(self.identity, field, "set of learned coefficients")

    def nfe_for(self, steps: int) -> int:
        """Model calls of a run of `steps` steps: one per step, one fewer with AFS."""
        return steps - (1 if self.afs else 0)

    def grid_function(self) -> Callable[..., torch.Tensor]:
        """The grid function (steps, schedule) for the learned step counts."""
        grids = dict(self.grids)

        def coefficients_grid(steps: int, schedule: Any, **options: Any) -> torch.Tensor:
            if options:
                raise InvalidArgument(f"learned coefficients take no grid options, got {sorted(options)}")
            if steps not in grids:
                raise InvalidArgument(f"these coefficients were learned for {sorted(grids)} steps (NFE "
                                      f"{[self.nfe_for(k) for k in sorted(grids)]}), not {steps}")
            return torch.tensor(grids[steps], dtype=torch.float64)
        return coefficients_grid

    def weights_for(self, t: torch.Tensor) -> tuple[tuple[float, ...], ...]:
        """The offsets for the grid `t`, which must be the grid they were learned on; zeros when none were learned.

        Raises:
            InvalidArgument: `t` is not one of the learned grids.
        """
        steps = int(t.numel()) - 1
        if not self.grids:
            return tuple(() for _ in range(steps))
        grid = self.grids.get(steps)
        if grid is None or not torch.allclose(t.double(), torch.tensor(grid, dtype=torch.float64), rtol=1e-9,
                                              atol=1e-12):
            raise InvalidArgument(f"learned coefficients belong to the grid they were learned on ({sorted(self.grids)} "
                                  "steps); run without grid= (the solver's own grid) and with nfe= or steps= "
                                  f"matching one of NFE {[self.nfe_for(k) for k in sorted(self.grids)]}")
        return self.weights[steps]

    def solver_settings(self) -> tuple[str, dict]:
        """How it is sampled: ("learned_multistep", {"base": ..., "coefficients": itself}), on its learned grids."""
        return "learned_multistep", {"base": self.base, "coefficients": self}

    def sidecar(self) -> dict:
        """The record written into the file and its JSON sidecar."""
        return {"format": FORMAT, "version": VERSION, "kind": self.kind, "model_identity": self.identity,
                "base": self.base, "afs": self.afs, "time": self.time,
                "nfe": {_grid_key(k): self.nfe_for(k) for k in sorted(self.grids)},
                "grids": {_grid_key(k): list(v) for k, v in sorted(self.grids.items())},
                "weights": {_grid_key(k): [list(r) for r in v] for k, v in sorted(self.weights.items())},
                "meta": self.meta}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of the file: one per grid, and the AFS mean."""
        return _grid_tensors(self.grids, self.afs_mean)

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors) and its sidecar atomically; returns the path."""
        return write_record(path, self.tensors(), self.sidecar())


def as_coefficient_correction(obj: Any) -> CoefficientCorrection:
    """A CoefficientCorrection from itself or the path of a saved one (`obj`); InvalidArgument otherwise."""
    if isinstance(obj, CoefficientCorrection):
        return obj
    if isinstance(obj, (str, Path)):
        corr = load_correction(obj)
        if not isinstance(corr, CoefficientCorrection):
            raise InvalidArgument(f"{obj} holds a {getattr(corr, 'kind', 'amed')} correction, not learned coefficients")
        return corr
    raise InvalidArgument(f"coefficients={type(obj).__name__}: give a CoefficientCorrection or the path of a saved one")


# ------------------------------------------------------------------------------------------------
# Reading and writing
# ------------------------------------------------------------------------------------------------
def _amed_from(rec: dict, tensors: dict[str, torch.Tensor], path: Path) -> AMEDCorrection:
    pred = rec["predictor"]
    if pred["type"] == "table":
        predictor: Any = TimeTable(pred["grid"], pred["rows"])
    else:
        try:
            predictor = AMEDPredictor(**pred["config"])
            state = {k[len("predictor."):]: v for k, v in tensors.items() if k.startswith("predictor.")}
            predictor.load_state_dict(state, strict=True)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CorruptCorrection(f"{path}: its predictor does not match its config ({e})"[:400]) from None
        predictor.eval().requires_grad_(False)
    return AMEDCorrection(predictor, rec["base"], rec["afs"], tensors.get("afs_mean"), rec["grids"],
                          rec["identity"], rec["meta"])


def load_correction(path: str | Path, field: Any = None) -> AMEDCorrection | GridCorrection | CoefficientCorrection:
    """A saved correction (the record inside the file is the one used); with `field=`, it must fit that model.

    Args:
        path: The .safetensors file.
        field: A field (or None) whose model the correction must fit.

    Raises:
        IdentityMismatch: It was trained for another model than `field`'s.
        CorruptCorrection: A sidecar that differs from the record, or a file that does not match its checksum.
    """
    path = Path(path)
    rec, tensors = read_record(path)
    corr = correction_from(rec, tensors, path)
    if field is not None:
        corr.check_field(field)
    return corr


# Correction kinds defined above this module (the `tune auto` container) register how they are built from a record.
LOADERS: dict[str, Callable[[dict, dict, Path], Any]] = {}


def correction_from(rec: dict, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    """The correction object of a parsed record and its tensors (`path` named in errors)."""
    if rec["kind"] in LOADERS:
        return LOADERS[rec["kind"]](rec, tensors, path)
    if rec["kind"] == "amed":
        return _amed_from(rec, tensors, path)
    if rec["kind"] == "coefficients":
        return CoefficientCorrection(rec["grids"], rec["weights"], rec["base"], rec["afs"], tensors.get("afs_mean"),
                                     rec["identity"], rec["meta"], rec["time"])
    return GridCorrection(rec["kind"], rec["grids"], rec["base"], rec["identity"], rec["meta"],
                          tensors.get("afs_mean"))


def amed_grid(steps: int, schedule: Any, *, rho: float = 7.0) -> torch.Tensor:
    """The default AMED grid: steps + 1 EDM-polynomial levels (exponent `rho`) from sigma_max to sigma_min, the last
    replaced by 0 (a final step straight to the data, its intermediate point placed against sigma_min).
    """
    t = karras(steps, schedule, rho=rho, final="min")
    t[0], t[-1] = schedule.t_max, 0.0
    return t


def to_amed_table(grid: GridCorrection, field: Any, afs_mean: torch.Tensor | None = None):
    """A learned grid of 2M steps as AMED-Plugin per-step constants (grids of an odd step count are skipped).

    The even points are the main grid, each odd point the intermediate time (r from its place in log s; c = a = 1).
    With the grid's AFS the result runs at the grid's NFE through `Sampler(model, "amed_plugin", base=...,
    predictor=table)`. `field`: the model or field it was learned on; `afs_mean`: None takes the grid's own.

    Returns:
        (dict[int, AMEDCorrection]): One time table per main-grid step count M.
    """
    field = field if isinstance(field, Field) else as_field(field)
    sch = field.schedule
    afs = bool(grid.meta.get("afs"))
    mean = afs_mean if afs_mean is not None else grid.afs_mean
    s_floor = sch.sigma_min
    out = {}
    for steps, t in grid.grids.items():
        if steps % 2:
            continue
        s = [float(v) for v in sch.edm_sigma(torch.tensor(t, dtype=torch.float64))]
        rows = []
        for n in range(0, steps, 2):
            s0, sm, s1 = s[n], s[n + 1], s[n + 2] if s[n + 2] > 0 else min(s_floor, 0.5 * s[n])
            rows.append((math.log(s0 / sm) / math.log(s0 / s1), 1.0, 1.0))
        main = tuple(t[0::2])
        out[steps // 2] = AMEDCorrection(TimeTable(main, tuple(rows)), grid.base, afs, mean, {steps // 2: main},
                                         grid.identity, {"from": "learned grid", **grid.meta})
    return out
