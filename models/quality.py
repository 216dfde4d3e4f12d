"""Sample quality of MNIST models: Frechet distance (FD) in classifier-feature space, mean classifier confidence,
and sample grids.

`sample_model` draws images from fixed noise (mapped to the classifier's [-1, 1] input range), `score` compares
them with the real images' feature statistics, `fd_metric` is that FD as the tuners' metric, and `save_grid` draws
rows of digits. `diffsolve evaluate` runs them on the built-in models and the shared MNIST DDPM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from diffsolve.field import model_spec_of
from diffsolve.models.builtin import load_feature_stats, load_mnist_classifier
from diffsolve.models.classifier import MnistClassifier, feature_stats, featurize, frechet_distance
from diffsolve.noise import NoiseSource
from diffsolve.sampler import Sampler


def to_unit_range(x: torch.Tensor, data_range: tuple[float, float]) -> torch.Tensor:
    """Map samples from a model's data range to the classifier's [-1, 1] and clip.

    Args:
        x: the samples.
        data_range: (low, high) of the model's data.

    Returns:
        float32 samples in [-1, 1].
    """
    lo, hi = data_range
    return ((x.float() - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)


def sample_model(model: Any, n: int, *, solver: str = "heun", steps: int | None = None, nfe: int | None = None,
                 grid: str | None = None, seed: int = 0, batch_size: int = 250,
                 grid_options: dict | None = None) -> tuple[torch.Tensor, int]:
    """n samples (in [-1, 1]) drawn in batches from fixed noise, and the model evaluations per sample.

    Stochastic solvers draw their step noise from the same seed, per sample: the scores are repeatable and do not
    depend on the batch size.

    Args:
        model: a model that declares its `diffsolve_spec` (its data range maps the samples to [-1, 1]).
        n: the number of samples.
        solver: the solver's registry name (default "heun").
        steps: the number of steps (or give `nfe`).
        nfe: the evaluation budget; the most steps that fit are taken.
        grid: a grid name; None: the solver's or the schedule's default.
        seed: seeds the noise and the step noise (default 0).
        batch_size: samples per solve (default 250).
        grid_options: the grid's keywords.

    Returns:
        The samples (n, ...) in [-1, 1] and the model evaluations per sample.

    Raises:
        InvalidArgument: the Sampler refuses the solver, grid or step count.
    """
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
    """FD to the real reference split and mean max-softmax confidence of images in [-1, 1].

    Args:
        classifier: the MnistClassifier.
        images: the images, (N, 1, 28, 28) in [-1, 1].
        ref: the real feature statistics (`load_feature_stats()`).
        ref_split: "heldout" (default) or "train", the split whose statistics are compared.

    Returns:
        {"fd": ..., "confidence": ...}.
    """
    f, p = featurize(classifier, images)
    mu, cov = feature_stats(f)
    return {"fd": frechet_distance(mu, cov, ref[f"{ref_split}_mu"], ref[f"{ref_split}_cov"]),
            "confidence": float(p.max(1).values.mean())}


def fd_metric(data_range: tuple[float, float] = (-1.0, 1.0), split: str = "heldout"):
    """metric(samples) -> FD of the built-in classifier's features to the real `split` images (the tuners' metric).

    Args:
        data_range: the samples' data range (default (-1, 1)).
        split: the reference split (default "heldout").

    Returns:
        (Callable): the metric, a function of a batch of samples returning a float.

    Raises:
        FileNotFoundError: the shipped classifier or feature statistics are missing.
    """
    classifier, ref = load_mnist_classifier(), load_feature_stats()

    def metric(samples: torch.Tensor) -> float:
        return score(classifier, to_unit_range(samples, data_range), ref, split)["fd"]
    return metric


def save_grid(rows: list[torch.Tensor], labels: list[str], path: Path) -> None:
    """A PNG with one row of digits per entry of `rows` (images in [-1, 1]).

    Args:
        rows: image batches (K, 1, 28, 28), one per row, of equal K.
        labels: one label per row, written to its left.
        path: the PNG to write (its folder is created).
    """
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


def cached_samples(cache: Path | None, key: str, make: Callable[[], tuple[torch.Tensor, int]]
                   ) -> tuple[torch.Tensor, int]:
    """Samples from `cache/key.safetensors` when present, else make() and store them there.

    Args:
        cache: the cache folder; None: always make().
        key: the file's name, without its suffix.
        make: returns (samples, nfe).

    Returns:
        The samples and their model evaluations per sample.
    """
    path = cache / f"{key}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        d = load_file(str(path))
        return d["samples"], int(d["nfe"])
    x, nfe = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"samples": x.contiguous(), "nfe": torch.tensor(nfe)}, str(path))
    return x, nfe
