"""`diffsolve evaluate`: FD and classifier confidence of the built-in MNIST models (and the shared MNIST DDPM).

It samples N images from each model with the same solver and step count (Heun, 50 steps = 99 model evaluations by
default), maps them to the classifier's [-1, 1] input range, and compares them with the held-out real images
(1,000). It also prints the same numbers for the real training images (a floor: what a perfect sampler of the
training set would get) and writes sample grids. `--models consistency --solver consistency --steps 1` scores the
built-in consistency model the same way; `--models moons` prints the moons flows' sliced W1 table as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffsolve.bench.models import SHARED
from diffsolve.cli import argtypes
from diffsolve.errors import DiffsolveError, InvalidArgument
from diffsolve.grids import GRIDS
from diffsolve.models.builtin import (WEIGHTS, load_feature_stats, load_mnist_classifier, load_mnist_consistency,
                                      load_mnist_unet)
from diffsolve.models.data import load_mnist
from diffsolve.progress import Progress
from diffsolve.checks import check_writable
from diffsolve.models.quality import cached_samples, sample_model, save_grid, score
from diffsolve.pretrained_adapters.mnist_ddpm import load_mnist_ddpm
from diffsolve.sampler import Sampler
from diffsolve.solvers import available_solvers
from diffsolve.training.toy2d import evaluate as evaluate_moons

SHARED_DDPM = SHARED / "models" / "mnist-ddpm-eps.safetensors"
MODELS = ("builtin", "ddpm", "consistency", "moons")
# Default NFE budgets of the sample-grid rows: the consistency sampler takes at most 39 steps of its 40-level grid.
GRID_NFE = (5, 10, 50)
CONSISTENCY_GRID_NFE = (1, 2, 4)


@dataclass
class EvaluateSettings:
    """What `diffsolve evaluate` draws and scores (see the options' help); grid_nfe None: the solver's default rows.

    Attributes:
        samples: Samples per model (at least 2: the Frechet distance needs a covariance).
        solver: Solver the FD is measured with.
        steps: Solver steps per sample.
        models: Models to score: builtin, ddpm, consistency.
        ddpm_grid: Grid for the DDPM; None takes its schedule's default.
        grid: Grid for the built-in UNet; None takes its schedule's default (karras).
        final: "zero" ends the grid at zero noise, "min" at the schedule's smallest level.
        grid_out: Folder for the sample grids.
        grid_nfe: NFE budgets of the grid rows; None takes the defaults (5, 10, 50; 1, 2, 4 for consistency).
        grid_solvers: Solvers of the grid rows.
        cache: Folder to keep and reuse drawn samples; None keeps nothing.
        sample_only: Draw (and cache) the samples without scoring them.
        unet: UNet weights to score; None takes the shipped ones.
        consistency: Consistency-model weights to score; None takes the shipped ones.
        seed: Base seed of the drawn noise.
    """

    samples: int = 1000
    solver: str = "heun"
    steps: int = 50
    models: tuple[str, ...] = ("builtin", "ddpm")
    ddpm_grid: str | None = None
    grid: str | None = None
    final: str = "zero"
    grid_out: Path = Path("diffsolve-eval")
    grid_nfe: tuple[int, ...] | None = None
    grid_solvers: tuple[str, ...] = ("heun", "dpmpp_2m")
    cache: Path | None = None
    sample_only: bool = False
    unet: Path | None = None
    consistency: Path | None = None
    seed: int = 0


def _names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in MODELS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of {', '.join(MODELS)}")
    if "moons" in names and len(names) > 1:
        raise argparse.ArgumentTypeError(f"{text!r}: moons is scored alone (sliced W1, not FD)")
    return names


def _solver_names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    known = available_solvers()
    bad = [v for v in names if v not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown solver {bad[0]!r} (diffsolve solvers lists them)")
    return names


def _solver_name(text: str) -> str:
    names = _solver_names(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one solver name")
    return names[0]


def _budgets(text: str) -> list[int]:
    return [argtypes.positive_int(v) for v in text.replace(" ", "").split(",") if v]


def _file(text: str) -> Path:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return Path(text)


def add_parser(sub) -> None:
    """Add the `evaluate` subcommand and its options to the command line.

    Args:
        sub (argparse._SubParsersAction): The `diffsolve` parser's subcommands.
    """
    ap = sub.add_parser("evaluate", help="FD and classifier confidence of the built-in model vs the shared DDPM",
                        description=__doc__.split("\n\n")[1].replace("\n", " "))
    # The Frechet distance needs a covariance: at least 2 samples.
    ap.add_argument("--samples", "--n", dest="samples", type=argtypes.int_at_least(2), default=1000,
                    help="samples per model (>= 2)")
    ap.add_argument("--solver", type=_solver_name, default="heun", help="solver the FD is measured with")
    ap.add_argument("--steps", type=argtypes.positive_int, default=50, help="solver steps per sample")
    ap.add_argument("--models", type=_names, default="builtin,ddpm",
                    help="comma list of builtin, ddpm, consistency (the last with --solver consistency); or moons")
    ap.add_argument("--ddpm-grid", choices=sorted(GRIDS), default=None,
                    help="grid for the DDPM (default: its schedule's default)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default=None,
                    help="grid for the built-in UNet (default: its schedule's default, karras)")
    ap.add_argument("--final", choices=("zero", "min"), default="zero",
                    help="whether the grid ends at zero noise or at the schedule's smallest level (default zero)")
    ap.add_argument("--grid-out", type=Path, default=Path("diffsolve-eval"), help="folder for sample grids")
    ap.add_argument("--grid-nfe", type=_budgets, default=None,
                    help="NFE budgets of the grid rows (at most this many; default 5,10,50, and 1,2,4 for the "
                         "consistency model); empty for no grid")
    ap.add_argument("--grid-solvers", type=_solver_names, default="heun,dpmpp_2m", help="solvers of the grid rows")
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep/reuse drawn samples (safetensors)")
    ap.add_argument("--sample-only", action="store_true", help="draw (and cache) samples, do not score")
    ap.add_argument("--unet", type=_file, default=None, help="UNet weights to score (default: the shipped ones)")
    ap.add_argument("--consistency", type=_file, default=None,
                    help="consistency-model weights to score (default: the shipped ones)")
    ap.add_argument("--threads", type=argtypes.positive_int, default=1, help="torch CPU threads")
    # seed and seed + 1 are used (the grids' noise)
    ap.add_argument("--seed", type=argtypes.seed_below(argtypes.SEED_LIMIT >> 1), default=0,
                    help="seed in [0, 2**62)")


def run(args: argparse.Namespace) -> int:
    """Score the models (or print the moons table), after checking the output folders are writable.

    Args:
        args: The parsed options of the subcommand.

    Returns:
        The exit status, 0.

    Raises:
        InvalidArgument: An output folder is not writable, or a grid row is impossible.
    """
    torch.set_num_threads(args.threads)
    if args.models == ["moons"]:
        print(json.dumps(evaluate_moons(), indent=1))
        return 0
    # output folders proven writable before any model is loaded or sampled
    check_writable(args.grid_out, "--grid-out")
    if args.cache is not None:
        check_writable(args.cache, "--cache")
    settings = EvaluateSettings(
        samples=args.samples, solver=args.solver, steps=args.steps, models=tuple(args.models),
        ddpm_grid=args.ddpm_grid, grid=args.grid, final=args.final, grid_out=args.grid_out,
        grid_nfe=None if args.grid_nfe is None else tuple(args.grid_nfe), grid_solvers=tuple(args.grid_solvers),
        cache=args.cache, sample_only=args.sample_only, unet=args.unet, consistency=args.consistency, seed=args.seed)
    with Progress(f"evaluate {','.join(settings.models)}"):      # heartbeat lines while models sample
        evaluate_mnist(settings)
    return 0


def evaluate_mnist(s: EvaluateSettings) -> None:
    """Draw (or read from the cache) each model's samples and grid rows, then print the FD / confidence table.

    Args:
        s: What to draw and score.

    Raises:
        InvalidArgument: A grid row cannot be planned at its NFE budget (checked before any sampling).
    """
    loaded = [(name, *_load(name, s)) for name in s.models]
    for name, model, grid, _ in loaded:         # refuse an impossible grid row before any sampling
        for solver, budget in _grid_rows(name, s):
            try:
                Sampler(model, solver, grid, progress=False).plan(nfe=budget)
            except DiffsolveError as e:
                raise InvalidArgument(f"--grid-nfe: the {name} model's grid row '{solver}, {budget} NFE' is "
                                      f"impossible ({e})") from None
    drawn = [_draw(name, model, grid, weights, s) for name, model, grid, weights in loaded]
    if s.sample_only:
        return
    clf, ref = load_mnist_classifier(), load_feature_stats()
    print(f"{'images':<34} {'NFE':>4} {'FD':>9} {'confidence':>10}  (vs held-out real, 1000 images)")
    for split in ("train", "heldout"):
        x = load_mnist(split)[0]
        x = x[::max(1, x.shape[0] // s.samples)][:s.samples]     # the splits are sorted by class: take every k-th
        r = score(clf, x, ref)
        print(f"{'real ' + split + f' ({x.shape[0]})':<34} {'-':>4} {r['fd']:9.3f} {r['confidence']:10.4f}")
    for label, x, nfe in drawn:
        r = score(clf, x, ref)
        print(f"{label:<34} {nfe:>4} {r['fd']:9.3f} {r['confidence']:10.4f}", flush=True)


def _load(name: str, s: EvaluateSettings) -> tuple[Any, str | None, Path]:
    """(model, its grid, its weights file) of one of builtin, consistency, ddpm."""
    if name == "builtin":
        weights = WEIGHTS / "mnist_unet.safetensors" if s.unet is None else s.unet
        return load_mnist_unet(weights), s.grid, weights
    if name == "consistency":
        weights = WEIGHTS / "mnist_consistency.safetensors" if s.consistency is None else s.consistency
        return load_mnist_consistency(weights), None, weights
    if not SHARED_DDPM.is_file():
        raise InvalidArgument(f"--models ddpm: {SHARED_DDPM} is missing (the shared model folder beside the "
                              "repository)")
    return load_mnist_ddpm(SHARED_DDPM), s.ddpm_grid, SHARED_DDPM


def _grid_rows(name: str, s: EvaluateSettings) -> list[tuple[str, int]]:
    """(solver, NFE budget) of each sample-grid row: a consistency model's rows use its own sampler."""
    if name == "consistency":
        solvers, budgets = ("consistency",), CONSISTENCY_GRID_NFE if s.grid_nfe is None else s.grid_nfe
    else:
        solvers, budgets = s.grid_solvers, GRID_NFE if s.grid_nfe is None else s.grid_nfe
    return [(solver, budget) for solver in solvers for budget in budgets]


def _draw(name: str, model: Any, grid: str | None, weights: Path,
          s: EvaluateSettings) -> tuple[str, torch.Tensor, int]:
    """One model's scored samples (label, images, NFE); writes its sample grid."""
    t0 = time.time()
    digest = hashlib.sha1(Path(weights).read_bytes()).hexdigest()[:10]   # cached samples follow the weights
    options = {"final": "min"} if s.final == "min" and name != "consistency" else None
    key = (f"{name}-{digest}_{s.solver}_{s.steps}_{grid or 'default'}{'_min' if options else ''}"
           f"_n{s.samples}_seed{s.seed}")
    x, nfe = cached_samples(s.cache, key, lambda: sample_model(
        model, s.samples, solver=s.solver, steps=s.steps, grid=grid, seed=s.seed, grid_options=options))
    label = (f"{name} {s.solver} {s.steps} steps" + (f" grid={grid}" if grid else "")
             + (" final=min" if options else ""))
    print(f"{label}: {x.shape[0]} samples, {nfe} NFE each ({time.time() - t0:.0f} s)", flush=True)
    rows, labels = [], []
    for solver, budget in _grid_rows(name, s):
        imgs, used = sample_model(model, 16, solver=solver, nfe=budget, grid=grid, seed=s.seed + 1)
        rows.append(imgs)
        labels.append(f"{solver}\n{used} NFE")
    if rows:
        path = s.grid_out / f"mnist_{name}_grid.png"
        save_grid(rows, labels, path)
        print(f"  grid: {path}", flush=True)
    return label, x, nfe
