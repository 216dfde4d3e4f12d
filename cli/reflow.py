"""`diffsolve reflow`: (noise, endpoint) couplings of a flow, sharded and resumable (also under torchrun).

`torchrun --standalone --nproc_per_node 2 -m diffsolve reflow --model moons-1rf --samples 20000 --out DIR` splits
the shards over the ranks; spell the count `--samples` there (torchrun's own parser takes `--n` for an
abbreviation of its options).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from diffsolve.bench.models import BENCH_MODELS, resolve_model
from diffsolve.cli import argtypes
from diffsolve.models.toy2d import MODELS as TOY_MODELS
from diffsolve.training.reflow import generate_couplings
from diffsolve.progress import Progress


def add_parser(sub) -> None:
    """Add the `reflow` subcommand and its options to the command line.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    sp = sub.add_parser("reflow", help="reflow couplings: noise and ODE endpoints of a flow, in resumable shards",
                        description="Solve noise draws to their endpoints and write them as resumable, verified "
                                    "shards (diffsolve.training.reflow.generate_couplings); under torchrun the "
                                    "ranks split the shards and write the files of a one-process run.")
    sp.add_argument("--model", required=True,
                    help=f"{', '.join(TOY_MODELS)}, a bench model ({', '.join(BENCH_MODELS)}) or module:attr")
    # --samples, not --n, under torchrun: torchrun's own parser takes '--n' for an abbreviation of its options
    sp.add_argument("--samples", "--n", dest="samples", type=argtypes.positive_int, required=True,
                    help="number of couplings (--n is an alias, but not usable under torchrun)")
    sp.add_argument("--out", required=True, help="output folder (resumed when it holds a run with these settings)")
    sp.add_argument("--solver", default="heun", help="solver name (default heun)")
    sp.add_argument("--steps", type=argtypes.positive_int, default=64, help="solver steps per trajectory")
    sp.add_argument("--batch-size", type=argtypes.positive_int, default=1024, help="trajectories per solver run")
    sp.add_argument("--shard-size", type=argtypes.positive_int, default=4096, help="pairs per shard file")
    sp.add_argument("--seed", type=argtypes.int_at_least(0), default=0,
                    help="base seed; pair i's noise comes from (seed, i)")
    sp.add_argument("--dtype", default="float32", help="state dtype of the solves")
    sp.add_argument("--threads", type=argtypes.positive_int, default=1,
                    help="torch threads per process (keep it the same in runs whose files must match byte for byte)")


def reflow_model(name: str) -> Any:
    """A shipped toy model ('moons-1rf', 'moons-2rf', 'moons-shortcut'), a bench model name or 'module:attr'.

    Args:
        name: The --model value.

    Returns:
        The built model.

    Raises:
        InvalidArgument: Not a toy or bench model, or the path names no model.
    """
    if name in TOY_MODELS:
        return TOY_MODELS[name]()
    return resolve_model(name)[1]


def run(args: argparse.Namespace) -> int:
    """Generate the couplings and, on rank 0, print a JSON summary.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.
    """
    torch.set_num_threads(args.threads)
    # rank 0 alone keeps the heartbeat lines (the shard lines name their rank)
    with Progress("reflow", enabled=int(os.environ.get("RANK", "0")) == 0):
        res = generate_couplings(reflow_model(args.model), args.out, args.samples, solver=args.solver,
                                 steps=args.steps, batch_size=args.batch_size, shard_size=args.shard_size,
                                 seed=args.seed, dtype=args.dtype, log=True)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(res.out_dir), "n": res.manifest["n"], "shards": len(res.manifest["shards"]),
                          "computed": len(res.computed), "kept": len(res.kept),
                          "seconds": round(res.seconds, 2)}))
    return 0
