"""`diffsolve likelihood`: per-sample log-likelihoods and bits/dim through the probability-flow ODE, as JSON.

The model is a bench model name (gmm, gaussian: analytic problems, their samples drawn with --seed; mnist-unet: the
built-in UNet on the real digits of --data); the old names mixture and mnist are accepted.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch

from diffsolve.analysis.likelihood import likelihood
from diffsolve.analysis.likelihood_checks import ADAPTIVE, DIVERGENCES, FIXED, PROBES
from diffsolve.bench.models import BENCH_MODELS
from diffsolve.cli import argtypes
from diffsolve.errors import InvalidArgument
from diffsolve.models.data import load_mnist
from diffsolve.progress import Progress

MODELS = ("gmm", "gaussian", "mnist-unet")
OLD_NAMES = {"mixture": "gmm", "mnist": "mnist-unet"}
SPLITS = ("heldout", "train")
# Sample i's probe and dequantization noise is seeded by seed * SEED_STRIDE + i.
SEED_STRIDE = 100003


@dataclass
class LikelihoodSettings:
    """What `diffsolve likelihood` computes; None picks the model's default (see the options' help).

    Attributes:
        model: gmm, gaussian or mnist-unet.
        data: mnist-unet: the real split (None: heldout); analytic problems draw samples with `seed`.
        samples: How many samples.
        divergence: None: exact for the analytic problems, hutchinson for mnist-unet.
        probes: Hutchinson probes per sample.
        probe: Hutchinson probe distribution.
        seed: Seed of the data draw, the dequantization and the probes.
        solver: An adaptive torchdiffeq method, or a Runge-Kutta name with `steps`.
        steps: Fixed steps for a Runge-Kutta solver; None for an adaptive one.
        rtol: Adaptive solver's relative tolerance.
        atol: Adaptive solver's absolute tolerance.
        dequantize: None: uniform for mnist-unet, none for the analytic problems.
    """

    model: str = "gmm"
    data: str | None = None
    samples: int = 8
    divergence: str | None = None
    probes: int = 1
    probe: str = "rademacher"
    seed: int = 0
    solver: str = "dopri5"
    steps: int | None = None
    rtol: float = 1e-5
    atol: float = 1e-5
    dequantize: str | None = None


def model_name(text: str) -> str:
    """argparse type: a model this command can score, by its bench name or an old name.

    Args:
        text: The option's value (mixture and mnist are old names).

    Returns:
        The bench name.

    Raises:
        ArgumentTypeError: Not a model this command can score.
    """
    name = OLD_NAMES.get(text, text)
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: {', '.join(MODELS)} (old names: mixture, mnist)")
    return name


def solver_name(text: str) -> str:
    """argparse type: an adaptive torchdiffeq method or a Runge-Kutta tableau.

    Args:
        text: The option's value.

    Returns:
        The name unchanged.

    Raises:
        ArgumentTypeError: Neither.
    """
    if text not in ADAPTIVE + FIXED:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed: {', '.join(ADAPTIVE)} (adaptive) or, with --steps, "
                                         f"{', '.join(FIXED)}")
    return text


def add_parser(sub) -> None:
    """Add the `likelihood` subcommand and its options to the command line.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    p = sub.add_parser("likelihood", help="log-likelihood and bits/dim through the probability-flow ODE",
                       description="Per-sample log-likelihoods and bits/dim through the probability-flow ODE "
                                   "(diffsolve.likelihood), printed as JSON.")
    p.add_argument("--model", type=model_name, default="gmm",
                   help="gmm or gaussian (analytic problems) or mnist-unet (the built-in UNet); default gmm")
    p.add_argument("--data", default=None, choices=SPLITS,
                   help="mnist-unet: the real split (default heldout); analytic problems: samples drawn with --seed")
    p.add_argument("--samples", "--n", dest="samples", type=argtypes.positive_int, default=8,
                   help="how many samples (the first ones of the split, or drawn)")
    p.add_argument("--divergence", default=None, choices=DIVERGENCES,
                   help="default: exact for the analytic problems, hutchinson for mnist-unet")
    p.add_argument("--probes", type=argtypes.positive_int, default=1,
                   help="Hutchinson probes per sample (with --divergence hutchinson)")
    p.add_argument("--probe", default="rademacher", choices=PROBES, help="Hutchinson probe distribution")
    p.add_argument("--seed", type=argtypes.seed_below(2 ** 46), default=0,
                   help="seed of the data draw, the dequantization and the probes")
    p.add_argument("--solver", type=solver_name, default="dopri5",
                   help=f"{', '.join(ADAPTIVE)}, or a Runge-Kutta name with --steps")
    p.add_argument("--steps", type=argtypes.positive_int, default=None,
                   help="fixed steps for a Runge-Kutta --solver (default: adaptive, no fixed steps)")
    p.add_argument("--rtol", type=argtypes.positive_float, default=1e-5, help="adaptive solver's relative tolerance")
    p.add_argument("--atol", type=argtypes.positive_float, default=1e-5, help="adaptive solver's absolute tolerance")
    p.add_argument("--dequantize", default=None, choices=["uniform"],
                   help="default: uniform for mnist-unet (256 levels over [-1, 1]), none for the analytic problems")
    p.add_argument("--threads", type=argtypes.positive_int, default=None,
                   help="torch CPU threads (default: torch's own choice)")


def likelihood_report(s: LikelihoodSettings) -> dict:
    """Resolve the model and its data, run `likelihood`, and return what the command prints.

    Args:
        s: What to compute.

    Returns:
        The settings used, the counts, and the per-sample and mean log-likelihoods and bits per dimension.
    """
    model = BENCH_MODELS[s.model].build()
    if s.model == "mnist-unet":
        x = load_mnist(s.data or "heldout")[0][: s.samples]
        divergence, dequantize = s.divergence or "hutchinson", s.dequantize or "uniform"
    else:
        x = model.sample_data(s.samples, torch.Generator().manual_seed(s.seed)).float()
        divergence, dequantize = s.divergence or "exact", s.dequantize
    res = likelihood(model, x, divergence=divergence, probes=s.probes, probe=s.probe,
                     seed=[s.seed * SEED_STRIDE + i for i in range(x.shape[0])], solver=s.solver,
                     rtol=s.rtol, atol=s.atol, steps=s.steps, dequantize=dequantize)
    return {"model": s.model, "n": x.shape[0], "solver": res.solver, "nfe": res.nfe, "vjps": res.vjps,
            "divergence": res.divergence, "dequantization": res.dequantization, "frame": res.frame,
            "t_start": res.t_start, "t_end": res.t_end, "prior": res.stats.get("prior"),
            "mean_log_prob": float(res.log_prob.mean()), "mean_bits_per_dim": float(res.bits_per_dim.mean()),
            "log_prob": [float(v) for v in res.log_prob], "bits_per_dim": [float(v) for v in res.bits_per_dim]}


def run(args: argparse.Namespace) -> int:
    """Compute the log-likelihoods and print them as JSON.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.

    Raises:
        InvalidArgument: A fixed-grid --solver without --steps, or an invalid setting.
    """
    if args.solver not in ADAPTIVE and args.steps is None:
        raise InvalidArgument(f"--solver {args.solver} runs a fixed grid: give --steps N (an integer >= 1)")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = LikelihoodSettings(model=args.model, data=args.data, samples=args.samples, divergence=args.divergence,
                                  probes=args.probes, probe=args.probe, seed=args.seed, solver=args.solver,
                                  steps=args.steps, rtol=args.rtol, atol=args.atol, dequantize=args.dequantize)
    with Progress("likelihood") as report:      # one long solve: heartbeat lines outside a terminal
        report.note(f"{settings.solver} on {settings.samples} {settings.model} samples")
        result = likelihood_report(settings)
    print(json.dumps(result, indent=1))
    return 0
