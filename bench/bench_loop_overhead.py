"""pytest-benchmark timings of the loop-overhead comparison (bench/overhead.py): one full 10-step
DPM-Solver++(2M) solve per round, diffsolve, diffusers and k-diffusion on the identity eps-model.

    python -m pytest bench/bench_loop_overhead.py --benchmark-only -p no:cacheprovider
    DIFFSOLVE_OVERHEAD_SIZE=256x3072 python -m pytest bench/bench_loop_overhead.py --benchmark-only
"""
from __future__ import annotations

import os

import pytest
import torch

from diffsolve.bench.overhead import build

BATCH, DIM = (int(v) for v in os.environ.get("DIFFSOLVE_OVERHEAD_SIZE", "256x3072").split("x"))
STEPS = int(os.environ.get("DIFFSOLVE_OVERHEAD_STEPS", "10"))
# One CPU thread unless told otherwise, as in scripts/loop_overhead.py: the loops' own cost, not OpenMP's.
torch.set_num_threads(int(os.environ.get("DIFFSOLVE_BENCH_THREADS", "1")))
RUNS, _ = build(BATCH, DIM, STEPS)


@pytest.mark.parametrize("name", list(RUNS))
def test_loop(benchmark, name):
    """Time one full solve of the loop named `name` under no_grad.

    Args:
        benchmark: The pytest-benchmark fixture.
        name: A key of `RUNS` (diffsolve, diffusers or k-diffusion loop).
    """
    benchmark.extra_info.update(batch=BATCH, dim=DIM, steps=STEPS)
    with torch.no_grad():
        benchmark(RUNS[name])
