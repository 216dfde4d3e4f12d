"""A small class-conditional 2-D model: an EDM-preconditioned MLP denoiser of a mixture of 8 Gaussians on a
circle, grouped into 4 classes (class c owns the components at angles 2 pi c / 8 and 2 pi (c + 4) / 8, on
opposite sides), with a null label for classifier-free guidance (trained with label dropout).

    model = load_cond_mixture()
    field = Conditioned(ClassifierFreeGuidance(VectorField(model), 2.0, {"class_labels": null_labels(1)}),
                        {"class_labels": labels})
    x = Sampler(field, "dpmpp_2m").sample(len(labels), seed=0, steps=8)

How it was trained: `diffsolve.training.cond_mixture` (seeded, a minute at one thread).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from diffsolve.errors import InvalidArgument, check_int
from diffsolve.field import ModelSpec
from diffsolve.models.builtin import load_weights

WEIGHTS_FILE = Path(__file__).resolve().parent / "weights" / "cond_mixture.safetensors"
CLASSES = 4                 # class labels 0..3; CLASSES itself is the null (unconditional) label
COMPONENTS = 8
RADIUS, COMPONENT_STD = 4.0, 0.35
SIGMA_DATA = 2.85           # the data's per-coordinate standard deviation (sqrt(R^2 / 2 + std^2))


def mixture_means() -> torch.Tensor:
    """The 8 component means on the circle of radius RADIUS, float32 [8, 2]; component k belongs to class k % 4."""
    ang = torch.arange(COMPONENTS, dtype=torch.float64) * (2 * math.pi / COMPONENTS)
    return (RADIUS * torch.stack([ang.cos(), ang.sin()], 1)).float()


def draw_mixture(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Data points of the given classes: a component of the class chosen at random, plus Gaussian noise.

    Args:
        labels: class labels in 0..3, int64 [n].
        generator: the torch generator the draws come from.

    Returns:
        Points, float32 [n, 2].
    """
    pick = torch.randint(0, COMPONENTS // CLASSES, labels.shape, generator=generator)
    means = mixture_means()[labels + CLASSES * pick]
    return means + COMPONENT_STD * torch.randn(means.shape, generator=generator)


def draw_labels(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """n class labels drawn uniformly: the `(n, generator) -> conditions` form `diffsolve tune --conditions` takes.

    Args:
        n: the number of samples.
        generator: the torch generator the labels come from.

    Returns:
        `{"class_labels": int64 [n]}`.
    """
    return {"class_labels": torch.randint(0, CLASSES, (check_int("n", n, 1),), generator=generator)}


def null_labels(n: int = 1) -> dict[str, torch.Tensor]:
    """The unconditional keywords: the null label (n rows).

    Args:
        n: the number of rows (default 1: one row serves a whole guided batch).

    Returns:
        `{"class_labels": int64 [n] filled with CLASSES}`.
    """
    return {"class_labels": torch.full((check_int("n", n, 1),), CLASSES, dtype=torch.int64)}


NULL = null_labels        # what `diffsolve tune --uncond diffsolve.models.cond_mixture:NULL` names


class CondMixtureMLP(torch.nn.Module):
    """EDM denoiser D(x, sigma, class) = c_skip x + c_out F(c_in x, log(sigma) / 4, embedding(class)).

    Args:
        width: the hidden width (default 128).
        depth: the hidden layers (default 3).
    """

    def __init__(self, width: int = 128, depth: int = 3):
        super().__init__()
        self.width, self.depth = int(width), int(depth)
        self.embed = torch.nn.Embedding(CLASSES + 1, self.width)
        self.inp = torch.nn.Linear(3, self.width)
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(self.width, self.width) for _ in range(self.depth - 1))
        self.out = torch.nn.Linear(self.width, 2)

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """An EDM denoiser (model time sigma) on (2,)."""
        return ModelSpec(prediction="denoiser", schedule="edm", sample_shape=(2,))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The denoised points.

        Args:
            x: noisy points [n, 2] (EDM frame: data plus sigma times unit noise).
            sigma: the noise level, one per point or a scalar.
            class_labels: int64 [n] in 0..4 (4: unconditional); None: all unconditional.

        Returns:
            The data prediction [n, 2] in x's dtype.
        """
        n = x.shape[0]
        sigma = sigma.to(x.dtype).reshape(-1, 1).expand(n, 1)
        if class_labels is None:
            class_labels = torch.full((n,), CLASSES, dtype=torch.int64, device=x.device)
        total = sigma.pow(2) + SIGMA_DATA ** 2
        c_in, c_skip = total.rsqrt(), SIGMA_DATA ** 2 / total
        c_out = sigma * SIGMA_DATA * total.rsqrt()
        h = self.inp(torch.cat([x * c_in, sigma.log() / 4], 1)) + self.embed(class_labels.reshape(-1).expand(n))
        for layer in self.hidden:
            h = layer(torch.nn.functional.silu(h))
        return c_skip * x + c_out * self.out(torch.nn.functional.silu(h))


def load_cond_mixture(path: str | Path | None = None) -> CondMixtureMLP:
    """The shipped class-conditional mixture denoiser, in eval mode without gradients.

    Args:
        path: the safetensors file; None: the shipped one.

    Returns:
        The CondMixtureMLP.

    Raises:
        InvalidArgument: the file is missing, unreadable or holds another model's weights.
    """
    state, cfg = load_weights(Path(path) if path is not None else WEIGHTS_FILE)
    try:
        model = CondMixtureMLP(int(cfg.get("width", 128)), int(cfg.get("depth", 3)))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgument(f"path={str(path)!r} holds another model's weights ({type(e).__name__})") from None
    return model.eval().requires_grad_(False)
