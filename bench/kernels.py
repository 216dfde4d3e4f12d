"""Timing of one solver update step, x' = sum_k c_k T_k, per implementation: time, GB/s and % of copy bandwidth.

The table is printed by scripts/kernel_bench.py (and the deprecated `diffsolve-kernel-bench`); bench/bench_kernels.py
times the same cases under pytest-benchmark.

Implementations: `eager` = kernels.lincomb_reference (the tests' reference), `compile` = torch.compile of it,
`triton` = kernels.lincomb_triton (CUDA only; the interpreter is not a timing). Bandwidth = (K reads + 1 write)
bytes / time; the peak is a device-to-device copy (read + write) measured in the same run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from diffsolve.bench.settings import DTYPES
from diffsolve.bench.timing import copy_bandwidth, time_fn
from diffsolve.kernels.lincomb import lincomb_reference, lincomb_triton

SIZES = {
    "toy": (4096, 2),                  # a 2-D toy problem, 4096 points
    "small": (16, 3, 32, 32),
    "latents": (8, 4, 128, 128),       # SD-style latents
    "images": (64, 3, 256, 256),       # pixel-space images
}


@dataclass
class Row:
    """One cell of the bandwidth table: an implementation timed at one size, dtype and K.

    Attributes:
        size: Name of the size, a key of `SIZES`.
        shape: The tensors' shape.
        dtype: Name of the dtype, a key of `bench.settings.DTYPES`.
        k: Number of terms of the linear combination.
        impl: Implementation name: "eager", "compile" or "triton".
        seconds: Median seconds per update step; None when not measured.
        gbps: Bytes moved per second in GB/s; None when not measured.
        frac: Fraction of the large-buffer copy bandwidth (the device's peak); None when not measured.
        frac_same: Fraction of a copy moving the same bytes (cache effects included); None when not measured.
        note: Why the cell was not measured, or empty.
    """
    size: str
    shape: tuple
    dtype: str
    k: int
    impl: str
    seconds: float | None
    gbps: float | None
    frac: float | None                  # of the large-buffer copy bandwidth (the device's peak)
    frac_same: float | None             # of a copy moving the same bytes (cache effects included)
    note: str = ""


def make_inputs(shape, dtype, k, device):
    """Fixed inputs of one update step: K coefficients and K seeded normal tensors.

    Args:
        shape (tuple): Shape of each tensor.
        dtype (torch.dtype): Dtype of each tensor.
        k (int): Number of terms.
        device (torch.device): Device the tensors are moved to.

    Returns:
        (tuple[list[float], list[torch.Tensor]]): The coefficients 0.9, 0.8, ... and the tensors (seed 0).
    """
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(k)]
    coeffs = [0.9 - 0.1 * j for j in range(k)]
    return coeffs, ts


def compiled_reference() -> Callable | str:
    """A fresh torch.compile of the reference (after a dynamo reset: one cell must not hit another's recompile
    limit and silently fall back to eager), or why it is unavailable.

    Returns:
        The compiled function, or a string naming the error when torch.compile fails.
    """
    try:
        torch._dynamo.reset()
        return torch.compile(lincomb_reference, dynamic=False)
    except Exception as e:  # noqa: BLE001 - report, do not fail the table
        return f"torch.compile unavailable: {type(e).__name__}: {e}"


def implementations(device: torch.device, want: list[str]) -> dict[str, Callable | str]:
    """name -> callable(coeffs, tensors), or a string saying why it is not available here.

    Args:
        device: The device the table is measured on (Triton is measured on CUDA only).
        want: Implementation names to include: any of "eager", "compile", "triton".

    Returns:
        The wanted implementations by name; unavailable ones map to the reason.
    """
    impls: dict[str, Callable | str] = {}
    if "eager" in want:
        impls["eager"] = lincomb_reference
    if "compile" in want:
        impls["compile"] = compiled_reference()
    if "triton" in want:
        if device.type != "cuda":
            impls["triton"] = "GPU only (not measured on CPU)"
        else:
            impls["triton"] = lincomb_triton
    return impls


def measure_updates(sizes: list[str], dtypes: list[str], terms: list[int], device: torch.device,
                    impl_names: list[str], min_time: float = 0.2) -> tuple[float, list[Row]]:
    """The copy bandwidth of this device and one row per size x dtype x K x implementation.

    Args:
        sizes: Size names, keys of `SIZES`.
        dtypes: Dtype names, keys of `bench.settings.DTYPES`.
        terms: Values of K (terms of the linear combination).
        device: The device to time on.
        impl_names: Implementations to time: any of "eager", "compile", "triton".
        min_time: Seconds each timing runs for (see `time_fn`).

    Returns:
        The peak copy bandwidth in bytes per second and the rows; a failing or unavailable implementation
            gets a row with its reason in `note`.
    """
    peak = copy_bandwidth(device)
    impls = implementations(device, impl_names)
    rows: list[Row] = []
    for size in sizes:
        shape = SIZES[size]
        for dname in dtypes:
            dtype = DTYPES[dname]
            for k in terms:
                coeffs, ts = make_inputs(shape, dtype, k, device)
                nbytes = (k + 1) * ts[0].numel() * ts[0].element_size()
                if "compile" in impls:
                    impls["compile"] = compiled_reference()
                # a copy moving the same bytes: the bandwidth this working set can get (cache-resident when small)
                src = torch.empty(nbytes // 2 // 4, dtype=torch.float32, device=device)
                dst = torch.empty_like(src)
                same = nbytes / time_fn(lambda: dst.copy_(src), device, min_time=min_time)
                del src, dst
                for name, fn in impls.items():
                    if isinstance(fn, str):
                        rows.append(Row(size, shape, dname, k, name, None, None, None, None, fn))
                        continue
                    try:
                        sec = time_fn(lambda: fn(coeffs, ts), device, min_time=min_time)
                    except Exception as e:  # noqa: BLE001 - e.g. inductor failing on this box
                        rows.append(Row(size, shape, dname, k, name, None, None, None, None,
                                        f"failed: {type(e).__name__}: {str(e)[:80]}"))
                        continue
                    gbps = nbytes / sec / 1e9
                    rows.append(Row(size, shape, dname, k, name, sec, gbps, gbps * 1e9 / peak, gbps * 1e9 / same))
                del ts
    return peak, rows


def format_bandwidth_table(peak: float, rows: list[Row], device: torch.device) -> str:
    """The bandwidth table as text: a header naming device, torch and threads, then one line per row.

    Args:
        peak: The copy bandwidth in bytes per second (100 %peak).
        rows: The rows from `measure_updates`.
        device: The device they were measured on.

    Returns:
        The table, lines joined by newlines.
    """
    lines = [f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
             f"torch {torch.__version__}, threads {torch.get_num_threads()}",
             f"copy bandwidth (read+write of a 256 MiB buffer, same run): {peak / 1e9:.2f} GB/s = %peak's 100; "
             "%copy@size: against a copy moving the same bytes (small sets are cache-resident, above DRAM peak)",
             f"{'size':<8} {'shape':<18} {'dtype':<9} {'K':>2} {'impl':<8} {'time/us':>10} {'GB/s':>8} {'%peak':>6} {'%copy@size':>10}  note"]
    for r in rows:
        t = f"{r.seconds * 1e6:10.1f}" if r.seconds is not None else f"{'-':>10}"
        g = f"{r.gbps:8.2f}" if r.gbps is not None else f"{'-':>8}"
        f = f"{100 * r.frac:6.1f}" if r.frac is not None else f"{'-':>6}"
        fs = f"{100 * r.frac_same:10.1f}" if r.frac_same is not None else f"{'-':>10}"
        lines.append(f"{r.size:<8} {'x'.join(map(str, r.shape)):<18} {r.dtype:<9} {r.k:>2} {r.impl:<8} {t} {g} {f} "
                     f"{fs}  {r.note}")
    return "\n".join(lines)
