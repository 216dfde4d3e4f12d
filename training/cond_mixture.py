"""Training of the class-conditional 2-D mixture denoiser of `diffsolve.models.cond_mixture` (EDM loss).

Each iteration draws class labels uniformly, points of those classes, and a noise level from EDM's log-normal
(P_mean -1.2, P_std 1.2, spread to the schedule's sigma_max by a second log-uniform half of the batch); 10% of the
labels are replaced by the null label (classifier-free guidance's dropout). Loss: EDM's weighted denoising error.
Adam, cosine decay. Seeded; about a minute at one thread:

    python -m diffsolve.training.cond_mixture [out.safetensors]
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from diffsolve.training.checkpoints import save_model
from diffsolve.models.cond_mixture import CLASSES, SIGMA_DATA, WEIGHTS_FILE, CondMixtureMLP, draw_mixture

CONFIG = {"iters": 8000, "batch_size": 512, "lr": 2e-3, "width": 128, "depth": 3, "seed": 0, "dropout": 0.1}


def _sigmas(n: int, gen: torch.Generator) -> torch.Tensor:
    """Half log-normal (EDM's P_mean, P_std), half log-uniform over [0.002, 80] (the sampler's whole range)."""
    lognormal = (torch.randn(n - n // 2, generator=gen) * 1.2 - 1.2).exp()
    uniform = (torch.rand(n // 2, generator=gen) * (math.log(80) - math.log(0.002)) + math.log(0.002)).exp()
    return torch.cat([lognormal, uniform])


def train(config: dict | None = None) -> tuple[CondMixtureMLP, dict]:
    """Train the denoiser.

    Args:
        config: overrides of CONFIG.

    Returns:
        The model (eval mode) and the record (config and training seconds).
    """
    cfg = {**CONFIG, **(config or {})}
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    model = CondMixtureMLP(cfg["width"], cfg["depth"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["iters"])
    start = time.perf_counter()
    for _ in range(cfg["iters"]):
        b = cfg["batch_size"]
        labels = torch.randint(0, CLASSES, (b,), generator=gen)
        x0 = draw_mixture(labels, gen)
        drop = torch.rand(b, generator=gen) < cfg["dropout"]
        sigma = _sigmas(b, gen)
        x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen)
        weight = (sigma ** 2 + SIGMA_DATA ** 2) / (sigma * SIGMA_DATA) ** 2
        out = model(x, sigma, torch.where(drop, torch.full_like(labels, CLASSES), labels))
        loss = (weight[:, None] * (out - x0) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    record = {**cfg, "train_seconds": round(time.perf_counter() - start, 1), "final_loss": float(loss.detach())}
    return model.eval().requires_grad_(False), record


def main(argv: list[str] | None = None) -> int:
    """Train with CONFIG at one thread and write the weights (default: the shipped file).

    Args:
        argv: [out path] (optional).

    Returns:
        0.
    """
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else WEIGHTS_FILE
    torch.set_num_threads(1)
    model, record = train()
    save_model(model, out, record)
    print(f"wrote {out}: {record}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
