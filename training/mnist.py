"""Train the built-in MNIST models on CPU: `python -m diffsolve.training.mnist --what unet|classifier|stats|consistency`.

unet: EDM training (Karras et al. 2022): sigma ~ logN(P_mean, P_std), loss weight (sigma^2 + sd^2) / (sigma sd)^2,
Adam with a linear warm-up and an EMA of the weights (the EMA is what ships), in the four UNET_STAGES.
classifier: cross-entropy with random shifts of up to 2 pixels. stats: mean and covariance of the classifier's
features on the real train and held-out images (the FD reference). consistency: consistency distillation of the
shipped UNet (Song et al. 2023, Alg. 2), the teacher's ODE step taken by diffsolve's own Heun solver, then an
adversarial stage: regression onto the endpoints of the teacher's dpmpp_3m trajectories plus a hinge GAN term
against the real training digits (CTM, Kim et al. 2023). Everything is seeded; runs are repeatable on the same
machine and thread count.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from diffsolve.models.classifier import MnistClassifier, featurize, feature_stats
from diffsolve.models.data import load_mnist, random_shift
from diffsolve.models.consistency import ConsistencyUNet
from diffsolve.models.unet import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, UNet

WEIGHTS = Path(__file__).resolve().parent / "weights"
UNET_FILE = "mnist_unet.safetensors"
CLASSIFIER_FILE = "mnist_classifier.safetensors"
STATS_FILE = "mnist_feature_stats.safetensors"
CONSISTENCY_FILE = "mnist_consistency.safetensors"
DEEP_UNET_FILE = "mnist_unet_deep.safetensors"


# The shipped UNet: four stages of 1,500 iterations, each continuing from the previous stage's EMA weights with a
# fresh Adam and half the learning rate (a step decay); (lr, seed) per stage.
UNET_STAGES = ((2e-3, 0), (1e-3, 1), (5e-4, 2), (2.5e-4, 3))
# The deep UNet (Skip-Tuning's test bed: four levels of two blocks, eight skips): the same recipe in three stages of
# 1,250 iterations (42 min of one CPU thread on the loaded 2-core machine); it ships in float16 (half the bytes).
DEEP_UNET = {"channels": (16, 32, 64, 64), "emb_dim": 64, "blocks_per_level": 2, "iters": 1250}
DEEP_UNET_STAGES = ((2e-3, 20), (1e-3, 21), (5e-4, 22))


@dataclass
class UNetConfig:
    channels: tuple = (16, 32, 64)
    emb_dim: int = 64
    blocks_per_level: int = 1
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


# The shipped consistency model: (lr, seed, iterations) per stage; each stage continues from the previous stage's
# EMA weights with a fresh Adam, target and EMA (a step decay of the learning rate, as UNET_STAGES).
CONSISTENCY_STAGES = ((7e-4, 10, 3300), (2e-4, 11, 1500))


@dataclass
class ConsistencyConfig:
    n_levels: int = 18          # N of the karras discretization (CM's CIFAR-10 setting)
    rho: float = 7.0
    solver: str = "heun"        # the teacher's ODE step, a diffsolve solver
    loss: str = "huber"         # "huber" (pseudo-Huber, Song & Dhariwal 2023) or "l2"
    huber_c: float = 0.0        # 0: 0.00054 sqrt(d) as iCT
    iters: int = 3000
    batch_size: int = 32
    levels_per_batch: int = 8   # the batch is drawn as this many groups of one level each (one teacher step per group)
    lr: float = 7e-4            # 200-iteration trials: 1e-4 far behind 5e-4 and 1e-3
    warmup: int = 50
    target_ema: float = 0.95    # mu of Alg. 2 (theta^-); mu = 0 (iCT's choice for training) diverged in a trial
    ema_decay: float = 0.995    # the EMA that ships: a short horizon, the student still improves fast
    seed: int = 10              # training noise; evaluation seeds (0, 1) and tests' seeds differ from it
    log_every: int = 100


# The shipped model's last stage (after CONSISTENCY_STAGES): regression onto the endpoints of teacher ODE trajectories
# plus a hinge GAN term against the real training digits (CTM, Kim et al. 2023, adds the same term to distillation).
@dataclass
class AdversarialConfig:
    trajectories: int = 2048    # teacher ODE solutions, each on its own jittered karras grid of `levels` steps
    levels: int = 24
    solver: str = "dpmpp_3m"    # the teacher's solver, a diffsolve solver (NFE 24 per trajectory)
    chunk: int = 256            # trajectories per teacher batch (one jittered grid each)
    iters: int = 3000
    batch_size: int = 32
    lr: float = 2e-4
    d_lr: float = 2e-4          # 1e-3 changed little in a 1,000-iteration trial
    # Trials from the CD weights (FD at 1/2/4 steps, 500 samples; RMSE of the 1-step sample to the teacher's exact
    # one, 0.217 before): weight 5 for 2,000 iterations 212/162/165; 20 for 3,000 147/97/103, RMSE 0.266, the
    # regression loss 4.3 -> 5.6; 40 for 3,000 124/94/100 but RMSE 0.302, regression 7.6 (drifting off the teacher).
    adv_weight: float = 20.0
    p_sigma_max: float = 0.5    # share of the batch at sigma_max, the one-step input
    huber_c: float = 0.0        # 0: 0.00054 sqrt(d) as iCT
    ema_decay: float = 0.998
    d_width: int = 32
    seed: int = 12              # training noise and teacher trajectories; differs from 10, 11 and evaluation seeds
    log_every: int = 100


@dataclass
class TrainResult:
    model: torch.nn.Module
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


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


def consistency_levels(cfg: ConsistencyConfig) -> torch.Tensor:
    """sigma_1 = eps < ... < sigma_N = T: the karras discretization of Song et al. 2023 (float64, increasing)."""
    from diffsolve.grids import karras_sigmas
    return karras_sigmas(SIGMA_MIN, SIGMA_MAX, cfg.n_levels, cfg.rho).flip(0)


def consistency_loss(a: torch.Tensor, b: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """Mean over samples of the pseudo-Huber distance sqrt(|a - b|^2 + c^2) - c, or of the mean squared error."""
    d = (a - b).flatten(1)
    if kind == "l2":
        return (d * d).mean()
    return (torch.sqrt((d * d).sum(1) + c * c) - c).mean()


def train_consistency(cfg: ConsistencyConfig | None = None, *, teacher: UNet | None = None,
                      data: torch.Tensor | None = None, log: Callable[[str], None] = print,
                      checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
                      checkpoint_every: int = 0, init: dict | None = None) -> TrainResult:
    """Consistency distillation (Song et al. 2023, Alg. 2) of the EDM UNet; returns the EMA student and losses.

    The student starts from the teacher's weights, or from the consistency-model state dict `init` (a later stage).
    """
    from diffsolve.field import VectorField
    from diffsolve.loop import Evaluator
    from diffsolve.solvers import get_solver
    from diffsolve.models.builtin import load_mnist_unet

    cfg = cfg or ConsistencyConfig()
    if cfg.loss not in ("huber", "l2"):
        raise ValueError(f"loss={cfg.loss!r}: 'huber' or 'l2'")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x = load_mnist("train")[0] if data is None else data
    teacher = (teacher or load_mnist_unet()).float().eval().requires_grad_(False)
    student = ConsistencyUNet(teacher.channels, teacher.time_mlp[0].out_features, teacher.in_channels)
    student.net.load_state_dict(teacher.state_dict(), strict=True)
    if init is not None:
        student.load_state_dict(init, strict=True)
    target = copy.deepcopy(student).requires_grad_(False)
    ema = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    # The teacher's ODE step from sigma_{n+1} to sigma_n is one step of a diffsolve solver; its coefficients are
    # host floats per interval, so they are planned once per level and the batch is grouped by level.
    field = VectorField(teacher)
    solver = get_solver(cfg.solver)
    sig = consistency_levels(cfg)
    pts = [field.at(float(v)) for v in sig]
    coeffs = [solver.coefficients(field, pts[n + 1], pts[n]) for n in range(cfg.n_levels - 1)]
    ev = Evaluator(field, {}, check_finite=False)
    dim = x[0].numel()
    c = cfg.huber_c or 0.00054 * math.sqrt(dim)
    k = max(1, min(cfg.levels_per_batch, cfg.batch_size))
    sizes = [cfg.batch_size // k + (1 if i < cfg.batch_size % k else 0) for i in range(k)]
    losses: list[float] = []
    t0 = time.time()
    log(f"consistency: {sum(p.numel() for p in student.parameters())} parameters, {x.shape[0]} images, {cfg}")
    for it in range(cfg.iters):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (it + 1) / max(cfg.warmup, 1))
        idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=g)
        levels = torch.randint(0, cfg.n_levels - 1, (k,), generator=g)        # n: student at n+1, target at n
        x0 = x[idx]
        z = torch.randn(x0.shape, generator=g)
        n_of = torch.cat([torch.full((m,), int(n)) for m, n in zip(sizes, levels)])
        s_hi = sig[n_of + 1].float().reshape(-1, 1, 1, 1)
        x_hi = x0 + s_hi * z
        with torch.no_grad():
            x_lo, start = torch.empty_like(x_hi), 0
            for m, n in zip(sizes, levels.tolist()):
                part = slice(start, start + m)
                x_lo[part], _, _ = solver.step(ev, x_hi[part], pts[n + 1], pts[n], (), coeffs[n])
                start += m
            y = target(x_lo, sig[n_of].float())
        loss = consistency_loss(student(x_hi, sig[n_of + 1].float()), y, cfg.loss, c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + it) / (10 + it))
            for pt, pe, ps in zip(target.parameters(), ema.parameters(), student.parameters()):
                pt.lerp_(ps, 1.0 - cfg.target_ema)
                pe.lerp_(ps, 1.0 - decay)
        losses.append(float(loss.detach()))
        if cfg.log_every and ((it + 1) % cfg.log_every == 0 or it == 0):
            window = losses[-cfg.log_every:]
            log(f"iter {it + 1:6d}  loss {sum(window) / len(window):.5f}  ({time.time() - t0:.0f} s)")
        if checkpoint is not None and checkpoint_every and (it + 1) % checkpoint_every == 0:
            checkpoint(ema, it + 1)
    return TrainResult(ema.eval(), losses, time.time() - t0, {"student": student.eval(), "target": target.eval()})


def teacher_trajectories(teacher: torch.nn.Module, n: int, levels: int, solver: str, seed: int,
                         chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(states (levels + 1, n, *shape), sigmas (levels + 1, n)): n probability-flow ODE solutions by a diffsolve
    solver.

    Each chunk of trajectories has its own karras grid (rho 7) shifted by a random fraction of a step, so the student
    sees every noise level; the first level is sigma_max and the last state the ODE's endpoint (sigma 0).
    """
    from diffsolve.errors import check_int
    from diffsolve.grids import karras_sigmas
    from diffsolve.noise import draw_noise
    from diffsolve.sampler import Sampler

    check_int("levels", levels, 2)
    check_int("n", n, 1)
    g = torch.Generator().manual_seed(seed)
    base = Sampler(teacher, progress=False)
    shape = base.field.sample_shape
    sch = base.field.schedule
    states, sigmas = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        ramp = (torch.arange(levels, dtype=torch.float64) + torch.rand((), generator=g, dtype=torch.float64) - 0.5)
        ramp = (ramp / (levels - 1)).clamp(0.0, 1.0)
        ramp[0], ramp[-1] = 0.0, 1.0
        sig = torch.cat([karras_sigmas(SIGMA_MIN, SIGMA_MAX, levels, ramp=ramp), torch.zeros(1, dtype=torch.float64)])
        t = torch.cat([sch.t_from_edm_sigma(sig[:-1]), torch.zeros(1, dtype=torch.float64)])
        sampler = Sampler(teacher, solver, grid=t, progress=False, check_finite=False)
        noise = draw_noise((m, *shape), seed=[seed * 1_000_003 + start + i for i in range(m)])
        with torch.no_grad():
            res = sampler.solve(sampler.plan(), noise, return_trajectory=True)
        states.append(res.trajectory.float())
        sigmas.append(sig.float()[:, None].expand(-1, m))
    return torch.cat(states, 1), torch.cat(sigmas, 1)


def train_consistency_adversarial(cfg: AdversarialConfig | None = None, *, init: dict, teacher: UNet | None = None,
                                  data: torch.Tensor | None = None, log: Callable[[str], None] = print,
                                  trajectories: tuple[torch.Tensor, torch.Tensor] | None = None,
                                  checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
                                  checkpoint_every: int = 0) -> TrainResult:
    """Fine-tune the consistency model `init` (a state dict): f(x_sigma, sigma) regressed onto the endpoint of the
    teacher trajectory through x_sigma (the consistency function's definition, Song et al. 2023) plus adv_weight
    times a hinge GAN loss against the real training digits (CTM, Kim et al. 2023); returns the EMA student.

    The teacher's trajectories (`teacher_trajectories`, timed with the training) are made here unless given.
    """
    from diffsolve.models.builtin import load_mnist_unet
    from diffsolve.training.discriminator import Discriminator

    cfg = cfg or AdversarialConfig()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    x_real = load_mnist("train")[0] if data is None else data
    teacher = (teacher or load_mnist_unet()).float().eval().requires_grad_(False)
    if trajectories is None:
        trajectories = teacher_trajectories(teacher, cfg.trajectories, cfg.levels, cfg.solver, cfg.seed, cfg.chunk)
        log(f"adversarial: {cfg.trajectories} teacher trajectories by {cfg.solver} in {time.time() - t0:.0f} s")
    states, sigmas = trajectories
    n_levels, n_traj = sigmas.shape[0] - 1, sigmas.shape[1]
    student = ConsistencyUNet(teacher.channels, teacher.time_mlp[0].out_features, teacher.in_channels)
    student.load_state_dict(init, strict=True)
    student.train()
    ema = copy.deepcopy(student).requires_grad_(False)
    disc = Discriminator(teacher.in_channels, cfg.d_width)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))
    c = cfg.huber_c or 0.00054 * math.sqrt(states[0, 0].numel())
    losses: list[float] = []
    parts: dict[str, list[float]] = {"regression": [], "generator": [], "discriminator": []}
    log(f"adversarial: {sum(p.numel() for p in student.parameters())} + {sum(p.numel() for p in disc.parameters())} "
        f"parameters, {n_traj} trajectories of {n_levels} levels, {cfg}")
    for it in range(cfg.iters):
        idx = torch.randint(0, n_traj, (cfg.batch_size,), generator=g)
        at_max = torch.rand(cfg.batch_size, generator=g) < cfg.p_sigma_max
        lvl = torch.where(at_max, 0, torch.randint(1, n_levels, (cfg.batch_size,), generator=g))
        x, s, x0 = states[lvl, idx], sigmas[lvl, idx], states[n_levels, idx]
        real = x_real[torch.randint(0, x_real.shape[0], (cfg.batch_size,), generator=g)]
        pred = student(x, s)
        reg = consistency_loss(pred, x0, "huber", c)
        disc.requires_grad_(False)
        gen = -disc(pred).mean()
        disc.requires_grad_(True)
        loss = reg + cfg.adv_weight * gen
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        d_loss = torch.relu(1.0 - disc(real)).mean() + torch.relu(1.0 + disc(pred.detach())).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (1 + it) / (10 + it))
            for pe, ps in zip(ema.parameters(), student.parameters()):
                pe.lerp_(ps, 1.0 - decay)
        losses.append(float(loss.detach()))
        for key, v in (("regression", reg), ("generator", gen), ("discriminator", d_loss)):
            parts[key].append(float(v.detach()))
        if cfg.log_every and ((it + 1) % cfg.log_every == 0 or it == 0):
            w = cfg.log_every
            mean = {k: sum(v[-w:]) / len(v[-w:]) for k, v in parts.items()}
            log(f"iter {it + 1:6d}  regression {mean['regression']:.4f}  generator {mean['generator']:+.4f}  "
                f"discriminator {mean['discriminator']:.4f}  ({time.time() - t0:.0f} s)")
        if checkpoint is not None and checkpoint_every and (it + 1) % checkpoint_every == 0:
            checkpoint(ema, it + 1)
    return TrainResult(ema.eval(), losses, time.time() - t0,
                       {"student": student.eval(), "discriminator": disc.eval(), **parts})


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


def save_model(model: torch.nn.Module, path: Path, meta: dict, dtype: torch.dtype | None = None) -> None:
    """Weights and metadata as safetensors, written to a temporary file and renamed (never a half-written file);
    floating tensors stored in `dtype` when given."""
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous()
             for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"config": json.dumps(meta)})
    os.replace(tmp, path)


def _overrides(cfg, pairs: list[str] | None, option: str, ap: argparse.ArgumentParser):
    for kv in pairs or []:
        key, _, value = kv.partition("=")
        if key not in type(cfg).__dataclass_fields__:
            ap.error(f"{option} {kv!r}: not a {type(cfg).__name__} field")
        setattr(cfg, key, type(getattr(cfg, key))(value))
    return cfg


def _train_consistency_cli(args: argparse.Namespace, ap: argparse.ArgumentParser) -> None:
    """The consistency model's recipe: the CD stages, then the adversarial stage; train_seconds adds up all stages."""
    import hashlib
    from diffsolve.models.builtin import WEIGHTS as _W, _load, load_mnist_unet
    kinds = [k.strip() for k in args.stages.split(",")]
    if kinds not in (["cd"], ["adversarial"], ["cd", "adversarial"]):
        ap.error(f"--stages {args.stages!r}: 'cd', 'adversarial' or 'cd,adversarial'")
    if kinds == ["adversarial"] and args.resume is None:
        ap.error("--stages adversarial fine-tunes a consistency model: give it with --resume")
    path = args.out / CONSISTENCY_FILE
    teacher_path = args.init if args.init is not None else _W / UNET_FILE
    teacher = load_mnist_unet(teacher_path)
    base = {"channels": list(teacher.channels), "emb_dim": teacher.time_mlp[0].out_features,
            "teacher_sha1": hashlib.sha1(Path(teacher_path).read_bytes()).hexdigest()[:10],
            "threads": args.threads}
    state, meta = None, {}
    if args.resume is not None:
        state, meta = _load(args.resume)
    log = lambda s: print(s, flush=True)                                  # noqa: E731
    plan: list[tuple] = []
    if "cd" in kinds:
        if args.resume is not None or args.iters is not None or args.lr is not None:
            plan.append(("cd", args.lr if args.lr is not None else ConsistencyConfig.lr,
                         args.seed or ConsistencyConfig.seed,
                         args.iters if args.iters is not None else ConsistencyConfig.iters))
        else:
            plan += [("cd", *stage) for stage in CONSISTENCY_STAGES]
    if "adversarial" in kinds:
        plan.append(("adversarial",))
    for k, stage in enumerate(plan):
        prior = {"continued_from": meta} if meta else {}
        before = float(meta.get("train_seconds", 0.0)) if meta else 0.0     # earlier stages' wall time
        started = time.time()

        def stage_meta(cfg, it: int, prior=prior, before=before, started=started, kind=stage[0]) -> dict:
            return {**asdict(cfg), **base, "stage": kind, "trained_iters": it, **prior,
                    "train_seconds": round(before + time.time() - started, 1)}

        def ckpt(m: torch.nn.Module, it: int, cfg) -> None:
            # lr and EMA do not depend on cfg.iters: the checkpoint after `it` iterations is the run with iters=it
            save_model(m, path, stage_meta(cfg, it))
            print(f"saved EMA weights after {it} iterations to {path}", flush=True)

        if stage[0] == "cd":
            _, lr, seed, iters = stage
            cfg = _overrides(ConsistencyConfig(lr=lr, seed=seed, iters=iters), args.set, "--set", ap)
            print(f"stage {k + 1}/{len(plan)}: consistency distillation, lr {lr:g}, seed {seed}, {iters} iterations",
                  flush=True)
            res = train_consistency(cfg, teacher=teacher, log=log, checkpoint=lambda m, it, c=cfg: ckpt(m, it, c),
                                    checkpoint_every=args.checkpoint_every, init=state)
        else:
            cfg = AdversarialConfig()
            if kinds == ["adversarial"]:
                cfg.iters = args.iters if args.iters is not None else cfg.iters
                cfg.lr = args.lr if args.lr is not None else cfg.lr
            cfg = _overrides(cfg, args.set_adversarial, "--set-adversarial", ap)
            print(f"stage {k + 1}/{len(plan)}: adversarial, weight {cfg.adv_weight:g}, {cfg.iters} iterations",
                  flush=True)
            res = train_consistency_adversarial(cfg, init=state, teacher=teacher, log=log,
                                                checkpoint=lambda m, it, c=cfg: ckpt(m, it, c),
                                                checkpoint_every=args.checkpoint_every)
        meta = stage_meta(cfg, cfg.iters)
        save_model(res.model, path, meta)
        state = {k2: v.clone() for k2, v in res.model.state_dict().items()}
        if args.save_student is not None:
            save_model(res.extra["student"], args.save_student, {**meta, "weights": "student"})
        print(f"stage {k + 1} done in {res.seconds:.0f} s (total {meta['train_seconds']:.0f} s); saved {path}",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m diffsolve.training.mnist", description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=("unet", "unet_deep", "classifier", "stats", "consistency"), required=True)
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the shipped config)")
    ap.add_argument("--out", type=Path, default=WEIGHTS, help="folder for the safetensors files")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint-every", type=int, default=300)
    ap.add_argument("--channels", default=None, help="UNet widths per level, e.g. 16,32,64")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--init", type=Path, default=None,
                    help="unet: continue from these UNet weights (one stage, with --lr); default: all UNET_STAGES "
                         "from scratch; consistency: the teacher (default: the shipped UNet)")
    ap.add_argument("--set", action="append", metavar="FIELD=VALUE",
                    help="consistency: override a ConsistencyConfig field (repeatable)")
    ap.add_argument("--resume", type=Path, default=None,
                    help="consistency: continue from these consistency-model weights (one stage, with --lr)")
    ap.add_argument("--stages", default="cd,adversarial",
                    help="consistency: 'cd' (CONSISTENCY_STAGES, or one stage with --resume/--iters/--lr), "
                         "'adversarial' (AdversarialConfig; alone it needs --resume) or both, comma-separated")
    ap.add_argument("--set-adversarial", action="append", metavar="FIELD=VALUE",
                    help="consistency: override an AdversarialConfig field (repeatable)")
    ap.add_argument("--save-student", type=Path, default=None,
                    help="consistency: also save the raw (non-EMA) student weights here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what in ("unet", "unet_deep"):
        deep = args.what == "unet_deep"
        path = args.out / (DEEP_UNET_FILE if deep else UNET_FILE)
        store = torch.float16 if deep else None
        if args.init is not None or args.lr is not None:
            stages = [(args.lr if args.lr is not None else UNetConfig.lr, args.seed)]
        else:
            stages = list(DEEP_UNET_STAGES if deep else UNET_STAGES)
        state, meta = None, {}
        if args.init is not None:
            from diffsolve.models.builtin import _load
            state, meta = _load(args.init)
        for k, (lr, seed) in enumerate(stages):
            cfg = UNetConfig(lr=lr, seed=seed, **(DEEP_UNET if deep else {}))
            if args.iters is not None:
                cfg.iters = args.iters
            if args.channels:
                cfg.channels = tuple(int(c) for c in args.channels.split(","))
            if meta:
                cfg.channels, cfg.emb_dim = tuple(meta["channels"]), int(meta["emb_dim"])
                cfg.blocks_per_level = int(meta.get("blocks_per_level", 1))
            prior = {"continued_from": meta} if meta else {}
            print(f"stage {k + 1}/{len(stages)}: lr {lr:g}, seed {seed}", flush=True)

            def ckpt(m: UNet, it: int, cfg=cfg, prior=prior) -> None:
                save_model(m, path, {**asdict(cfg), "trained_iters": it, **prior}, store)
                print(f"saved EMA weights after {it} iterations to {path}", flush=True)

            res = train_unet(cfg, log=lambda s: print(s, flush=True), checkpoint=ckpt,
                             checkpoint_every=args.checkpoint_every, init=state)
            meta = {**asdict(cfg), "trained_iters": cfg.iters, "train_seconds": round(res.seconds, 1), **prior}
            save_model(res.model, path, meta, store)
            state = {k2: v.clone() for k2, v in res.model.state_dict().items()}
            print(f"stage {k + 1} done in {res.seconds:.0f} s; saved {path}", flush=True)
    elif args.what == "consistency":
        _train_consistency_cli(args, ap)
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
        from diffsolve.models.builtin import load_mnist_classifier
        clf = load_mnist_classifier(args.out / CLASSIFIER_FILE)
        from safetensors.torch import save_file
        stats = real_feature_stats(clf)
        save_file(stats, str(args.out / STATS_FILE))
        print(f"saved {sorted(stats)} to {args.out / STATS_FILE}")


if __name__ == "__main__":
    main()
