"""Regenerate the README's learned-corrections table (built-in MNIST UNet): every shipped correction against the
best un-learned solver, endpoint RMSE on held-out noise (diffsolve.corrections.report).

    python scripts/corrections_report.py [--nfe 3,5,7,9] [--samples 64] [--json out.json] [--fd 5]
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from diffsolve.corrections.report import evaluate, fd_at, fd_lines, table
from diffsolve.files import atomic_write_bytes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/corrections_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfe", default="3,5,7,9")
    p.add_argument("--samples", "--n", dest="n", type=int, default=64, help="held-out samples (default 64)")
    p.add_argument("--json", default=None, help="also write the full result here")
    p.add_argument("--fd", type=int, default=None, metavar="NFE",
                   help="also the FD (1,000 held-out samples) of the best learned and un-learned run at this NFE")
    p.add_argument("--baseline-cache", default=None,
                   help="a JSON file with the un-learned rows: read if it matches, else computed and written")
    args = p.parse_args(argv)
    nfes = [int(v) for v in args.nfe.replace(",", " ").split()]
    result = evaluate(nfes, args.n, baseline_cache=args.baseline_cache)
    print(table(result))
    if args.fd is not None:
        result["fd"] = {str(args.fd): fd_at(args.fd, result)}
        print(fd_lines(args.fd, result["fd"][str(args.fd)]))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
