"""`diffsolve bench`: every solver at every NFE on one model and the same noise, against a float64 reference."""
from __future__ import annotations

import argparse
import dataclasses

from diffsolve.bench.models import BENCH_MODELS, resolve_model
from diffsolve.bench.presets import add_arguments as add_preset_arguments
from diffsolve.bench.presets import run_preset
from diffsolve.bench.running import BenchSettings, check_settings, run_bench
from diffsolve.cli import argtypes
from diffsolve.evaluation.reference import METHODS


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe {text!r}: give integers, e.g. 4,8,16") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--nfe {text!r}: give positive integers, e.g. 4,8,16")
    return vals



def add_parser(sub) -> None:
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
    b.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                   help="number of samples (default: per model)")
    b.add_argument("--chunk-size", type=argtypes.positive_int, default=None,
                   help="samples per chunk, the unit of work and of sharding (default: per model)")
    b.add_argument("--seed", type=argtypes.bench_seed, default=0,
                   help="base seed in [0, 2**39); sample i uses the seed seed * 2**24 + i (default 0)")
    b.add_argument("--device", type=argtypes.device, default=None,
                   help="cpu, cuda, cuda:1, ... (default cpu); checked against what this machine has")
    b.add_argument("--dtype", default="auto", help="float64, float32, float16, bfloat16 or auto (default: per model)")
    b.add_argument("--grid", default=None, help="grid name (default: the schedule's default grid)")
    b.add_argument("--out", default="diffsolve-bench", help="output folder (default ./diffsolve-bench)")
    b.add_argument("--ref-method", choices=METHODS, default=None, help="reference method (default: per model)")
    b.add_argument("--ref-rtol", type=argtypes.positive_float, default=None,
                   help="reference rtol (atol follows unless given)")
    b.add_argument("--ref-atol", type=argtypes.positive_float, default=None, help="reference atol")
    b.add_argument("--no-trajectory", action="store_true", help="endpoint errors only (cheaper reference)")
    b.add_argument("--no-cache", action="store_true", help="do not read or write the reference cache")
    b.add_argument("--cache-dir", default=None, help="reference cache folder (default $DIFFSOLVE_CACHE or "
                                                     "~/.cache/diffsolve)")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--no-peers", action="store_true", help="skip other libraries' samplers")
    b.add_argument("--no-straightness", action="store_true",
                   help="skip the straightness diagnostic (Liu et al. 2023: S and the one-step gap)")
    b.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                   help="auto (default): a bar on a terminal, else one line on stderr per finished cell (solver, "
                        "NFE, error, seconds); bar; log; none")
    b.add_argument("--no-progress", action="store_const", const="none", dest="progress",
                   help="the same as --progress none")
    b.add_argument("--threads", type=argtypes.positive_int, default=None,
                   help="torch CPU threads per process (default: per model; 1 for the small analytic problems)")
    add_preset_arguments(b)


def run(args: argparse.Namespace) -> int:
    if args.preset:
        return run_preset(args)
    settings = BenchSettings(batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed,
                             device=args.device, dtype=args.dtype, grid=args.grid, threads=args.threads,
                             trajectory=False if args.no_trajectory else None,
                             cache=not args.no_cache, cache_dir=args.cache_dir, peers=not args.no_peers, out=args.out,
                             plots=not args.no_plots, progress=args.progress,
                             straightness=not args.no_straightness)
    # Folders and values first: a bad --out or --cache-dir fails before the model is even built.
    check_settings(settings)
    if args.ref_method is not None or args.ref_rtol is not None or args.ref_atol is not None:
        entry, _ = resolve_model(args.model)
        base = entry.reference
        rtol = args.ref_rtol if args.ref_rtol is not None else base.rtol
        atol = args.ref_atol if args.ref_atol is not None else (args.ref_rtol if args.ref_rtol is not None
                                                                 else base.atol)
        method = args.ref_method if args.ref_method is not None else base.method
        settings = dataclasses.replace(settings, reference=dataclasses.replace(base, method=method, rtol=rtol,
                                                                               atol=atol))
    run_bench(args.model, args.solvers, args.nfe, settings)
    return 0
