"""Learned few-step corrections for a given network: AMED-Solver / AMED-Plugin predictors, GITS and learned
time grids, learned multistep weights. Each is trained once per model (`diffsolve tune`), saved as safetensors plus a JSON sidecar that
records the model identity, and used through the ordinary Sampler:

    Sampler(model, "amed_plugin", base="ipndm", predictor="amed.safetensors").run(nfe=5)
    Sampler(model, "ipndm", grid=load_correction("gits.safetensors").grid(5)).run()

The built-in MNIST UNet ships with trained ones (corrections/weights), so `Sampler(load_mnist_unet(),
"amed_plugin", base="ipndm").run(nfe=5)` and `grid="gits"` / `grid="learned"` need nothing else.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AMEDPredictor": "predictor", "TimeTable": "predictor",
    "AMEDCorrection": "io", "GridCorrection": "io", "CoefficientCorrection": "io", "load_correction": "io", "IdentityMismatch": "io",
    "amed_grid": "io", "find_shipped": "io",
    "train_amed": "train", "steps_for_nfe": "train",
    "gits_grid": "grid_search", "learn_grid": "grid_search", "gits_cost_matrix": "grid_search",
    "gits_dynamic_programming": "grid_search",
    "teacher_states": "teacher", "learn_coefficients": "coefficients",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
