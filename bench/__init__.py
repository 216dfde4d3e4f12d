"""Benchmarks, analytic problems and reports of steps versus quality.

`run_bench` and `BenchSettings` (bench.running), `BENCH_MODELS` and `register_bench_model` (bench.models) are
loaded on first use, so that importing a light module such as bench.metrics does not import the samplers.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"run_bench": "running", "BenchSettings": "running", "BENCH_MODELS": "models", "BenchModel": "models",
         "register_bench_model": "models", "resolve_model": "models"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
