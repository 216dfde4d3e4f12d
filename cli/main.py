"""The `diffsolve` command line: `bench` (steps versus quality), `sample` (samples from seeds to a folder),
`solvers` (`--verbose`: every option with its type and default), `--version`, `tune` (learned corrections), and
`train` / `evaluate` for the built-in MNIST model (their options are those of `python -m diffsolve.training.mnist` /
`.evaluate`).

Every bad value is one argparse-style error line and exit status 2, never a traceback and never a silent default:
the argument types below validate (bench.argtypes), and errors diffsolve raises (DiffsolveError) are printed the
same way.
"""
from __future__ import annotations

import argparse
import inspect
import typing
import sys
from typing import Sequence

from diffsolve.cli import argtypes


def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe {text!r}: give integers, e.g. 4,8,16") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--nfe {text!r}: give positive integers, e.g. 4,8,16")
    return vals


def build_parser() -> argparse.ArgumentParser:
    from diffsolve.bench.models import BENCH_MODELS
    from diffsolve.bench.presets import add_arguments as add_preset_arguments

    from diffsolve import __version__
    from diffsolve.evaluation.reference import METHODS

    p = argparse.ArgumentParser(prog="diffsolve", description="Fast, accurate samplers for diffusion and flow models.")
    p.add_argument("--version", action="version", version=f"diffsolve {__version__}")
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
    sv = sub.add_parser("solvers", help="list the registered solvers")
    sv.add_argument("--verbose", "-v", action="store_true",
                    help="also each solver's options, with their types and defaults (from the code)")
    add_sample_parser(sub, BENCH_MODELS)
    from diffsolve.corrections.tune import add_parser as add_tune
    add_tune(sub)
    sub.add_parser("train", add_help=False,
                   help="train the built-in MNIST UNet or classifier (diffsolve train --help for its options)")
    sub.add_parser("evaluate", add_help=False,
                   help="FD and classifier confidence of the built-in model vs the shared DDPM")
    sub.add_parser("likelihood", add_help=False,
                   help="log-likelihood and bits/dim through the probability-flow ODE (diffsolve likelihood --help)")
    return p


def add_sample_parser(sub, models) -> None:
    sp = sub.add_parser("sample", help="samples from given seeds: a PNG (image grid or 2-D scatter) and the tensors",
                        description="Draw one sample per seed with one solver and write samples.png (an image grid "
                                    "for image models, a scatter plot otherwise) and samples.safetensors (samples, "
                                    "seeds; settings in its metadata) to --out, each written atomically. Sample i "
                                    "depends on its seed only, not on the other seeds.")
    sp.add_argument("--model", default="gmm",
                    help=f"bench model name ({', '.join(models)}) or 'module:attr' (default: gmm)")
    sp.add_argument("--solver", default="dpmpp_2m", help="solver name (diffsolve solvers; default dpmpp_2m)")
    budget = sp.add_mutually_exclusive_group()
    budget.add_argument("--nfe", type=argtypes.positive_int, default=None,
                        help="model evaluations per sample (adaptive solvers: the budget)")
    budget.add_argument("--steps", type=argtypes.positive_int, default=None, help="solver steps")
    sp.add_argument("--seeds", type=argtypes.seed_list, default=argtypes.seed_list("0-15"),
                    help="seeds in [0, 2**63): 0-15, 1,5,9 or 0-3,10 (default 0-15)")
    sp.add_argument("--out", default="diffsolve-samples", help="output folder (default ./diffsolve-samples)")
    sp.add_argument("--grid", default=None, help="grid name (default: the schedule's default grid)")
    sp.add_argument("--device", type=argtypes.device, default=None, help="cpu, cuda, ... (default cpu)")
    sp.add_argument("--dtype", default="auto", help="float64, float32, float16, bfloat16 or auto (default: per model)")
    sp.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                    help="samples per solver run (default: all seeds at once)")
    sp.add_argument("--no-plot", action="store_true", help="write the tensors only")


def _sample(args: argparse.Namespace) -> int:
    from diffsolve.bench.sampling import sample_to_folder

    files = sample_to_folder(args.model, args.solver, args.seeds, args.out, nfe=args.nfe, steps=args.steps,
                             grid=args.grid, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                             plot=not args.no_plot)
    print("wrote: " + ", ".join(files))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import dataclasses

    from diffsolve.bench.models import resolve_model
    from diffsolve.bench.running import BenchSettings, check_settings, run_bench

    if args.preset:
        from diffsolve.bench.presets import run_preset
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


def solver_options(entry) -> list[tuple[str, str, str, bool]]:
    """(name, type, default, set_by_name) of each option: what the registry reads from the factory's signature
    (`RegistryEntry.parameters`, the same source that checks option types), then the settings the name fixes."""
    out = []
    for name, (hint, default) in entry.parameters().items():
        typ = "any" if hint is typing.Any else str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
        shown = "required" if default is inspect.Parameter.empty else repr(default)
        out.append((name, typ, shown, name in entry.defaults))
    for name, value in entry.fixed.items():
        if name != "alias":            # the registered name itself, not a setting
            out.append((name, type(value).__name__, repr(value), True))
    return out


def _solvers(verbose: bool = False) -> int:
    from diffsolve.solvers import get_solver, registry_entries

    for name, e in sorted(registry_entries().items()):
        print(f"{name:24s} {e.summary}")
        if not verbose:
            continue
        d = get_solver(name).describe()
        kind = "stochastic" if not d["deterministic"] else "deterministic"
        if d.get("model_family"):
            kind += f", for {d['model_family']} models"
        print(f"    {kind}, " + ("adaptive step size" if d["adaptive"] else
                                 f"order {d['order']}, {d['calls_per_step']} model call(s) per step"))
        opts = solver_options(e)
        if not opts:
            print("    (no options)")
        for opt, typ, default, by_name in opts:
            print(f"    {opt}: {typ} = {default}" + ("   (this name's default)" if by_name and opt in e.defaults
                                                      else "   (fixed by this name)" if by_name else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from diffsolve.bench.running import OutputError
    from diffsolve.errors import DiffsolveError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "likelihood":
        from diffsolve.analysis.likelihood import cli_main
        return cli_main(argv[1:])
    if argv and argv[0] in ("train", "evaluate"):
        # These own their options; forward the rest of the command line unchanged.
        if argv[0] == "train":
            from diffsolve.training.mnist import main as run
        else:
            from diffsolve.models.evaluate import main as run
        run(argv[1:])
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "bench":
            return _bench(args)
        if args.command == "solvers":
            return _solvers(args.verbose)
        if args.command == "sample":
            return _sample(args)
        if args.command == "tune":
            from diffsolve.corrections.tune import run as tune
            return tune(args)
    except OutputError as e:
        # The run itself finished (and printed); only its files could not be written.
        print(f"diffsolve: error: {e}", file=sys.stderr)
        return 1
    except DiffsolveError as e:
        print(f"diffsolve {args.command}: error: {e}", file=sys.stderr)
        return 2
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
