"""Benchmarks and reports of steps versus quality: `run_bench` and `BenchSettings` (the solver x NFE bench), and
the bench's model registry (`BENCH_MODELS`, `register_bench_model`, `resolve_model`)."""
from __future__ import annotations

from diffsolve.bench.models import BENCH_MODELS, BenchModel, register_bench_model, resolve_model
from diffsolve.bench.running import run_bench
from diffsolve.bench.settings import BenchSettings

__all__ = ["BENCH_MODELS", "BenchModel", "BenchSettings", "register_bench_model", "resolve_model", "run_bench"]
