"""Tuners: what `diffsolve tune <name>` runs, as a registry. A tuner is a frozen settings dataclass (its fields are
the command's options: each field's metadata names its flag, help and how its text is read) and a function
`run(model, settings, context) -> Path` that trains the correction and writes it to `settings.out_path()`.

    register_tuner("amed", AMEDTuneSettings, tune_amed, "train an AMED predictor")
    tune("amed", model, AMEDTuneSettings(nfe=(5,), epochs=3), TuneContext(model_name="gmm"))

Settings are checked when they are made (InvalidArgument naming the flag: a zero where zero is meaningless is
refused, never replaced by a default), and the output file before any training.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from diffsolve.checks import SEED_LIMIT, check_writable
from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.corrections.cost import CountingField
from diffsolve.corrections.io import load_correction
from diffsolve.corrections.teacher import field_of
from diffsolve.corrections.teacher_choice import choose_teacher, teacher_error

TEACHERS = ("reference", "fine")


def option(default: Any, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (),
           parse: Callable[[str, str], Any] | None = None, metavar: str | None = None) -> Any:
    """A settings field that is also a command-line option.

    Args:
        default: The field's default value.
        help: The option's help text.
        flag: The option string; None is --field-name.
        aliases: Older spellings accepted as further option strings.
        parse: `parse(text, flag)` reading the option's text; None: a switch for a bool field, else the text itself.
        metavar: The placeholder shown in the help; None is the parser's default.

    Returns:
        (dataclasses.Field): The field, its option data in its metadata.
    """
    return dataclasses.field(default=default, metadata={"flag": flag, "aliases": aliases, "help": help,
                                                        "parse": parse, "metavar": metavar})


def flag_of(f: dataclasses.Field) -> str:
    """The option string of a settings field: its metadata's flag, else --field-name.

    Args:
        f: A field made by `option`.

    Returns:
        The flag, e.g. "--batch-size".
    """
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# ------------------------------------------------------------------------------------------------
# Reading option text (each error names the flag)
# ------------------------------------------------------------------------------------------------
def parse_int(text: str, flag: str) -> int:
    """An option's text as an integer.

    Args:
        text: The text given.
        flag: The option string, named in the error.

    Returns:
        The integer.

    Raises:
        InvalidArgument: The text is not an integer.
    """
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: not an integer") from None


def parse_float(text: str, flag: str) -> float:
    """An option's text as a number.

    Args:
        text: The text given.
        flag: The option string, named in the error.

    Returns:
        The number.

    Raises:
        InvalidArgument: The text is not a number.
    """
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: not a number") from None


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    """An option's text as positive integers, separated by commas or spaces.

    Args:
        text: The text given, e.g. "3,5,7".
        flag: The option string, named in the error.

    Returns:
        The integers.

    Raises:
        InvalidArgument: A value is not an integer, none is given, or one is below 1.
    """
    vals = tuple(parse_int(v, flag) for v in text.replace(",", " ").split())
    if not vals or min(vals) < 1:
        raise InvalidArgument(f"{flag} {text!r}: give positive integers")
    return vals


def parse_names(text: str, flag: str) -> tuple[str, ...]:
    """An option's text as comma-separated names (blanks dropped).

    Args:
        text: The text given.
        flag: The option string (unused: any text is valid).

    Returns:
        The names.
    """
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_pair(text: str, flag: str) -> tuple[float, float]:
    """An option's text as two numbers 'lo,hi'.

    Args:
        text: The text given.
        flag: The option string, named in the error.

    Returns:
        (lo, hi).

    Raises:
        InvalidArgument: The text is not two numbers.
    """
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: give two numbers 'lo,hi'") from None
    return lo, hi


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def check_count(flag: str, value: Any, minimum: int = 1) -> None:
    """Refuse a count that is not an integer >= `minimum` (a bool is refused too).

    Args:
        flag: The option string, named in the error.
        value: The value to check.
        minimum: The smallest allowed value (default 1: zero is refused).

    Raises:
        InvalidArgument: The value is not an integer >= minimum.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidArgument(f"{flag} {value!r}: must be an integer >= {minimum}")


def check_rate(flag: str, value: Any) -> None:
    """Refuse a rate that is not a finite number > 0.

    Args:
        flag: The option string, named in the error.
        value: The value to check.

    Raises:
        InvalidArgument: The value is not a finite number > 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{flag} {value!r}: must be a finite number > 0")


def check_one_of(flag: str, value: Any, allowed: tuple) -> None:
    """Refuse a value that is not one of `allowed`.

    Args:
        flag: The option string, named in the error.
        value: The value to check.
        allowed: The allowed values.

    Raises:
        InvalidArgument: The value is not allowed; the message lists the allowed values.
    """
    if value not in allowed:
        raise InvalidArgument(f"{flag} {value!r}; allowed values: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class TuneSettings:
    """What every tuner takes.

    The base solver, the NFE budgets, the output file, the seed, the sample count (each tuner its own default), the
    teacher and torch's CPU threads. Checked when made.

    Attributes:
        solver: The base solver (--solver).
        nfe: The NFE budgets (--nfe, default 3,5,7,9).
        out: The output file; None names it after the tuner and the solver.
        seed: Seed of the weights, noise and batch order, in [0, 2**63).
        samples: Training trajectories (--samples, old --n); None in a subclass is the tuner's own default.
        teacher: "reference" (adaptive float64 solve) or "fine" (a fine-grid solve); None is "fine" for image models,
            else "reference".
        ref_rtol: With the reference teacher, dopri5 at this rtol = atol in float64 instead of the model's reference
            settings; None keeps those.
        threads: torch CPU threads (default 1).
        suffix: What the output file must end with (".safetensors").

    Raises:
        InvalidArgument: A field is invalid (the message names its flag).
    """

    solver: str = option("ipndm", "base solver")
    nfe: tuple[int, ...] = option((3, 5, 7, 9), "comma-separated NFE budgets (default 3,5,7,9)", parse=parse_ints)
    out: str | None = option(None, "output file (default: named after the tuner and the solver)")
    seed: int = option(0, "seed of the weights, noise and batch order (default 0)", parse=parse_int)
    samples: int = option(128, "training trajectories", aliases=("--n",), parse=parse_int)
    teacher: str | None = option(None, "reference (adaptive float64 solve) or fine (a fine-grid solve; the default "
                                 "for image models)")
    ref_rtol: float | None = option(None, "teacher 'reference': dopri5 at this rtol = atol in float64 instead of the "
                                    "model's reference settings", aliases=("--reference-rtol",), parse=parse_float)
    threads: int = option(1, "torch CPU threads (default 1)", parse=parse_int)
    suffix = ".safetensors"             # what the output file must end with

    def __post_init__(self) -> None:
        if not self.nfe or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.nfe):
            raise InvalidArgument(f"--nfe {self.nfe!r}: give positive integers")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < SEED_LIMIT:
            raise InvalidArgument(f"--seed {self.seed!r}: a seed must be in [0, 2**63)")
        if self.samples is not None:        # None: the tuner's own default (corrections.tuners.AMEDTuneSettings)
            check_count("--samples", self.samples)
        check_count("--threads", self.threads)
        if self.teacher is not None:
            check_one_of("--teacher", self.teacher, TEACHERS)
        if self.ref_rtol is not None:
            check_rate("--ref-rtol", self.ref_rtol)
        if self.out is not None and not str(self.out).endswith(self.suffix):
            raise InvalidArgument(f"--out {self.out!r}: this tuner writes a {self.suffix} file")

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "correction-<solver>.safetensors" here; each tuner names its own.
        """
        return f"correction-{self.solver}{self.suffix}"

    def out_path(self) -> Path:
        """The output file: `out`, else `default_out()`.

        Returns:
            The path.
        """
        return Path(self.out if self.out is not None else self.default_out())


@dataclass(frozen=True)
class TuneContext:
    """What the caller knows about the model besides the model itself.

    Attributes:
        model_name: The model's name, recorded in the file; None records none.
        dtype: The dtype to train in.
        reference: The model's reference-solve settings; None is the default settings.
        image: Whether it is an image model (the 'fine' teacher by default).
        log: Where progress goes; None is silent.
        import_object: How a 'module:attr' option is imported, as import_object(spec, flag); None refuses such options.
    """

    model_name: str | None = None
    dtype: torch.dtype = torch.float32
    reference: Any = None
    image: bool = False
    log: Callable[[str], None] | None = print
    import_object: Callable[[str, str], Any] | None = None


@dataclass(frozen=True)
class Tuner:
    """One registered tuner.

    Attributes:
        name: The name `diffsolve tune <name>` takes.
        settings: Its settings dataclass (derived from TuneSettings).
        run: run(model, settings, context) -> the written file's path.
        summary: One line for the command's help.
        uses_teacher: Whether it trains against the teacher (its teacher is chosen and checked first).
        auto: The settings `diffsolve tune auto` tries it with (a light recipe; nfe, out and seed are set there);
            None: not a candidate of `tune auto`.
    """
    name: str
    settings: type
    run: Callable[[Any, Any, TuneContext], Path]
    summary: str = ""
    uses_teacher: bool = True
    auto: Mapping[str, Any] | None = None


TUNERS: dict[str, Tuner] = {}


def register_tuner(name: str, settings: type, run: Callable[[Any, Any, TuneContext], Path],
                   summary: str = "", *, uses_teacher: bool = True, auto: Mapping[str, Any] | None = None) -> None:
    """Make `diffsolve tune <name>` train with `run(model, settings, context)`.

    Args:
        name: The tuner's name (replaces a tuner of that name).
        settings: A frozen dataclass derived from TuneSettings whose fields are the command's options.
        run: Trains the correction, writes it to `settings.out_path()` and returns that path.
        summary: One line for the command's help.
        uses_teacher: Whether it trains against the teacher (default True; skip-tuning does not).
        auto: Make it a candidate of `diffsolve tune auto`, trained with these settings (a light recipe, e.g.
            {"solver": "deis", "samples": 48, "epochs": 40}; `tune auto` sets nfe, out and seed and stops the epochs
            when its time is up); a value "candidate:NAME" is the file candidate NAME wrote at the same NFE
            (left out when it wrote none); None: not a candidate.

    Raises:
        InvalidArgument: `settings` is not a TuneSettings class, or `auto` is not a mapping of its fields.
    """
    if not (isinstance(settings, type) and issubclass(settings, TuneSettings)):
        raise InvalidArgument(f"tuner {name!r}: settings must be a TuneSettings dataclass")
    if auto is not None:
        fields = {f.name for f in dataclasses.fields(settings)}
        if not isinstance(auto, Mapping) or set(auto) - fields:
            raise InvalidArgument(f"tuner {name!r}: auto= must map settings fields ({', '.join(sorted(fields))}) to "
                                  "values")
    TUNERS[name] = Tuner(name, settings, run, summary, uses_teacher, dict(auto) if auto is not None else None)


def get_tuner(name: str) -> Tuner:
    """The registered tuner `name`.

    Args:
        name: The tuner's name.

    Returns:
        The tuner.

    Raises:
        InvalidArgument: No tuner has that name; the message lists the registered ones.
    """
    if name not in TUNERS:
        raise InvalidArgument(f"tuner {name!r}; allowed values: {', '.join(sorted(TUNERS))}")
    return TUNERS[name]


def check_out(settings: TuneSettings) -> Path:
    """The output file, its folder proven writable: before any training.

    Args:
        settings: The tuner's settings.

    Returns:
        The output file's path.

    Raises:
        InvalidArgument: The folder cannot be written (named as --out).
    """
    path = settings.out_path()
    check_writable(path.parent if str(path.parent) else Path("."), "--out")
    return path


def tune(name: str, model: Any, settings: TuneSettings, context: TuneContext = TuneContext()) -> Path:
    """Run the registered tuner `name` on `model` and write its file; returns the file's path.

    Args:
        name: The tuner's name.
        model: The model or field to tune for.
        settings: The tuner's settings, an instance of its settings class.
        context: What the caller knows about the model (default: a TuneContext of defaults).

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: No tuner has that name, `settings` is of another class, the output folder cannot be
            written, or the tuner refuses the model or settings.
    """
    tuner = get_tuner(name)
    if not isinstance(settings, tuner.settings):
        raise InvalidArgument(f"tuner {name!r} takes {tuner.settings.__name__}, not {type(settings).__name__}")
    check_out(settings)
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    counted = CountingField(field_of(model))        # the cost, counted the same way for every tuner
    if tuner.uses_teacher:
        settings = dataclasses.replace(settings, teacher=choose_teacher(counted, settings.teacher, context.image))
        if context.log:
            context.log(teacher_error(counted, settings.teacher, reference_settings(settings, context), context.dtype))
    path = tuner.run(counted, settings, context)
    record_cost(path, counted.counts, time.perf_counter() - start, context.log)
    return path


def reference_settings(settings: TuneSettings, context: TuneContext) -> Any:
    """The 'reference' teacher's settings: dopri5 at --ref-rtol when given, else the model's reference settings.

    Args:
        settings: The tuner's settings.
        context: What the caller knows about the model.

    Returns:
        (ReferenceSettings | None): The settings; None is the defaults.
    """
    if settings.ref_rtol is not None:
        return ReferenceSettings(method="dopri5", rtol=settings.ref_rtol, atol=settings.ref_rtol)
    return context.reference


def cost_line(counts: Mapping[str, int], seconds: float) -> str:
    """What a tuning run spent, as one line.

    Args:
        counts: Phase -> model evaluations (corrections.cost.CountingField.counts).
        seconds: Wall-clock seconds.

    Returns:
        E.g. "spent 41 s and 123,456 model evaluations (teacher 80,000, training 43,000, teacher check 456)".
    """
    held_out = f", held-out validation {counts['validation']:,}" if counts.get("validation") else ""
    return (f"spent {seconds:.0f} s and {sum(counts.values()):,} model evaluations (teacher {counts['teacher']:,}, "
            f"training {counts['training']:,}, teacher check {counts['check']:,}{held_out})")


def record_cost(path: Path, counts: Mapping[str, int], seconds: float, log: Callable[[str], None] | None) -> None:
    """Print what tuning spent and record it in the written file's meta ("cost"), rewritten atomically.

    Args:
        path: The file the tuner wrote (a correction file's meta gets it; a skip-tuning .json is left as written).
        counts: Phase -> model evaluations.
        seconds: Wall-clock seconds.
        log: Where the line goes; None: silent.
    """
    cost = {"seconds": round(seconds, 1), "model_evaluations": dict(counts)}
    path = Path(path)
    if path.suffix == ".safetensors":
        corr = load_correction(path)
        corr.meta["cost"] = cost
        corr.save(path)
    if log:
        log(cost_line(counts, seconds))
