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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffsolve.checks import SEED_LIMIT, check_writable
from diffsolve.errors import InvalidArgument

TEACHERS = ("reference", "fine")


def option(default: Any, help: str, *, flag: str | None = None, aliases: tuple[str, ...] = (),
           parse: Callable[[str, str], Any] | None = None, metavar: str | None = None) -> Any:
    """A settings field that is also a command-line option: `flag` (default --field-name), older spellings
    `aliases`, and `parse(text, flag)` reading its text (None: a switch for a bool field, else the text itself)."""
    return dataclasses.field(default=default, metadata={"flag": flag, "aliases": aliases, "help": help,
                                                        "parse": parse, "metavar": metavar})


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# ------------------------------------------------------------------------------------------------
# Reading option text (each error names the flag)
# ------------------------------------------------------------------------------------------------
def parse_int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: not an integer") from None


def parse_float(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: not a number") from None


def parse_ints(text: str, flag: str) -> tuple[int, ...]:
    vals = tuple(parse_int(v, flag) for v in text.replace(",", " ").split())
    if not vals or min(vals) < 1:
        raise InvalidArgument(f"{flag} {text!r}: give positive integers")
    return vals


def parse_names(text: str, flag: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parse_pair(text: str, flag: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidArgument(f"{flag} {text!r}: give two numbers 'lo,hi'") from None
    return lo, hi


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def check_count(flag: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidArgument(f"{flag} {value!r}: must be an integer >= {minimum}")


def check_rate(flag: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"{flag} {value!r}: must be a finite number > 0")


def check_one_of(flag: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise InvalidArgument(f"{flag} {value!r}; allowed values: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class TuneSettings:
    """What every tuner takes: the base solver, the NFE budgets, the output file, the seed, the sample count
    (each tuner its own default), the teacher and torch's CPU threads."""

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
        return f"correction-{self.solver}{self.suffix}"

    def out_path(self) -> Path:
        return Path(self.out if self.out is not None else self.default_out())


@dataclass(frozen=True)
class TuneContext:
    """What the caller knows about the model besides the model itself: its name (recorded in the file), the
    dtype to train in, its reference-solve settings, whether it is an image model (the 'fine' teacher by
    default), where progress goes, and how a 'module:attr' option is imported."""

    model_name: str | None = None
    dtype: torch.dtype = torch.float32
    reference: Any = None
    image: bool = False
    log: Callable[[str], None] | None = print
    import_object: Callable[[str, str], Any] | None = None


@dataclass(frozen=True)
class Tuner:
    name: str
    settings: type
    run: Callable[[Any, Any, TuneContext], Path]
    summary: str = ""


TUNERS: dict[str, Tuner] = {}


def register_tuner(name: str, settings: type, run: Callable[[Any, Any, TuneContext], Path],
                   summary: str = "") -> None:
    """Make `diffsolve tune <name>` train with `run(model, settings, context)`; `settings` is a frozen dataclass
    derived from TuneSettings whose fields are the command's options."""
    if not (isinstance(settings, type) and issubclass(settings, TuneSettings)):
        raise InvalidArgument(f"tuner {name!r}: settings must be a TuneSettings dataclass")
    TUNERS[name] = Tuner(name, settings, run, summary)


def get_tuner(name: str) -> Tuner:
    if name not in TUNERS:
        raise InvalidArgument(f"tuner {name!r}; allowed values: {', '.join(sorted(TUNERS))}")
    return TUNERS[name]


def check_out(settings: TuneSettings) -> Path:
    """The output file, its folder proven writable: before any training."""
    path = settings.out_path()
    check_writable(path.parent if str(path.parent) else Path("."), "--out")
    return path


def tune(name: str, model: Any, settings: TuneSettings, context: TuneContext = TuneContext()) -> Path:
    """Run the registered tuner `name` on `model` and write its file; returns the file's path."""
    tuner = get_tuner(name)
    if not isinstance(settings, tuner.settings):
        raise InvalidArgument(f"tuner {name!r} takes {tuner.settings.__name__}, not {type(settings).__name__}")
    check_out(settings)
    torch.set_num_threads(settings.threads)
    return tuner.run(model, settings, context)
