"""The model a command runs on, in one place: `--model` (a bench name, 'module:attr' or a local diffusers folder)
and its conditioning: `--conditions` (per-sample keyword tensors: a safetensors file with a leading sample
dimension, or 'module:attr' naming a function `(n, generator) -> dict of tensors` that draws them),
`--guidance-scale W` with `--uncond` (the unconditional keywords, a safetensors file or 'module:attr' naming a
dict or a function of no arguments returning one). The flags parse into ModelOptions at the edge; `build_model`
makes the field (guided, then conditioned) the command tunes or samples."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file

from diffsolve.bench.models import BenchModel, import_object, model_with_source, resolve_model
from diffsolve.errors import InvalidArgument
from diffsolve.field import ClassifierFreeGuidance, Conditioned, Field, as_field, check_conditions

MODEL_HELP = ("built-in bench model name (mnist-unet, gmm, ...), 'module:attr', or a local diffusers folder (a "
              "pipeline with unet/ and scheduler/, or a UNet folder with its scheduler) (default mnist-unet)")
SOURCE_HELP = ("'module:attr' naming the plain velocity field's source: a torch.distributions.Distribution or a "
               "callable source(n, generator) -> [n, *sample_shape] (default: the model's own, else N(0, I))")
DEFAULT_SAMPLES = 128        # drawn conditions when the tuner's sample count is its own default (amed: 128)


@dataclass(frozen=True)
class ModelOptions:
    """The model and its conditioning, as the command line gives them.

    Attributes:
        model: A bench name, 'module:attr' or a diffusers folder (--model).
        conditions: A safetensors file or 'module:attr' of per-sample keyword tensors (--conditions); None: none.
        guidance_scale: Classifier-free guidance's weight (--guidance-scale); None: no guidance.
        uncond: A safetensors file or 'module:attr' of the unconditional keywords (--uncond).
        source: 'module:attr' naming a plain velocity field's source (--source); None: the model's own.

    Raises:
        InvalidArgument: A bad value or combination; the message names the flag.
    """

    model: str = "mnist-unet"
    conditions: str | None = None
    guidance_scale: float | None = None
    uncond: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--model", self.model), ("--conditions", self.conditions), ("--uncond", self.uncond),
                            ("--source", self.source)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidArgument(f"{flag} {value!r}: give a path or 'module:attr'")
        w = self.guidance_scale
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)
                              or w < 0):
            raise InvalidArgument(f"--guidance-scale {w!r}: must be a finite number >= 0")
        if (w is None) != (self.uncond is None):
            raise InvalidArgument("--guidance-scale and --uncond go together: guidance needs the unconditional "
                                  "keywords (e.g. the null class label), and --uncond only serves guidance")
        if w is not None and self.conditions is None:
            raise InvalidArgument("--guidance-scale needs --conditions (the conditional keywords it guides towards)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Add --model, --source, --conditions, --guidance-scale and --uncond to a command's parser.

    Args:
        p: The command's parser.
    """
    p.add_argument("--model", default="mnist-unet", help=MODEL_HELP)
    p.add_argument("--source", default=None, metavar="MODULE:ATTR", help=SOURCE_HELP)
    p.add_argument("--conditions", default=None, metavar="PATH|module:attr",
                   help="per-sample model keywords: a safetensors file of tensors with a leading sample dimension "
                        "(one row per training sample), or a function (n, generator) -> dict of tensors")
    p.add_argument("--guidance-scale", default=None, metavar="W",
                   help="classifier-free guidance weight (with --uncond); tuned as part of the field")
    p.add_argument("--uncond", default=None, metavar="PATH|module:attr",
                   help="the unconditional keywords of guidance (e.g. the null class label): a safetensors file, "
                        "or a dict or a function of no arguments returning one")


def model_options_from(args: argparse.Namespace) -> ModelOptions:
    """The ModelOptions of parsed arguments (the scale's text read as a number here, naming its flag).

    Args:
        args: The parsed options.

    Returns:
        The options.

    Raises:
        InvalidArgument: A bad value; the message names the flag.
    """
    w = getattr(args, "guidance_scale", None)
    if isinstance(w, str):
        try:
            w = float(w)
        except ValueError:
            raise InvalidArgument(f"--guidance-scale {w!r}: not a number") from None
    return ModelOptions(model=args.model, conditions=getattr(args, "conditions", None), guidance_scale=w,
                        uncond=getattr(args, "uncond", None), source=getattr(args, "source", None))


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".safetensors") or Path(spec).is_file() or ":" not in spec


def _load_file(spec: str, flag: str) -> dict[str, torch.Tensor]:
    if not Path(spec).is_file():
        raise InvalidArgument(f"{flag} {spec!r}: no such file (give a safetensors file or 'module:attr')")
    try:
        return load_file(spec)
    except Exception as e:          # safetensors raises its own error types for a foreign or truncated file
        raise InvalidArgument(f"{flag} {spec!r}: not a readable safetensors file ({type(e).__name__})") from None


def load_conditions(spec: str, n: int | None, seed: int,
                    importer: Callable[[str, str], Any] = import_object) -> dict[str, torch.Tensor]:
    """The per-sample conditions --conditions names, one row per training sample.

    Args:
        spec: A safetensors file, or 'module:attr' naming a function `(n, generator) -> dict` (or a dict).
        n: The training sample count the rows must match; None: a file's own count (a function draws
            DEFAULT_SAMPLES).
        seed: Seeds the generator a function draws with.
        importer: How 'module:attr' is imported.

    Returns:
        `{keyword: tensor [n, ...]}`.

    Raises:
        InvalidArgument: Unreadable, not keyword tensors with one row count, or a count other than n (naming
            --conditions and --samples).
    """
    if _is_file_spec(spec):
        conds = _load_file(spec, "--conditions")
    else:
        obj = importer(spec, "--conditions")
        if callable(obj):
            want = DEFAULT_SAMPLES if n is None else n
            obj = obj(want, torch.Generator().manual_seed(seed))
            n = want
        conds = obj
    conds = check_conditions(conds, f"--conditions {spec!r}")
    rows = int(next(iter(conds.values())).shape[0])
    if n is not None and rows != n:
        raise InvalidArgument(f"--conditions {spec!r} gives {rows} samples but --samples is {n}: one condition per "
                              "training sample")
    return conds


def load_uncond(spec: str, importer: Callable[[str, str], Any] = import_object) -> dict[str, torch.Tensor]:
    """The unconditional keywords --uncond names (a safetensors file, a dict, or a function of no arguments).

    Args:
        spec: The file or 'module:attr'.
        importer: How 'module:attr' is imported.

    Returns:
        `{keyword: tensor}` (one row serves the whole batch).

    Raises:
        InvalidArgument: Unreadable, or not keyword tensors (naming --uncond).
    """
    if _is_file_spec(spec):
        return check_conditions(_load_file(spec, "--uncond"), f"--uncond {spec!r}")
    obj = importer(spec, "--uncond")
    if callable(obj) and not isinstance(obj, Mapping):
        obj = obj()
    return check_conditions(obj, f"--uncond {spec!r}")


def load_conditioning(opts: ModelOptions, n: int | None, seed: int,
                      importer: Callable[[str, str], Any] = import_object) -> tuple[dict | None, dict | None]:
    """The conditions and unconditional keywords the options name, read before any model is built.

    Args:
        opts: The options.
        n: The training sample count (see load_conditions).
        seed: Seeds a drawing function.
        importer: How 'module:attr' is imported.

    Returns:
        (conditions or None, unconditional keywords or None).

    Raises:
        InvalidArgument: As load_conditions and load_uncond, or keywords the unconditional ones lack.
    """
    if opts.conditions is None:
        return None, None
    conds = load_conditions(opts.conditions, n, seed, importer)
    if opts.guidance_scale is None:
        return conds, None
    uncond = load_uncond(opts.uncond, importer)
    missing = sorted(set(conds) - set(uncond))
    if missing:
        raise InvalidArgument(f"--uncond {opts.uncond!r} lacks the keywords {missing} that --conditions gives: "
                              "the unconditional call would keep the conditions")
    return conds, uncond


def conditioned_field(model: Any, opts: ModelOptions, conds: dict | None, uncond: dict | None) -> Any:
    """The model as the field the options describe: guided (ClassifierFreeGuidance) and conditioned (Conditioned);
    the model itself without conditions.

    Args:
        model: The built model or field.
        opts: The options (the guidance scale).
        conds: The per-sample conditions, or None.
        uncond: The unconditional keywords (with a guidance scale), or None.

    Returns:
        The model, or the conditioned field.
    """
    if conds is None:
        return model
    field: Field = as_field(model)
    if opts.guidance_scale is not None:
        field = ClassifierFreeGuidance(field, float(opts.guidance_scale), uncond)
    return Conditioned(field, conds)


def build_model(opts: ModelOptions, n: int | None = None, seed: int = 0) -> tuple[BenchModel, Any]:
    """The bench entry and the model (conditioned field) the options name; the conditioning is read and checked
    before the model is built.

    Args:
        opts: The options.
        n: The training sample count the conditions must give (None: see load_conditions).
        seed: Seeds a drawing function of --conditions.

    Returns:
        (entry, model or field).

    Raises:
        InvalidArgument: An unknown model, or bad conditioning (naming the flag).
    """
    conds, uncond = load_conditioning(opts, n, seed)
    entry, model = resolve_model(opts.model)
    if opts.source is not None:
        model = model_with_source(model, opts.source)
    return entry, conditioned_field(model, opts, conds, uncond)


__all__ = ["ModelOptions", "add_model_options", "model_options_from", "load_conditions", "load_uncond",
           "load_conditioning", "conditioned_field", "build_model", "MODEL_HELP", "SOURCE_HELP", "DEFAULT_SAMPLES"]
