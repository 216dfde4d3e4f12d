"""`diffsolve tune <tuner>`: fit a learned correction to one model and write it. One subcommand per registered
tuner (diffsolve.corrections.tuning.register_tuner: amed, gits, grid, weights, skip, auto, and any registered
later), its options read from the fields of the tuner's settings dataclass. `tune auto` trains every candidate
within --budget seconds and writes the winner of each NFE; every tune prints its teacher's own error and the
model evaluations it spent."""
from __future__ import annotations

import argparse
import dataclasses

from diffsolve.bench.models import import_object
from diffsolve.cli.model_options import add_model_options, build_model, model_options_from
from diffsolve.corrections import tuners as _builtin  # noqa: F401  (registers the built-in tuners)
from diffsolve.corrections.tuning import TUNERS, TuneContext, check_out, flag_of, get_tuner, tune
from diffsolve.progress import Progress


def _add_field(p: argparse.ArgumentParser, f: dataclasses.Field) -> None:
    names = (flag_of(f), *f.metadata.get("aliases", ()))
    if f.metadata.get("parse") is None and f.default is False:
        p.add_argument(*names, dest=f.name, action="store_true", default=argparse.SUPPRESS,
                       help=f.metadata.get("help"))
        return
    text = f.metadata.get("help") or ""
    if "default" not in text and f.default is not None:
        text += f" (default {','.join(map(str, f.default)) if isinstance(f.default, tuple) else f.default})"
    p.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, metavar=f.metadata.get("metavar"), help=text)


def add_parser(sub) -> None:
    """Add the `tune` subcommand and its options to the command line.

    One sub-subcommand per registered tuner, one option per field of its settings dataclass.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    t = sub.add_parser("tune", help="train a learned correction (AMED predictor, GITS or learned grid, multistep "
                                    "weights, skip scales) for one model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = t.add_subparsers(dest="tuner", metavar="{" + ",".join(TUNERS) + "}")
    kinds.required = True
    for name, tuner in TUNERS.items():
        p = kinds.add_parser(name, help=tuner.summary, description=tuner.summary)
        add_model_options(p)
        for f in dataclasses.fields(tuner.settings):
            _add_field(p, f)


def settings_from(args: argparse.Namespace):
    """The tuner's settings from the options given (each read by its field's parser; the rest keep the
    dataclass defaults).

    Args:
        args: The parsed options of `diffsolve tune <tuner>`.

    Returns:
        (Any): The tuner's settings dataclass.

    Raises:
        InvalidArgument: A value the settings refuse.
    """
    tuner = get_tuner(args.tuner)
    given = {}
    for f in dataclasses.fields(tuner.settings):
        if f.name in vars(args):
            parse = f.metadata.get("parse")
            value = getattr(args, f.name)
            given[f.name] = parse(value, flag_of(f)) if parse is not None and isinstance(value, str) else value
    return tuner.settings(**given)


def run(args: argparse.Namespace) -> int:
    """Tune the correction the options name for the model, after checking the output place.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.

    Raises:
        InvalidArgument: An invalid setting, model or conditioning (naming the flag), or an unwritable output place.
    """
    options = model_options_from(args)
    settings = settings_from(args)
    check_out(settings)                       # before the model is built or anything trained
    entry, model = build_model(options, settings.samples, settings.seed)
    if options.conditions is not None and settings.samples is None:
        # the tuner's own default count: as many training samples as conditions were given
        settings = dataclasses.replace(settings, samples=model.condition_rows)
    with Progress(f"tune {args.tuner}") as report:      # heartbeat lines through a long teacher solve or epoch
        context = TuneContext(model_name=entry.name, dtype=entry.dtype or TuneContext.dtype,
                              reference=entry.reference, image=entry.kind == "image", log=report.log,
                              import_object=import_object)
        tune(args.tuner, model, settings, context)
    return 0
