"""Sample quality of MNIST models: Frechet distance (FD) in classifier-feature space and mean classifier confidence.

`python -m diffsolve.models.evaluate` samples N images from the built-in UNet and from the shared MNIST DDPM with
the same solver and step count (Heun, 50 steps = 99 model evaluations by default), maps them to the classifier's
[-1, 1] input range, and compares them with the held-out real images (1,000). It also prints the same numbers for
the real training images (a floor: what a perfect sampler of the training set would get) and writes sample grids.
`--models consistency --solver consistency --steps 1` scores the built-in consistency model the same way.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path
from typing import Any

import torch

from diffsolve.field import model_spec_of
from diffsolve.noise import NoiseSource
from diffsolve.sampler import Sampler
from diffsolve.models.builtin import WEIGHTS, load_feature_stats, load_mnist_classifier, load_mnist_consistency, load_mnist_unet
from diffsolve.models.classifier import MnistClassifier, feature_stats, featurize, frechet_distance
from diffsolve.models.data import load_mnist

SHARED_DDPM = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "mnist-ddpm-eps.safetensors"


def to_unit_range(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Map samples from a model's data range to the classifier's [-1, 1] and clip."""
    lo, hi = data_range
    return ((x.float() - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)


def sample_model(model: Any, n: int, *, solver: str = "heun", steps: int | None = None, nfe: int | None = None,
                 grid: str | None = None, seed: int = 0, batch_size: int = 250,
                 grid_options: dict | None = None) -> tuple[torch.Tensor, int]:
    """n samples (in [-1, 1]) drawn in batches from fixed noise, and the model evaluations per sample."""
    sampler = Sampler(model, solver, grid, grid_options=grid_options, progress=False)
    noise = torch.randn((n, *sampler.field.sample_shape), generator=torch.Generator().manual_seed(seed))
    spec = model_spec_of(model)
    out, used = [], 0
    plan = sampler.plan(steps, nfe)
    # Stochastic solvers (consistency sampling's re-noising) draw their step noise from the same seed, per sample:
    # the scores are repeatable and do not depend on the batch size.
    steps_noise = None if sampler.solver.deterministic else NoiseSource.for_run(noise.shape, seed=seed)
    with torch.no_grad():
        for i in range(0, n, batch_size):
            part = range(i, min(i + batch_size, n))
            res = sampler.solve(plan, noise[i:i + batch_size],
                                step_noise=steps_noise.subset(part) if steps_noise is not None else None)
            out.append(to_unit_range(res.samples, spec.data_range))
            used = res.nfe
    return torch.cat(out), used


def score(classifier: MnistClassifier, images: torch.Tensor, ref: dict[str, torch.Tensor],
          ref_split: str = "heldout") -> dict[str, float]:
    """FD to the real reference split and mean max-softmax confidence of images in [-1, 1]."""
    f, p = featurize(classifier, images)
    mu, cov = feature_stats(f)
    return {"fd": frechet_distance(mu, cov, ref[f"{ref_split}_mu"], ref[f"{ref_split}_cov"]),
            "confidence": float(p.max(1).values.mean())}


def fd_metric(data_range: tuple[float, float] = (-1.0, 1.0), split: str = "heldout"):
    """metric(samples) -> FD of the built-in classifier's features to the real `split` images (the tuners' metric)."""
    classifier, ref = load_mnist_classifier(), load_feature_stats()

    def metric(samples: torch.Tensor) -> float:
        return score(classifier, to_unit_range(samples, data_range), ref, split)["fd"]
    return metric


def save_grid(rows: list[torch.Tensor], labels: list[str], path: Path) -> None:
    """A PNG with one row of digits per entry of `rows` (images in [-1, 1])."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ncol = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncol * 0.6 + 1.2, len(rows) * 0.75 + 0.3))
    for ax, imgs, label in zip(axes if len(rows) > 1 else [axes], rows, labels):
        strip = torch.cat([im[0] for im in imgs.clamp(-1, 1)], dim=1)
        ax.imshow(strip.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cached_samples(cache: Path | None, key: str, make) -> tuple[torch.Tensor, int]:
    """Samples from `cache/key.safetensors` when present, else make() and store them there."""
    from safetensors.torch import load_file, save_file
    path = cache / f"{key}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        d = load_file(str(path))
        return d["samples"], int(d["nfe"])
    x, nfe = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"samples": x.contiguous(), "nfe": torch.tensor(nfe)}, str(path))
    return x, nfe


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in names if v not in allowed]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of {', '.join(allowed)}")
        return names
    return parse


def _solver_names(text: str) -> list[str]:
    from diffsolve.solvers import available_solvers
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
    from diffsolve.cli.argtypes import positive_int
    return [positive_int(v) for v in text.replace(" ", "").split(",") if v]


def main(argv: list[str] | None = None) -> None:
    from diffsolve.cli.argtypes import SEED_LIMIT, int_at_least, positive_int, seed_below
    from diffsolve.errors import DiffsolveError
    from diffsolve.grids import GRIDS

    ap = argparse.ArgumentParser(prog="python -m diffsolve.models.evaluate", description=__doc__.splitlines()[0])
    # The Frechet distance needs a covariance: at least 2 samples.
    ap.add_argument("--n", type=int_at_least(2), default=1000, help="samples per model (>= 2)")
    ap.add_argument("--solver", type=_solver_name, default="heun")
    ap.add_argument("--steps", type=positive_int, default=50)
    ap.add_argument("--models", type=_names(("builtin", "ddpm", "consistency")), default="builtin,ddpm",
                    help="comma list of builtin, ddpm, consistency (the last with --solver consistency)")
    ap.add_argument("--ddpm-grid", choices=sorted(GRIDS), default=None, help="grid for the DDPM (default: its schedule's default)")
    ap.add_argument("--grid", choices=sorted(GRIDS), default=None,
                    help="grid for the built-in UNet (default: its schedule's default, karras)")
    ap.add_argument("--final", choices=("zero", "min"), default="zero",
                    help="whether the grid ends at zero noise or at the schedule's smallest level (default zero)")
    ap.add_argument("--grid-out", type=Path, default=Path("diffsolve-eval"), help="folder for sample grids")
    ap.add_argument("--grid-nfe", type=_budgets, default="5,10,50",
                    help="NFE budgets of the grid rows (at most this many); empty for no grid")
    ap.add_argument("--grid-solvers", type=_solver_names, default="heun,dpmpp_2m", help="solvers of the grid rows")
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep/reuse drawn samples (safetensors)")
    ap.add_argument("--sample-only", action="store_true", help="draw (and cache) samples, do not score")
    ap.add_argument("--unet", type=Path, default=None, help="UNet weights to score (default: the shipped ones)")
    ap.add_argument("--consistency", type=Path, default=None,
                    help="consistency-model weights to score (default: the shipped ones)")
    ap.add_argument("--threads", type=positive_int, default=1)
    # seed and seed + 1 are used (the grids' noise)
    ap.add_argument("--seed", type=seed_below(SEED_LIMIT >> 1), default=0, help="seed in [0, 2**62)")
    args = ap.parse_args(argv)
    for opt in ("unet", "consistency"):
        given = getattr(args, opt)
        if given is not None and not given.is_file():
            ap.error(f"argument --{opt}: {str(given)!r} is not a file")
    try:
        _evaluate(args, ap)
    except DiffsolveError as e:
        # One line, argparse style (exit status 2), never a traceback.
        ap.exit(2, f"{ap.prog}: error: {e}\n")


def _evaluate(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    torch.set_num_threads(args.threads)
    drawn = []
    for name in args.models:
        if name == "builtin":
            weights = WEIGHTS / "mnist_unet.safetensors" if args.unet is None else args.unet
            model, grid = load_mnist_unet(weights), args.grid
        elif name == "consistency":
            weights = WEIGHTS / "mnist_consistency.safetensors" if args.consistency is None else args.consistency
            model, grid = load_mnist_consistency(weights), None
        else:
            from diffsolve.pretrained_adapters import mnist_ddpm
            weights = SHARED_DDPM
            if not weights.is_file():
                ap.error(f"--models ddpm: {weights} is missing (the shared model folder beside the repository)")
            model, grid = mnist_ddpm.load_mnist_ddpm(weights), args.ddpm_grid
        t0 = time.time()
        digest = hashlib.sha1(Path(weights).read_bytes()).hexdigest()[:10]   # cached samples follow the weights
        options = {"final": "min"} if args.final == "min" and name != "consistency" else None
        key = (f"{name}-{digest}_{args.solver}_{args.steps}_{grid or 'default'}{'_min' if options else ''}"
               f"_n{args.n}_seed{args.seed}")
        x, nfe = _cached_samples(args.cache, key, lambda: sample_model(
            model, args.n, solver=args.solver, steps=args.steps, grid=grid, seed=args.seed, grid_options=options))
        label = (f"{name} {args.solver} {args.steps} steps" + (f" grid={grid}" if grid else "")
                 + (" final=min" if options else ""))
        print(f"{label}: {x.shape[0]} samples, {nfe} NFE each ({time.time() - t0:.0f} s)", flush=True)
        drawn.append((label, x, nfe))
        rows, labels = [], []
        # A consistency model's rows: its own sampler at the budgets' step counts (one call per step).
        for solver in (["consistency"] if name == "consistency" else args.grid_solvers):
            for budget in args.grid_nfe:
                imgs, used = sample_model(model, 16, solver=solver, nfe=budget, grid=grid, seed=args.seed + 1)
                rows.append(imgs)
                labels.append(f"{solver}\n{used} NFE")
        if rows:
            path = args.grid_out / f"mnist_{name}_grid.png"
            save_grid(rows, labels, path)
            print(f"  grid: {path}", flush=True)
    if args.sample_only:
        return
    clf, ref = load_mnist_classifier(), load_feature_stats()
    print(f"{'images':<34} {'NFE':>4} {'FD':>9} {'confidence':>10}  (vs held-out real, 1000 images)")
    for split in ("train", "heldout"):
        x = load_mnist(split)[0]
        x = x[::max(1, x.shape[0] // args.n)][:args.n]     # the splits are sorted by class: take every k-th
        s = score(clf, x, ref)
        print(f"{'real ' + split + f' ({x.shape[0]})':<34} {'-':>4} {s['fd']:9.3f} {s['confidence']:10.4f}")
    for label, x, nfe in drawn:
        s = score(clf, x, ref)
        print(f"{label:<34} {nfe:>4} {s['fd']:9.3f} {s['confidence']:10.4f}", flush=True)


if __name__ == "__main__":
    main()
