"""`diffsolve train`: retrain the built-in models (MNIST UNets, classifier, feature statistics, consistency model, and
the 2-D moons flows), seeded; the files go to the package's weights folder unless --out says otherwise."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from diffsolve.checks import check_writable
from diffsolve.cli import argtypes
from diffsolve.models.builtin import WEIGHTS
from diffsolve.training.configs import AdversarialConfig, ConsistencyConfig
from diffsolve.training.recipes import STAGE_CHOICES, WHAT, MnistTrainSettings, train_mnist
from diffsolve.training.toy2d import DEFAULTS as MOONS_DEFAULTS, train_moons
from diffsolve.progress import Progress

MOONS = tuple(f"moons-{k}" for k in MOONS_DEFAULTS) + ("moons",)


def _stages(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(","))
    if kinds not in STAGE_CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r}: 'cd', 'adversarial' or 'cd,adversarial'")
    return kinds


def _channels(text: str) -> tuple[int, ...]:
    return tuple(argtypes.positive_int(v) for v in text.split(","))


def _field_value(config: type) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or key not in config.__dataclass_fields__:
            raise argparse.ArgumentTypeError(f"{text!r}: not FIELD=VALUE with a {config.__name__} field")
        try:
            type(getattr(config(), key))(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a value of {key}") from None
        return key, value
    parse.__name__ = "FIELD=VALUE"
    return parse


def add_parser(sub) -> None:
    """Add the `train` subcommand and its options to the command line.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    ap = sub.add_parser("train", help="retrain the built-in models (MNIST UNets, classifier, consistency, moons flows)",
                        description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--what", choices=WHAT + MOONS, required=True,
                    help="unet, unet_deep, classifier, stats (the classifier's feature statistics), consistency; "
                         "moons-1rf, moons-2rf (needs the 1-RF), moons-shortcut, moons-8gaussians (a 1-RF from the "
                         "eight-Gaussians source), or moons (all four)")
    ap.add_argument("--iters", type=argtypes.positive_int, default=None,
                    help="training iterations (default: the shipped config)")
    ap.add_argument("--out", type=Path, default=WEIGHTS, help="folder for the safetensors files")
    ap.add_argument("--threads", type=argtypes.positive_int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=argtypes.seed, default=None,
                    help="seed of a single stage (default: 0; consistency: ConsistencyConfig.seed)")
    ap.add_argument("--checkpoint-every", type=argtypes.int_at_least(0), default=300,
                    help="iterations between checkpoints (0: none)")
    ap.add_argument("--channels", type=_channels, default=None, help="UNet widths per level, e.g. 16,32,64")
    ap.add_argument("--lr", type=argtypes.positive_float, default=None,
                    help="learning rate (default: the recipe's for --what)")
    ap.add_argument("--init", type=Path, default=None,
                    help="unet: continue from these UNet weights (one stage, with --lr); default: all UNET_STAGES "
                         "from scratch; consistency: the teacher (default: the shipped UNet)")
    ap.add_argument("--set", action="append", type=_field_value(ConsistencyConfig), metavar="FIELD=VALUE",
                    help="consistency: override a ConsistencyConfig field (repeatable)")
    ap.add_argument("--resume", type=Path, default=None,
                    help="consistency: continue from these consistency-model weights (one stage, with --lr)")
    ap.add_argument("--stages", type=_stages, default=("cd", "adversarial"),
                    help="consistency: 'cd' (CONSISTENCY_STAGES, or one stage with --resume/--iters/--lr), "
                         "'adversarial' (AdversarialConfig; alone it needs --resume) or both, comma-separated")
    ap.add_argument("--set-adversarial", action="append", type=_field_value(AdversarialConfig), metavar="FIELD=VALUE",
                    help="consistency: override an AdversarialConfig field (repeatable)")
    ap.add_argument("--save-student", type=Path, default=None,
                    help="consistency: also save the raw (non-EMA) student weights here")
    ap.add_argument("--couplings", type=Path, default=None,
                    help="moons-2rf: folder for its couplings (resumable; default: a temporary folder)")


def run(args: argparse.Namespace) -> int:
    """Train what --what names, after checking every output place is writable.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.

    Raises:
        InvalidArgument: An output place is not writable, or a setting is invalid.
    """
    check_writable(args.out, "--out")                   # every output place before any training
    if args.save_student is not None:
        check_writable(args.save_student.parent, "--save-student")
    if args.couplings is not None:
        check_writable(args.couplings, "--couplings")
    torch.set_num_threads(args.threads)
    if args.what in MOONS:
        for what in (tuple(MOONS_DEFAULTS) if args.what == "moons" else (args.what.removeprefix("moons-"),)):
            with Progress(f"train {what}") as report:
                train_moons(what, args.out, iters=args.iters, couplings=args.couplings, log=report.log)
        return 0
    with Progress(f"train {args.what}"):       # heartbeat lines between the trainer's own log lines
        _train_mnist(args)
    return 0


def _train_mnist(args: argparse.Namespace) -> None:
    train_mnist(MnistTrainSettings(
        what=args.what, out=args.out, iters=args.iters, seed=args.seed, threads=args.threads,
        checkpoint_every=args.checkpoint_every, channels=args.channels, lr=args.lr, init=args.init,
        resume=args.resume, stages=args.stages, overrides=dict(args.set or []),
        adversarial_overrides=dict(args.set_adversarial or []), save_student=args.save_student))
