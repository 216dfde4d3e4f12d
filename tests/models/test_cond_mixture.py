"""The shipped class-conditional mixture denoiser: guided samples land on their class's components; the null label
samples every class."""
from __future__ import annotations

import torch

from diffsolve import Sampler
from diffsolve.field import ClassifierFreeGuidance, Conditioned, VectorField
from diffsolve.models.cond_mixture import CLASSES, draw_labels, load_cond_mixture, mixture_means, null_labels


def test_guided_samples_fall_on_their_class():
    torch.set_num_threads(1)
    model = load_cond_mixture()
    labels = draw_labels(256, torch.Generator().manual_seed(5))
    field = Conditioned(ClassifierFreeGuidance(VectorField(model), 2.0, null_labels()), labels)
    x = Sampler(field, "dpmpp_2m", progress=False).run(steps=16, seed=list(range(256))).samples
    nearest = torch.cdist(x, mixture_means()).argmin(1)
    assert (nearest % CLASSES == labels["class_labels"]).float().mean() > 0.97
    free = Sampler(model, "dpmpp_2m", progress=False).run(steps=16, seed=list(range(256))).samples
    counts = torch.bincount(torch.cdist(free, mixture_means()).argmin(1) % CLASSES, minlength=CLASSES)
    assert counts.min() > 256 / CLASSES / 2          # unconditional: every class, roughly evenly
