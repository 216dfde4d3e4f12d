"""pytest-benchmark timings of one update step per implementation (eager reference, torch.compile, Triton).

    python -m pytest bench/bench_kernels.py --benchmark-only -p no:cacheprovider
    DIFFSOLVE_BENCH_SIZES=toy,latents,images DIFFSOLVE_BENCH_DTYPES=float32,bfloat16 python -m pytest bench/bench_kernels.py

The eager implementation is the tests' reference (kernels.lincomb_reference); sizes and the bandwidth figures
come from bench/kernels.py (extra_info: bytes moved, GB/s, fraction of the copy bandwidth of this run).
"""
from __future__ import annotations

import os

import pytest
import torch

from diffsolve.bench.kernels import SIZES, compiled_reference, make_inputs
from diffsolve.bench.settings import DTYPES
from diffsolve.bench.timing import copy_bandwidth, sync
from diffsolve.kernels.lincomb import lincomb_reference, lincomb_triton

DEVICE = torch.device(os.environ.get("DIFFSOLVE_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
BENCH_SIZES = os.environ.get("DIFFSOLVE_BENCH_SIZES", "toy,small").split(",")
BENCH_DTYPES = os.environ.get("DIFFSOLVE_BENCH_DTYPES", "float32").split(",")
BENCH_TERMS = [int(k) for k in os.environ.get("DIFFSOLVE_BENCH_TERMS", "2,6").split(",")]
# One CPU thread unless told otherwise: with other jobs on the box, OpenMP kernels at 2+ threads spin-wait.
torch.set_num_threads(int(os.environ.get("DIFFSOLVE_BENCH_THREADS", "1")))
_PEAK: dict = {}


def _impl(name: str):
    if name == "eager":
        return lincomb_reference
    if name == "compile":
        fn = compiled_reference()      # fresh per case: no recompile limit shared across shapes, no silent eager
        if isinstance(fn, str):
            pytest.fail(fn)
        return fn
    if DEVICE.type != "cuda":
        pytest.skip("the Triton kernel is timed on CUDA devices only (no GPU here)")
    return lincomb_triton


@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
@pytest.mark.parametrize("k", BENCH_TERMS)
@pytest.mark.parametrize("dtype", BENCH_DTYPES)
@pytest.mark.parametrize("size", BENCH_SIZES)
def test_update_step(benchmark, size, dtype, k, impl):
    """Time one update step of `impl` and record bytes moved and bandwidth in `extra_info`.

    Args:
        benchmark: The pytest-benchmark fixture.
        size: A key of `SIZES` (tensor shape of the case).
        dtype: A key of `DTYPES`.
        k: Number of terms of the linear combination.
        impl: "eager", "compile" or "triton" (Triton is skipped off CUDA).
    """
    fn = _impl(impl)
    coeffs, ts = make_inputs(SIZES[size], DTYPES[dtype], k, DEVICE)

    def step():
        out = fn(coeffs, ts)
        sync(DEVICE)
        return out

    step()                             # compile / autotune outside the timed rounds
    out = benchmark(step)
    assert out.shape == ts[0].shape
    if "peak" not in _PEAK:
        _PEAK["peak"] = copy_bandwidth(DEVICE)
    nbytes = (k + 1) * ts[0].numel() * ts[0].element_size()
    sec = benchmark.stats.stats.median
    benchmark.extra_info.update(bytes=nbytes, gbps=nbytes / sec / 1e9, frac_of_copy=nbytes / sec / _PEAK["peak"],
                                copy_gbps=_PEAK["peak"] / 1e9, device=str(DEVICE))
