"""EDM training of the built-in MNIST UNet (Karras et al. 2022): sigma ~ logN(P_mean, P_std), loss weight
(sigma^2 + sd^2) / (sigma sd)^2, Adam with a linear warm-up and an EMA of the weights (the EMA is what ships)."""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch

from diffsolve.models.data import load_mnist, random_shift
from diffsolve.models.unet import SIGMA_DATA, UNet
from diffsolve.training.configs import TrainResult, UNetConfig


def edm_loss(model: UNet, x0: torch.Tensor, g: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor:
    """EDM denoising loss with its lambda(sigma) weighting (unit loss at initialization).

    Args:
        model: the UNet being trained.
        x0: clean images, (B, 1, 28, 28).
        g: draws sigma and the noise.
        p_mean: the mean of log sigma.
        p_std: the standard deviation of log sigma.

    Returns:
        The mean weighted squared error, a scalar tensor with gradients.
    """
    n = x0.shape[0]
    sigma = torch.exp(p_mean + p_std * torch.randn(n, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.reshape(-1, 1, 1, 1)
    weight = (s * s + SIGMA_DATA ** 2) / (s * SIGMA_DATA) ** 2
    d = model(x0 + s * noise, sigma)
    return (weight * (d - x0) ** 2).mean()


def train_unet(cfg: UNetConfig | None = None, *, data: torch.Tensor | None = None,
               log: Callable[[str], None] = print, checkpoint: Callable[[UNet, int], None] | None = None,
               checkpoint_every: int = 0, init: dict | None = None) -> TrainResult:
    """Train the EDM UNet (from scratch, or continue from the state dict `init`); returns the EMA model and losses.

    Args:
        cfg: the settings; None: UNetConfig().
        data: the training images; None: the MNIST training split.
        log: receives the progress lines (default print).
        checkpoint: called as `checkpoint(ema, iteration)` every `checkpoint_every` iterations.
        checkpoint_every: iterations between checkpoints (0: none).
        init: a state dict to start from; None: fresh weights.

    Returns:
        The TrainResult: the EMA model in eval mode, the loss per iteration and the seconds taken.

    Raises:
        RuntimeError: `init` does not match the architecture (torch's load_state_dict).
        InvalidArgument: `cfg.blocks_per_level` is not an integer >= 1.
    """
    cfg = cfg or UNetConfig()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x = load_mnist("train")[0] if data is None else data
    model = UNet(cfg.channels, cfg.emb_dim, blocks_per_level=cfg.blocks_per_level)
    if init is not None:
        model.load_state_dict(init, strict=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses: list[float] = []
    t0 = time.time()
    log(f"unet: {sum(p.numel() for p in model.parameters())} parameters, {x.shape[0]} images, {cfg}")
    for it in range(cfg.iters):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (it + 1) / max(cfg.warmup, 1))
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=g)
        xb = random_shift(x[idx], cfg.max_shift, g)
        loss = edm_loss(model, xb, g, cfg.p_mean, cfg.p_std)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(cfg.ema_decay, (1 + it) / (10 + it))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        losses.append(float(loss.detach()))
        if cfg.log_every and ((it + 1) % cfg.log_every == 0 or it == 0):
            window = losses[-cfg.log_every:]
            log(f"iter {it + 1:6d}  loss {sum(window) / len(window):.4f}  ({time.time() - t0:.0f} s)")
        if checkpoint is not None and checkpoint_every and (it + 1) % checkpoint_every == 0:
            checkpoint(ema, it + 1)
    return TrainResult(ema.eval(), losses, time.time() - t0)

