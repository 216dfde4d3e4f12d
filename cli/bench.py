"""`diffsolve bench`: every solver at every NFE on one model and the same noise, against a float64 reference; or,
with `--preset NAME`, one of the fixed comparison tables (diffsolve.bench.presets)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from diffsolve.bench.models import BENCH_MODELS, resolve_model
from diffsolve.bench.presets import PRESET_OPTIONS, PRESETS, PresetSettings, run_preset
from diffsolve.bench.running import run_bench
from diffsolve.bench.settings import PROGRESS_MODES, BenchSettings, check_settings
from diffsolve.cli import argtypes
from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.reference import METHODS

# Options only the presets read: without --preset they are refused, never ignored.
PRESET_ONLY = ("skip_mnist", "ref_steps", "rtols", "steps", "quick", "models", "repeats")
# dest -> (the option strings that set it, its default), filled by add_parser: what was given on the command line.
_OPTIONS: dict[str, tuple[str, Any]] = {}


def _run_arguments(b: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of the solver x NFE bench (the presets read --nfe, --batch-size, --solvers and --out too)."""
    return [
        b.add_argument("--model", default="gmm",
                       help=f"built-in name ({', '.join(BENCH_MODELS)}) or 'module:attr' naming a model, a factory "
                            "or a BenchModel (default: gmm)"),
        b.add_argument("--solvers", type=argtypes.name_list, default=None,
                       help="comma-separated solver names, or 'all' (deterministic solvers); default: a standard set"),
        b.add_argument("--nfe", type=argtypes.positive_int_list, default=None,
                       help="comma-separated NFE budgets (default: per model)"),
        b.add_argument("--batch-size", type=argtypes.positive_int, default=None,
                       help="number of samples (default: per model)"),
        b.add_argument("--chunk-size", type=argtypes.positive_int, default=None,
                       help="samples per chunk, the unit of work and of sharding (default: per model)"),
        b.add_argument("--seed", type=argtypes.bench_seed, default=0,
                       help="base seed in [0, 2**39); sample i uses the seed seed * 2**24 + i (default 0)"),
        b.add_argument("--device", type=argtypes.device, default=None,
                       help="cpu, cuda, cuda:1, ... (default cpu); checked against what this machine has"),
        b.add_argument("--dtype", default="auto",
                       help="float64, float32, float16, bfloat16 or auto (default: per model)"),
        b.add_argument("--grid", default=None, help="grid name (default: the schedule's default grid)"),
        b.add_argument("--out", default="diffsolve-bench", help="output folder (default ./diffsolve-bench)"),
        b.add_argument("--ref-method", choices=METHODS, default=None, help="reference method (default: per model)"),
        b.add_argument("--ref-rtol", type=argtypes.positive_float, default=None,
                       help="reference rtol (atol follows unless given)"),
        b.add_argument("--ref-atol", type=argtypes.positive_float, default=None, help="reference atol"),
        b.add_argument("--no-trajectory", action="store_true", help="endpoint errors only (cheaper reference)"),
        b.add_argument("--no-cache", action="store_true", help="do not read or write the reference cache"),
        b.add_argument("--cache-dir", default=None,
                       help="reference cache folder (default $DIFFSOLVE_CACHE or ~/.cache/diffsolve)"),
        b.add_argument("--no-plots", action="store_true", help="skip the PNG plots"),
        b.add_argument("--no-peers", action="store_true", help="skip other libraries' samplers"),
        b.add_argument("--no-straightness", action="store_true",
                       help="skip the straightness diagnostic (Liu et al. 2023: S and the one-step gap)"),
        b.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                       help="auto (default): a bar on a terminal, else one line on stderr per finished cell (solver, "
                            "NFE, error, seconds); bar; log; none"),
        b.add_argument("--no-progress", action="store_const", const="none", dest="progress",
                       help="the same as --progress none"),
        b.add_argument("--threads", type=argtypes.positive_int, default=None,
                       help="torch CPU threads per process (default: per model; 1 for the small analytic problems)"),
    ]


def _preset_arguments(b: argparse.ArgumentParser) -> list[argparse.Action]:
    """The preset options (each preset reads only some: the others are refused, see PRESET_OPTIONS)."""
    return [
        b.add_argument("--preset", choices=PRESETS, default=None,
                       help="print a fixed comparison table instead of the solver x NFE bench: diffusers (fast ODE "
                            "solvers and diffusers' schedulers), adaptive (adaptive ODE solvers), sde (SDE samplers "
                            "by distribution metrics), overhead (loop overhead vs diffusers and k-diffusion), skip "
                            "(Skip-Tuning on the built-in UNets: FD, confidence and RMSE with and without tuned "
                            "skips), learned (the shipped learned corrections against the best un-learned solver, "
                            "with training cost)"),
        b.add_argument("--skip-mnist", action="store_true",
                       help="preset diffusers: leave out the shared MNIST DDPM (the slow part)"),
        b.add_argument("--ref-steps", type=argtypes.int_at_least(2), default=2000,
                       help="preset diffusers: steps of the dpmpp_3m reference solve (default 2000)"),
        b.add_argument("--rtols", type=argtypes.positive_float_list, default=None,
                       help="preset adaptive: comma-separated rtol values"),
        b.add_argument("--steps", type=argtypes.positive_int_list, default=None,
                       help="preset sde: comma-separated step counts"),
        b.add_argument("--quick", action="store_true",
                       help="presets adaptive, sde and skip: fewer samples and settings"),
        b.add_argument("--models", type=argtypes.name_list, default=None,
                       help="preset skip: comma-separated bench models (default mnist-unet,mnist-unet-deep)"),
        b.add_argument("--repeats", type=argtypes.positive_int, default=None,
                       help="preset overhead: timed solves per implementation (default 15)"),
    ]


def add_parser(sub) -> None:
    """Add the `bench` subcommand and its options to the command line. Records every option's flags and default for
    the check that refuses options the chosen mode does not read.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    b = sub.add_parser("bench", help="every solver at every NFE on the same noise, against a float64 reference",
                       description="Benchmark solvers x NFE on one model and the same noise: endpoint and trajectory "
                                   "error against a float64 adaptive reference solve, distribution metrics where "
                                   "the model has exact ones, wall time; table, bench.json, bench.csv and PNG plots. "
                                   "Under torchrun the samples and reference solves are sharded over the processes.")
    actions = _run_arguments(b) + _preset_arguments(b)
    _OPTIONS.clear()
    for action in actions:
        flags, default = _OPTIONS.get(action.dest, ("", b.get_default(action.dest)))
        _OPTIONS[action.dest] = ("/".join(filter(None, [flags, *action.option_strings[:1]])), default)


def _given(args: argparse.Namespace) -> list[str]:
    """The options whose value differs from their default (what the command line set)."""
    return [dest for dest, (_, default) in _OPTIONS.items() if getattr(args, dest, default) != default]


def _refuse_unused(args: argparse.Namespace) -> None:
    given = _given(args)
    if args.preset is None:
        unused = [d for d in given if d in PRESET_ONLY]
        why = "is read by --preset only"
    else:
        unused = [d for d in given if d != "preset" and d not in PRESET_OPTIONS[args.preset]]
        why = f"is not used by --preset {args.preset}"
    if unused:
        flags = [_OPTIONS[d][0] for d in unused]
        raise InvalidArgument(f"{flags[0]} {why}" + (f" (nor {', '.join(flags[1:])})" if len(flags) > 1 else ""))


def preset_settings(args: argparse.Namespace) -> PresetSettings:
    """The typed settings of `--preset NAME` (only the options that preset reads; the others were refused).

    Args:
        args: The parsed options of `diffsolve bench`.

    Returns:
        The preset's settings (lists turned into tuples).
    """
    values = {"nfe": args.nfe, "batch_size": args.batch_size, "solvers": args.solvers, "skip_mnist": args.skip_mnist,
              "ref_steps": args.ref_steps, "rtols": args.rtols, "steps": args.steps, "quick": args.quick,
              "models": args.models, "out": args.out, "repeats": args.repeats}
    used = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in PRESET_OPTIONS[args.preset]}
    return PresetSettings(args.preset, **used)


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    """The typed settings of the solver x NFE bench, the reference's included (the model entry's, overridden by
    --ref-method/--ref-rtol/--ref-atol).

    Args:
        args: The parsed options of `diffsolve bench`.

    Returns:
        The settings, checked (a bad --out or --cache-dir fails before the model is built).

    Raises:
        InvalidArgument: A value fails `check_settings`, or the model cannot be resolved for its reference.
    """
    settings = BenchSettings(batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed,
                             device=args.device, dtype=args.dtype, grid=args.grid, threads=args.threads,
                             trajectory=False if args.no_trajectory else None,
                             cache=not args.no_cache, cache_dir=args.cache_dir, peers=not args.no_peers, out=args.out,
                             plots=not args.no_plots, progress=args.progress,
                             straightness=not args.no_straightness)
    # Folders and values first: a bad --out or --cache-dir fails before the model is even built.
    check_settings(settings)
    if args.ref_method is None and args.ref_rtol is None and args.ref_atol is None:
        return settings
    base = resolve_model(args.model)[0].reference
    rtol = args.ref_rtol if args.ref_rtol is not None else base.rtol
    atol = args.ref_atol if args.ref_atol is not None else (args.ref_rtol if args.ref_rtol is not None
                                                             else base.atol)
    method = args.ref_method if args.ref_method is not None else base.method
    return dataclasses.replace(settings, reference=dataclasses.replace(base, method=method, rtol=rtol, atol=atol))


def run(args: argparse.Namespace) -> int:
    """Run a preset, or the solver x NFE bench, as the options say.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.

    Raises:
        InvalidArgument: An option the chosen mode does not read was given, or a value is invalid.
    """
    _refuse_unused(args)
    if args.preset:
        return run_preset(preset_settings(args))
    run_bench(args.model, args.solvers, args.nfe, bench_settings(args))
    return 0
