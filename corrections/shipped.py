"""The corrections shipped with diffsolve (corrections/weights): looked up by the model identity of a field, and the
`grid="gits"` / `grid="learned"` names that resolve to the shipped grid of the field's model.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.grids import register_field_grid
from diffsolve.corrections.io import SHIPPED, load_correction


def find_shipped(field: Any, kind: str, base: str | None = None, folder: str | Path | None = None):
    """The correction of `kind` shipped for this field's model (and base solver, for AMED), or a clear error.

    Args:
        field: The field whose model identity is looked up.
        kind: "amed", "gits", "learned" or "coefficients".
        base: The base solver it must be for; None takes any.
        folder: Where to look; None is the shipped corrections/weights.

    Returns:
        (AMEDCorrection | GridCorrection | CoefficientCorrection): The loaded correction.

    Raises:
        InvalidArgument: None ships for this model (and base).
    """
    ident = field.correction_identity()
    folder = Path(folder) if folder is not None else SHIPPED
    seen = []
    for side in sorted(folder.glob("*.safetensors.json")):
        try:
            info = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        seen.append(f"{info.get('kind')}[{info.get('base')}]")
        if info.get("kind") != kind or info.get("model_identity") != ident or ident is None:
            continue
        if base is not None and info.get("base") != base:
            continue
        return load_correction(side.with_name(side.name[: -len(".json")]))
    what = f"{kind} correction" + (f" for base={base!r}" if base else "")
    raise InvalidArgument(f"no {what} ships for this model (shipped: {', '.join(seen) or 'none'}, all for the "
                          "built-in MNIST UNet); train one with `diffsolve tune` and pass the file it writes as "
                          "predictor=, coefficients= or grid=")



def shipped_or_untrained(field: Any, kind: str, base: str, untrained: Callable[[], Any], fallback: str, who: str,
                         warn: bool) -> Any:
    """The correction of `kind` shipped for the field's model, else `untrained()` (with a warning when `warn`).

    Args:
        field: The field whose model the shipped correction must fit.
        kind: The correction kind looked up ("amed", "coefficients", ...).
        base: The base solver it must be for.
        untrained: Builds the untrained starting point used when none ships.
        fallback: What the warning says runs instead (e.g. "Running the base rule 'deis' with zero offsets").
        who: The solver name that opens the warning.
        warn: Whether to warn when falling back.

    Returns:
        The shipped correction, or the untrained one.
    """
    try:
        return find_shipped(field, kind, base)
    except InvalidArgument as e:
        if warn:
            warnings.warn(f"{who}: {e}. {fallback}.", UserWarning, stacklevel=5)
        return untrained()

def shipped_grid(kind: str) -> Callable[[Any, Any], Callable[..., torch.Tensor]]:
    """The resolver of `grid=kind`: the grid of that kind shipped for a field's model (registered as a field grid).

    Args:
        kind: The kind of grid correction to look up: "gits" or "learned".

    Returns:
        Callable: `resolve(field, solver) -> grid function`: the shipped grid of `kind` for the field's model,
            preferring the one tuned for the solver's name as base and else any base.

    Raises:
        InvalidArgument: Raised by the returned resolver when no grid of `kind` ships for the field's model.
    """
    def resolve(field: Any, solver: Any) -> Callable[..., torch.Tensor]:
        """The shipped grid function of `kind` for `field`'s model, for `solver`'s base if one ships."""
        base = getattr(solver, "name", None)
        try:
            corr = find_shipped(field, kind, base)
        except InvalidArgument:
            corr = find_shipped(field, kind)       # a grid tuned for one base solver still helps another
        return corr.grid_function()
    return resolve


gits_shipped = shipped_grid("gits")
learned_shipped = shipped_grid("learned")
register_field_grid("gits", gits_shipped)
register_field_grid("learned", learned_shipped)
