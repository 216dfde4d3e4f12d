"""`diffsolve sample`: one sample per seed from a bench model with one solver, written to a folder."""
from __future__ import annotations

import argparse

from diffsolve.bench.models import BENCH_MODELS
from diffsolve.bench.sampling import SampleSettings, write_samples
from diffsolve.cli import argtypes


def add_parser(sub) -> None:
    """Add the `sample` subcommand and its options to the command line.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    sp = sub.add_parser("sample", help="samples from given seeds: a PNG (image grid or 2-D scatter) and the tensors",
                        description="Draw one sample per seed with one solver and write samples.png (an image grid "
                                    "for image models, a scatter plot otherwise) and samples.safetensors (samples, "
                                    "seeds; settings in its metadata) to --out, each written atomically. Sample i "
                                    "depends on its seed only, not on the other seeds.")
    sp.add_argument("--model", default="gmm",
                    help=f"bench model name ({', '.join(BENCH_MODELS)}) or 'module:attr' (default: gmm)")
    sp.add_argument("--source", default=None, metavar="MODULE:ATTR",
                    help="'module:attr' naming a plain velocity field's source: a torch.distributions.Distribution "
                         "or a callable source(n, generator) -> [n, *sample_shape] (default: the model's own)")
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
    sp.add_argument("--no-plots", "--no-plot", action="store_true", help="write the tensors only")


def sample_settings(args: argparse.Namespace) -> SampleSettings:
    """The typed settings of `diffsolve sample` (progress on).

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The settings.
    """
    return SampleSettings(model=args.model, solver=args.solver, seeds=tuple(args.seeds), out=args.out, nfe=args.nfe,
                          steps=args.steps, grid=args.grid, device=args.device, dtype=args.dtype,
                          batch_size=args.batch_size, plots=not args.no_plots, progress=True, source=args.source)


def run(args: argparse.Namespace) -> int:
    """Draw the samples, write them and print the paths written.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.
    """
    files = write_samples(sample_settings(args))
    print("wrote: " + ", ".join(files))
    return 0
