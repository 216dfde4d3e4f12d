"""The one record of a learned correction and its checks.

The record (format, kind, model identity, base solver, AFS, grids, weights, predictor) lives inside the
safetensors file's own metadata, so the sha256 of the file covers the record and the tensors together. The JSON
sidecar beside it holds that sha256 and a readable copy of the record; on load the checksum must match and the
copy must equal the record field for field, so an edited sidecar (a removed model identity, edited grids) is
refused instead of used. Every field is then parsed with its type; anything malformed raises
`CorruptCorrection` (an InvalidArgument) naming the file and the field.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load as load_tensors, save as save_tensors

from diffsolve.checks import check_writable
from diffsolve.errors import InvalidArgument
from diffsolve.files import atomic_write_bytes

FORMAT = "diffsolve-correction"
VERSION = 1
KINDS = ("amed", "gits", "learned", "coefficients", "pas")
SIDECAR_ONLY = ("sha256", "file")          # what the sidecar adds to the record
# parse(record, path) of the kinds registered from above (corrections.auto_file: the `tune auto` container)
RECORD_PARSERS: dict[str, Callable[[dict, Path], dict]] = {}


class CorruptCorrection(InvalidArgument):
    """A correction file or its sidecar is missing, edited, truncated or malformed."""


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar beside a correction file: `<file>.json`.

    Args:
        path: The .safetensors file.

    Returns:
        The sidecar's path.
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def _json(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCorrection(f"{where} is not valid JSON ({e}); rebuild the correction with `diffsolve tune`"
                                ) from None


def embedded_record(blob: bytes, path: Path) -> dict:
    """The record stored in a safetensors file's metadata.

    The header is read by hand: a truncated or foreign file gets our error, not the parser's.

    Args:
        blob: The file's bytes.
        path: The file, named in errors.

    Returns:
        (dict): The record, not yet parsed.

    Raises:
        CorruptCorrection: The file is truncated, its header is not JSON, or it holds no diffsolve record.
    """
    if len(blob) < 8:
        raise CorruptCorrection(f"{path}: {len(blob)} bytes, not a safetensors file (truncated?)")
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8:
        raise CorruptCorrection(f"{path}: its header claims {size} bytes but the file has {len(blob) - 8} (truncated?)")
    header = _json(blob[8:8 + size], f"{path} (safetensors header)")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("diffsolve"), str):
        raise CorruptCorrection(f"{path}: no diffsolve correction record in its metadata (not a correction file)")
    record = _json(meta["diffsolve"], f"{path} (the record in its metadata)")
    if not isinstance(record, dict):
        raise CorruptCorrection(f"{path}: its record is a {type(record).__name__}, not an object")
    return record


def read_record(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The checked record and the tensors of a correction file.

    The sidecar's sha256 must match the file and its copy of the record must equal the one inside the file.

    Args:
        path: The .safetensors file.

    Returns:
        The parsed record (parse_record) and the tensors by name.

    Raises:
        InvalidArgument: The file does not exist.
        CorruptCorrection: The sidecar is missing or malformed, the checksum differs, the sidecar's copy differs from
            the record, the tensors cannot be read, or a field is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"{path} does not exist")
    side = sidecar_path(path)
    if not side.is_file():
        raise CorruptCorrection(f"{side} is missing: a correction is a .safetensors file and its .json sidecar")
    info = _json(side.read_bytes(), str(side))
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CorruptCorrection(f"{side} is not a diffsolve correction sidecar")
    blob = path.read_bytes()
    digest = info.get("sha256")
    if not isinstance(digest, str):
        raise CorruptCorrection(f"{side}: field 'sha256' missing or not a string")
    if hashlib.sha256(blob).hexdigest() != digest:
        raise CorruptCorrection(f"{path} does not match the checksum in its sidecar (a partial, edited or foreign "
                                "file)")
    record = embedded_record(blob, path)
    copy = {k: v for k, v in info.items() if k not in SIDECAR_ONLY}
    changed = sorted(k for k in set(record) | set(copy) if record.get(k, _MISSING) != copy.get(k, _MISSING))
    if changed:
        raise CorruptCorrection(f"{side} differs from the record inside {path.name} in {changed}: the sidecar was "
                                "edited; the file's own record is the one that counts (restore the sidecar or "
                                "rebuild the correction)")
    try:
        tensors = load_tensors(blob)
    except Exception as e:          # safetensors raises its own error types for malformed data
        raise CorruptCorrection(f"{path}: its tensors cannot be read ({type(e).__name__}: {e})") from None
    return parse_record(record, path), tensors


_MISSING = object()


def field_of_record(record: dict, name: str, kinds: type | tuple, path: Path, *, optional: bool = False) -> Any:
    """The record's field `name`, of type `kinds` (None when `optional` and absent); CorruptCorrection otherwise."""
    if name not in record:
        if optional:
            return None
        raise CorruptCorrection(f"{path}: field {name!r} is missing")
    value = record[name]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise CorruptCorrection(f"{path}: field {name!r} is {value!r}, not a {_names(kinds)}")
    if not isinstance(value, kinds):
        raise CorruptCorrection(f"{path}: field {name!r} is {value!r}, not a {_names(kinds)}")
    return value


def _names(kinds: type | tuple) -> str:
    return " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


def _floats(value: Any, where: str, path: Path) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in value):
        raise CorruptCorrection(f"{path}: {where} must be a list of finite numbers, got {value!r}"[:300])
    return tuple(float(v) for v in value)


def _steps(key: Any, where: str, path: Path) -> int:
    if not (isinstance(key, str) and key.isdigit() and int(key) >= 1):
        raise CorruptCorrection(f"{path}: {where} key {key!r} is not a step count")
    return int(key)


def parse_grids(record: dict, path: Path) -> dict[int, tuple[float, ...]]:
    """The record's "grids": step count -> strictly monotone times >= 0, steps + 1 of them.

    Args:
        record: The record read from the file.
        path: The file, named in errors.

    Returns:
        The grids as tuples keyed by step count.

    Raises:
        CorruptCorrection: "grids" is missing or malformed.
    """
    grids = {}
    for key, value in field_of_record(record, "grids", dict, path).items():
        steps = _steps(key, "grids", path)
        grid = _floats(value, f"grids[{key!r}]", path)
        down, up = all(b < a for a, b in zip(grid, grid[1:])), all(b > a for a, b in zip(grid, grid[1:]))
        if len(grid) != steps + 1 or not (down or up) or min(grid) < 0:
            raise CorruptCorrection(f"{path}: grids[{key!r}] must hold {steps + 1} strictly monotone times >= 0")
        grids[steps] = grid
    return grids


def parse_record(record: dict, path: Path) -> dict:
    """The record's fields with their types checked; grids and weights as tuples keyed by step count.

    Args:
        record: The record read from the file.
        path: The file, named in errors.

    Returns:
        (dict): "kind", "identity", "base", "grids", "meta", and by kind "afs", "weights", "predictor".

    Raises:
        CorruptCorrection: A field is missing or malformed, or the format, version or kind is not one this
            diffsolve reads.
    """
    if field_of_record(record, "format", str, path) != FORMAT:
        raise CorruptCorrection(f"{path}: format {record['format']!r} is not {FORMAT!r}")
    if field_of_record(record, "version", int, path) != VERSION:
        raise CorruptCorrection(f"{path}: version {record['version']!r}; this diffsolve reads version {VERSION}")
    kind = field_of_record(record, "kind", str, path)
    if kind in RECORD_PARSERS:                  # kinds defined above this module (the `tune auto` container)
        return RECORD_PARSERS[kind](record, path)
    if kind not in KINDS:
        raise CorruptCorrection(f"{path}: unknown correction kind {kind!r}; allowed values: "
                                f"{', '.join(KINDS + tuple(RECORD_PARSERS))}")
    out = {"kind": kind, "identity": field_of_record(record, "model_identity", str, path, optional=True),
           "base": field_of_record(record, "base", str, path), "grids": parse_grids(record, path),
           "meta": field_of_record(record, "meta", dict, path, optional=True) or {}}
    if kind in ("amed", "coefficients", "pas"):
        out["afs"] = field_of_record(record, "afs", bool, path)
    if kind in ("coefficients", "pas"):
        out["weights"] = _step_rows(record, "weights", out["grids"], path)
        # files from before plain-field weights hold no "time": they were all learned in the EDM frame
        out["time"] = field_of_record(record, "time", str, path, optional=True) or "edm"
        if out["time"] not in ("edm", "native"):
            raise CorruptCorrection(f"{path}: time {out['time']!r} is neither 'edm' nor 'native'")
    if kind == "pas":
        out["rank"] = field_of_record(record, "rank", int, path)
        out["directions"] = _step_rows(record, "directions", out["grids"], path)
    if kind == "amed":
        out["predictor"] = _predictor(field_of_record(record, "predictor", dict, path), path)
    return out


def _step_rows(record: dict, name: str, grids: dict, path: Path) -> dict:
    """Step count -> one row of floats per step, for every learned grid (`name`: "weights" or "directions")."""
    rows_of = {}
    for key, rows in field_of_record(record, name, dict, path).items():
        steps = _steps(key, name, path)
        if not isinstance(rows, list):
            raise CorruptCorrection(f"{path}: {name}[{key!r}] must be a list of rows")
        rows_of[steps] = tuple(_floats(r, f"{name}[{key!r}] row", path) for r in rows)
    if set(rows_of) != set(grids) or any(len(rows_of[k]) != k for k in rows_of):
        raise CorruptCorrection(f"{path}: every learned grid needs one row of {name} per step")
    return rows_of


def _predictor(pred: dict, path: Path) -> dict:
    kind = pred.get("type")
    if kind == "table":
        grid = _floats(pred.get("grid"), "predictor.grid", path)
        rows = pred.get("rows")
        if not isinstance(rows, list):
            raise CorruptCorrection(f"{path}: predictor.rows must be a list of (r, c, a) rows")
        rows = tuple(_floats(r, "predictor.rows row", path) for r in rows)
        if any(len(r) != 3 for r in rows):
            raise CorruptCorrection(f"{path}: predictor.rows must hold (r, c, a) triples")
        return {"type": "table", "grid": grid, "rows": rows}
    if kind == "network":
        config = pred.get("config")
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise CorruptCorrection(f"{path}: predictor.config must be an object of keyword arguments")
        return {"type": "network", "config": config}
    raise CorruptCorrection(f"{path}: predictor.type {kind!r}; allowed values: 'table', 'network'")


def write_record(path: str | Path, tensors: dict[str, torch.Tensor], side: dict) -> Path:
    """Write a correction file holding `tensors` and the record `side`, and its sidecar, atomically.

    Args:
        path: The .safetensors file.
        tensors: The tensors, by name.
        side: The record (format, version, kind, ...).

    Returns:
        The path.

    Raises:
        InvalidArgument: The path does not end in .safetensors or its folder cannot be written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidArgument(f"{path}: a correction is saved as a .safetensors file (plus a .json sidecar)")
    check_writable(path.parent, "path")
    # the record goes inside the file, so the file's sha256 covers it; the sidecar holds that sha256 and a copy
    blob = save_tensors(tensors, metadata={"diffsolve": json.dumps(side, sort_keys=True)})
    side = {**side, "sha256": hashlib.sha256(blob).hexdigest(), "file": path.name}
    atomic_write_bytes(path, blob)
    atomic_write_bytes(sidecar_path(path), (json.dumps(side, indent=1, sort_keys=True) + "\n").encode())
    return path
