"""Train the built-in MNIST models on CPU: `python -m diffsolve.models.train --what unet|classifier|stats`.

unet: EDM training (Karras et al. 2022): sigma ~ logN(P_mean, P_std), loss weight (sigma^2 + sd^2) / (sigma sd)^2,
Adam with a linear warm-up and an EMA of the weights (the EMA is what ships), in the four UNET_STAGES. classifier: cross-entropy with random
shifts of up to 2 pixels. stats: mean and covariance of the classifier's features on the real train and held-out
images (the FD reference). Everything is seeded; runs are repeatable on the same machine and thread count.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .classifier import MnistClassifier, featurize, feature_stats
from .data import load_mnist, random_shift
from .unet import SIGMA_DATA, UNet

WEIGHTS = Path(__file__).resolve().parent / "weights"
UNET_FILE = "mnist_unet.safetensors"
CLASSIFIER_FILE = "mnist_classifier.safetensors"
STATS_FILE = "mnist_feature_stats.safetensors"


# The shipped UNet: four stages of 1,500 iterations, each continuing from the previous stage's EMA weights with a
# fresh Adam and half the learning rate (a step decay); (lr, seed) per stage.
UNET_STAGES = ((2e-3, 0), (1e-3, 1), (5e-4, 2), (2.5e-4, 3))


@dataclass
class UNetConfig:
    channels: tuple = (16, 32, 64)
    emb_dim: int = 64
    iters: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    max_shift: int = 0
    seed: int = 0
    log_every: int = 100


@dataclass
class ClassifierConfig:
    width: int = 32
    iters: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = 2
    seed: int = 0
    log_every: int = 100


@dataclass
class TrainResult:
    model: torch.nn.Module
    losses: list = field(default_factory=list)
    seconds: float = 0.0


def edm_loss(model: UNet, x0: torch.Tensor, g: torch.Generator, p_mean: float, p_std: float) -> torch.Tensor:
    """EDM denoising loss with its lambda(sigma) weighting (unit loss at initialization)."""
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
    """Train the EDM UNet (from scratch, or continue from the state dict `init`); returns the EMA model and losses."""
    cfg = cfg or UNetConfig()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x = load_mnist("train")[0] if data is None else data
    model = UNet(cfg.channels, cfg.emb_dim)
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


def train_classifier(cfg: ClassifierConfig | None = None, *, log: Callable[[str], None] = print) -> TrainResult:
    """Train the feature classifier on the training split (Adam, cross-entropy, random shifts)."""
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
    """FD reference statistics of the real images: {train,heldout}_{mu,cov} in float64."""
    out = {}
    for split in ("train", "heldout"):
        f, _ = featurize(classifier, load_mnist(split)[0])
        out[f"{split}_mu"], out[f"{split}_cov"] = feature_stats(f)
    return out


def save_model(model: torch.nn.Module, path: Path, meta: dict) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(meta)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m diffsolve.models.train", description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=("unet", "classifier", "stats"), required=True)
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the shipped config)")
    ap.add_argument("--out", type=Path, default=WEIGHTS, help="folder for the safetensors files")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=300)
    ap.add_argument("--channels", default=None, help="UNet widths per level, e.g. 16,32,64")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from these UNet weights (one stage, with --lr); default: all UNET_STAGES from scratch")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "unet":
        path = args.out / UNET_FILE
        if args.init is not None or args.lr is not None:
            stages = [(args.lr if args.lr is not None else UNetConfig.lr, args.seed)]
        else:
            stages = list(UNET_STAGES)
        state, meta = None, {}
        if args.init is not None:
            from .builtin import _load
            state, meta = _load(args.init)
        for k, (lr, seed) in enumerate(stages):
            cfg = UNetConfig(lr=lr, seed=seed)
            if args.iters is not None:
                cfg.iters = args.iters
            if args.channels:
                cfg.channels = tuple(int(c) for c in args.channels.split(","))
            if meta:
                cfg.channels, cfg.emb_dim = tuple(meta["channels"]), int(meta["emb_dim"])
            prior = {"continued_from": meta} if meta else {}
            print(f"stage {k + 1}/{len(stages)}: lr {lr:g}, seed {seed}", flush=True)

            def ckpt(m: UNet, it: int, cfg=cfg, prior=prior) -> None:
                save_model(m, path, {**asdict(cfg), "trained_iters": it, **prior})
                print(f"saved EMA weights after {it} iterations to {path}", flush=True)

            res = train_unet(cfg, log=lambda s: print(s, flush=True), checkpoint=ckpt,
                             checkpoint_every=args.checkpoint_every, init=state)
            meta = {**asdict(cfg), "trained_iters": cfg.iters, "train_seconds": round(res.seconds, 1), **prior}
            save_model(res.model, path, meta)
            state = {k2: v.clone() for k2, v in res.model.state_dict().items()}
            print(f"stage {k + 1} done in {res.seconds:.0f} s; saved {path}", flush=True)
    elif args.what == "classifier":
        cfg = ClassifierConfig(seed=args.seed)
        if args.iters is not None:
            cfg.iters = args.iters
        res = train_classifier(cfg, log=lambda s: print(s, flush=True))
        path = args.out / CLASSIFIER_FILE
        save_model(res.model, path, {**asdict(cfg), "train_seconds": res.seconds})
        x, y = load_mnist("heldout")
        _, p = featurize(res.model, x)
        print(f"done in {res.seconds:.0f} s; held-out accuracy {(p.argmax(1) == y).double().mean():.4f}; saved {path}")
    else:
        from .builtin import load_mnist_classifier
        clf = load_mnist_classifier(args.out / CLASSIFIER_FILE)
        from safetensors.torch import save_file
        stats = real_feature_stats(clf)
        save_file(stats, str(args.out / STATS_FILE))
        print(f"saved {sorted(stats)} to {args.out / STATS_FILE}")


if __name__ == "__main__":
    main()
