"""The `diffsolve` command line: `bench` (steps versus quality), `solvers`, `tune` (learned corrections), and
`train` / `evaluate` for the built-in MNIST model (their options are those of `python -m diffsolve.models.train` /
`.evaluate`)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe {text!r}: give integers, e.g. 4,8,16") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--nfe {text!r}: give positive integers, e.g. 4,8,16")
    return vals


def build_parser() -> argparse.ArgumentParser:
    from .bench.runner import BENCH_MODELS

    p = argparse.ArgumentParser(prog="diffsolve", description="Fast, accurate samplers for diffusion and flow models.")
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="every solver at every NFE on the same noise, against a float64 reference",
                       description="Benchmark solvers x NFE on one model and the same noise: endpoint and trajectory "
                                   "error against a float64 adaptive reference solve, distribution metrics where "
                                   "the model has exact ones, wall time; table, bench.json, bench.csv and PNG plots. "
                                   "Under torchrun the samples and reference solves are sharded over the processes.")
    b.add_argument("--model", default="gmm",
                   help=f"built-in name ({', '.join(BENCH_MODELS)}) or 'module:attr' naming a model, a factory "
                        "or a BenchModel (default: gmm)")
    b.add_argument("--solvers", default=None,
                   help="comma-separated solver names, or 'all' (deterministic solvers); default: a standard set")
    b.add_argument("--nfe", type=_ints, default=None, help="comma-separated NFE budgets (default: per model)")
    b.add_argument("--batch-size", type=int, default=None, help="number of samples (default: per model)")
    b.add_argument("--chunk-size", type=int, default=None,
                   help="samples per chunk, the unit of work and of sharding (default: per model)")
    b.add_argument("--seed", type=int, default=0, help="base seed; sample i uses its own seed (default 0)")
    b.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default cpu)")
    b.add_argument("--dtype", default="auto", help="float64, float32, float16, bfloat16 or auto (default: per model)")
    b.add_argument("--grid", default=None, help="grid name (default: the schedule's default grid)")
    b.add_argument("--out", default="diffsolve-bench", help="output folder (default ./diffsolve-bench)")
    b.add_argument("--ref-method", default=None, help="reference method: dopri8, dopri5, bosh3, rk4")
    b.add_argument("--ref-rtol", type=float, default=None, help="reference rtol (atol follows unless given)")
    b.add_argument("--ref-atol", type=float, default=None, help="reference atol")
    b.add_argument("--no-trajectory", action="store_true", help="endpoint errors only (cheaper reference)")
    b.add_argument("--no-cache", action="store_true", help="do not read or write the reference cache")
    b.add_argument("--cache-dir", default=None, help="reference cache folder (default $DIFFSOLVE_CACHE or "
                                                     "~/.cache/diffsolve)")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--no-peers", action="store_true", help="skip other libraries' samplers")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: per model; 1 for the small analytic problems)")
    sub.add_parser("solvers", help="list the registered solvers")
    from .corrections.tune import add_parser as add_tune
    add_tune(sub)
    sub.add_parser("train", add_help=False,
                   help="train the built-in MNIST UNet or classifier (diffsolve train --help for its options)")
    sub.add_parser("evaluate", add_help=False,
                   help="FD and classifier confidence of the built-in model vs the shared DDPM")
    return p


def _bench(args: argparse.Namespace) -> int:
    import dataclasses

    from .bench.runner import resolve_model, run_bench

    reference = None
    if args.ref_method or args.ref_rtol or args.ref_atol:
        entry, _ = resolve_model(args.model)
        base = entry.reference
        rtol = args.ref_rtol if args.ref_rtol is not None else base.rtol
        atol = args.ref_atol if args.ref_atol is not None else (args.ref_rtol if args.ref_rtol is not None
                                                                 else base.atol)
        reference = dataclasses.replace(base, method=args.ref_method or base.method, rtol=rtol, atol=atol)
    run_bench(args.model, args.solvers, args.nfe, batch_size=args.batch_size, seed=args.seed, device=args.device,
              dtype=args.dtype, out=args.out, grid=args.grid, reference=reference,
              trajectory=False if args.no_trajectory else None, cache=not args.no_cache, cache_dir=args.cache_dir,
              chunk_size=args.chunk_size, progress=not args.no_progress, plots=not args.no_plots,
              peers=not args.no_peers, threads=args.threads)
    return 0


def _solvers() -> int:
    from .solvers import registry_entries

    for name, e in sorted(registry_entries().items()):
        print(f"{name:24s} {e.summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import DiffsolveError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("train", "evaluate"):
        # These own their options; forward the rest of the command line unchanged.
        if argv[0] == "train":
            from .models.train import main as run
        else:
            from .models.evaluate import main as run
        run(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "solvers":
            return _solvers()
        if args.command == "tune":
            from .corrections.tune import run as tune
            return tune(args)
    except DiffsolveError as e:
        print(f"diffsolve: error: {e}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
