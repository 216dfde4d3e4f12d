"""One file for several budgets: what `diffsolve tune auto` writes, and how `Sampler(model, correction=...)` reads
any correction.

An `AutoCorrection` holds, per NFE, the correction that won there: a learned one (AMED, grid, coefficients, or a
kind registered later) or, where no learned candidate beat the plain solvers, a `SolverChoice` (an un-learned
solver on a named grid). The file is an ordinary correction file (corrections.record): its record holds one
sub-record per NFE under "entries", the tensors of the NFE-n entry are stored as "nfe<n>.<name>", and the sha256 in
the sidecar covers all of it.

    Sampler(model, correction="auto.safetensors").run(nfe=5, seed=0)     # whatever won at NFE 5
    load_correction("auto.safetensors").entry(5)                           # that winner's correction object
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.grids import GRIDS
from diffsolve.sampler_hooks import CorrectionRun, register_correction_resolver
from diffsolve.corrections.io import LOADERS, IdentityMismatch, correction_from, load_correction
from diffsolve.corrections.record import (FORMAT, RECORD_PARSERS, VERSION, CorruptCorrection, field_of_record,
                                          parse_record, write_record)


@dataclass
class SolverChoice:
    """An un-learned solver on a named grid, chosen for one budget (where no learned correction beat it).

    Attributes:
        solver: The registered solver's name.
        grid: A grid name (diffsolve.grids.GRIDS); None: the solver's or schedule's default.
        nfe: The budget it was chosen for.
    """
    solver: str
    grid: str | None
    nfe: int
    kind = "solver"

    def solver_settings(self) -> tuple[str, dict]:
        """How it is sampled: the solver, with its grid as the "grid" option.

        Returns:
            (solver name, {"grid": name} or {}).
        """
        return self.solver, ({"grid": self.grid} if self.grid is not None else {})

    def sidecar(self) -> dict:
        """Its entry in an AutoCorrection's record.

        Returns:
            {"kind": "solver", "solver", "grid", "nfe"}.
        """
        return {"kind": "solver", "solver": self.solver, "grid": self.grid, "nfe": self.nfe}

    def tensors(self) -> dict[str, torch.Tensor]:
        """None: a plain solver holds no tensors.

        Returns:
            An empty mapping.
        """
        return {}


@dataclass
class AutoCorrection:
    """Per NFE, the correction (or plain solver) that won on held-out seeds: what `diffsolve tune auto` writes.

    Attributes:
        entries: NFE -> its winner: a correction object with `solver_settings()`, or a SolverChoice.
        identity: The model identity it was tuned for; None matches any model.
        meta: The tuning record (the table of every candidate, seeds, seconds, model evaluations).
    """
    entries: dict[int, Any]
    identity: str | None = None
    meta: dict = dc_field(default_factory=dict)
    kind = "auto"

    def check_field(self, field: Any) -> None:
        """Refuse a `field` of another model than the recorded identity (None passes).

        Args:
            field: The field to check, or None.

        Raises:
            IdentityMismatch: The field's identity differs.
        """
        if field is None or self.identity is None:
            return
        if field.correction_identity() != self.identity:
            raise IdentityMismatch(
                f"this tune-auto file was made for another model: it records\n  {self.identity[:200]}\nbut this field "
                f"is\n  {str(field.correction_identity())[:200]}\nrun `diffsolve tune auto` for this model")

    def entry(self, nfe: int) -> Any:
        """The winner at `nfe`.

        Args:
            nfe: The budget.

        Returns:
            Its correction object or SolverChoice.

        Raises:
            InvalidArgument: The file holds no such budget (the ones it holds are named).
        """
        if nfe not in self.entries:
            raise InvalidArgument(f"nfe={nfe}: this file was tuned for NFE {sorted(self.entries)}")
        return self.entries[nfe]

    def solver_settings(self) -> tuple[str, dict]:
        """How it is sampled, when every budget uses the same solver and options; else refused.

        Returns:
            The shared (solver name, options).

        Raises:
            InvalidArgument: The budgets use different solvers (use entry(nfe).solver_settings()).
        """
        settings = [e.solver_settings() for _, e in sorted(self.entries.items())]
        if any(s[0] != settings[0][0] for s in settings):
            raise InvalidArgument(f"this file samples each NFE with its own solver ({[s[0] for s in settings]}); "
                                  "use entry(nfe).solver_settings(), or Sampler(model, correction=file)")
        return settings[0]

    def sidecar(self) -> dict:
        """The record written into the file and its JSON sidecar.

        Returns:
            format, version, kind "auto", the model identity, "entries" (NFE -> sub-record) and meta.
        """
        return {"format": FORMAT, "version": VERSION, "kind": "auto", "model_identity": self.identity,
                "base": "auto", "grids": {}, "meta": self.meta,
                "entries": {str(n): e.sidecar() for n, e in sorted(self.entries.items())}}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of every entry, the NFE-n entry's as "nfe<n>.<name>".

        Returns:
            The tensors by name.
        """
        return {f"nfe{n}.{k}": v for n, e in sorted(self.entries.items()) for k, v in e.tensors().items()}

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors) and its sidecar atomically.

        Args:
            path: The file.

        Returns:
            The path.
        """
        return write_record(path, self.tensors(), self.sidecar())


def _parse_auto(record: dict, path: Path) -> dict:
    entries = {}
    for key, sub in field_of_record(record, "entries", dict, path).items():
        if not (isinstance(key, str) and key.isdigit() and int(key) >= 1) or not isinstance(sub, dict):
            raise CorruptCorrection(f"{path}: entries[{key!r}] is not an NFE with its record")
        if sub.get("kind") == "solver":
            grid = field_of_record(sub, "grid", str, path, optional=True)
            if grid is not None and grid not in GRIDS:
                raise CorruptCorrection(f"{path}: entries[{key!r}] names an unknown grid {grid!r}")
            entries[int(key)] = {"kind": "solver", "solver": field_of_record(sub, "solver", str, path), "grid": grid,
                                 "nfe": field_of_record(sub, "nfe", int, path)}
        else:
            entries[int(key)] = parse_record(sub, path)
    if not entries:
        raise CorruptCorrection(f"{path}: a tune-auto file holds no budgets")
    return {"kind": "auto", "identity": field_of_record(record, "model_identity", str, path, optional=True),
            "meta": field_of_record(record, "meta", dict, path, optional=True) or {}, "entries": entries}


def _load_auto(rec: dict, tensors: dict[str, torch.Tensor], path: Path) -> AutoCorrection:
    entries = {}
    for n, sub in rec["entries"].items():
        if sub["kind"] == "solver":
            entries[n] = SolverChoice(sub["solver"], sub["grid"], sub["nfe"])
            continue
        prefix = f"nfe{n}."
        entries[n] = correction_from(sub, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                     path)
    return AutoCorrection(entries, rec["identity"], rec["meta"])


def correction_runs(field: Any, correction: Any) -> list[CorrectionRun]:
    """How `Sampler(model, correction=...)` samples a correction: one run, or one per NFE for a tune-auto file.

    Args:
        field: The Sampler's field (the correction must fit its model).
        correction: A correction file's path, or a correction object (with `solver_settings()`).

    Returns:
        The runs: solver, options (the grid among them), the step counts tuned, the NFE of a tune-auto entry.

    Raises:
        InvalidArgument: `correction` is neither; IdentityMismatch: it was tuned for another model.
    """
    corr = load_correction(correction, field) if isinstance(correction, (str, Path)) else correction
    if not hasattr(corr, "solver_settings"):
        raise InvalidArgument(f"correction={type(correction).__name__}: give the path of a file `diffsolve tune` wrote "
                              "or a correction object (AMEDCorrection, GridCorrection, CoefficientCorrection, "
                              "AutoCorrection)")
    if hasattr(corr, "check_field"):
        corr.check_field(field)
    if isinstance(corr, AutoCorrection):
        return [_run(e, n) for n, e in sorted(corr.entries.items())]
    return [_run(corr, corr.nfe if isinstance(corr, SolverChoice) else None)]


def _run(corr: Any, nfe: int | None) -> CorrectionRun:
    solver, options = corr.solver_settings()
    steps = tuple(sorted(getattr(corr, "grids", {}) or ()))
    return CorrectionRun(solver, options, steps, nfe, corr)


RECORD_PARSERS["auto"] = _parse_auto
LOADERS["auto"] = _load_auto
register_correction_resolver(correction_runs)
