"""The fused-update timing table on the command line: `python scripts/kernel_bench.py` (and the deprecated
`diffsolve-kernel-bench` console script, which prints the same table).

    python scripts/kernel_bench.py                       # CPU: eager and torch.compile, small sizes
    python scripts/kernel_bench.py --sizes toy,latents,images --dtypes float32,bfloat16 --terms 2,6
    python scripts/kernel_bench.py --device cuda         # adds the Triton kernel
"""
from __future__ import annotations

import argparse
import sys

import torch

from diffsolve.bench.kernels import SIZES, format_bandwidth_table, measure_updates
from diffsolve.bench.settings import DTYPES
from diffsolve.cli import argtypes


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Time one solver update step, x' = sum_k c_k T_k, per "
                                                        "implementation; print time, GB/s and % of copy bandwidth.")
    ap.add_argument("--sizes", default="toy,small,latents", help=f"comma list of {sorted(SIZES)}")
    ap.add_argument("--dtypes", default="float32", help=f"comma list of {sorted(DTYPES)}")
    ap.add_argument("--terms", default="2,4,6", help="numbers of input tensors K, comma list")
    ap.add_argument("--impls", default="eager,compile,triton", help="comma list of eager, compile, triton")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=argtypes.positive_int, default=1,
                    help="torch CPU threads (default 1: on a shared box inductor's OpenMP kernels at 2+ threads "
                         "spin-wait for milliseconds per call)")
    ap.add_argument("--min-time", type=argtypes.positive_float, default=0.2, help="seconds of timing per cell")
    return ap


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Print the kernel bandwidth table (`bench.kernels.measure_updates`) for the sizes, dtypes and K asked for.

    Args:
        argv: The command-line arguments; None reads sys.argv.
        prog: The program name in usage and errors; None takes argparse's.

    Returns:
        The exit status, 0 (argparse exits with status 2 on an unknown size or dtype).
    """
    ap = _parser(prog)
    a = ap.parse_args(argv)
    sizes, dtypes = a.sizes.split(","), a.dtypes.split(",")
    for flag, names, known in (("--sizes", sizes, SIZES), ("--dtypes", dtypes, DTYPES)):
        for name in names:
            if name not in known:
                ap.error(f"{flag}: {name!r} is not one of {', '.join(sorted(known))}")
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    peak, rows = measure_updates(sizes, dtypes, [int(v) for v in a.terms.split(",")], device, a.impls.split(","),
                                 a.min_time)
    print(format_bandwidth_table(peak, rows, device))
    return 0


def deprecated_main() -> int:
    """The `diffsolve-kernel-bench` console script: kept for old instructions; the script is the way now.

    Returns:
        The exit status of `main`.
    """
    print("diffsolve-kernel-bench is deprecated: run `python scripts/kernel_bench.py` from the repository",
          file=sys.stderr)
    return main(prog="diffsolve-kernel-bench")
