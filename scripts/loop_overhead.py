"""Loop overhead: the same DPM-Solver++(2M) solve in diffsolve, diffusers and k-diffusion on a model that costs
nothing, so that the times are the sampling loops' own cost (the README's loop-overhead table).

    python scripts/loop_overhead.py [--batch-size 256] [--dim 3072] [--steps 10] [--repeats 15] [--threads 1]

The same as `diffsolve bench --preset overhead`; what is measured is described in diffsolve.bench.overhead.
"""
from __future__ import annotations

import argparse

from diffsolve.bench.overhead import loop_overhead
from diffsolve.cli.argtypes import positive_int


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python scripts/loop_overhead.py", description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", "--batch", type=positive_int, default=256, help="samples (default 256)")
    ap.add_argument("--dim", type=positive_int, default=3072, help="coordinates per sample (default 3072)")
    ap.add_argument("--steps", type=positive_int, default=10)
    ap.add_argument("--repeats", type=positive_int, default=15, help="timed solves per implementation (median)")
    ap.add_argument("--threads", type=positive_int, default=1)
    a = ap.parse_args(argv)
    rows, text = loop_overhead(a.batch_size, a.dim, a.steps, a.repeats, a.threads)
    print(text)
    return rows


if __name__ == "__main__":
    main()
