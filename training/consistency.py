"""Training of the built-in MNIST consistency model: consistency distillation of the shipped UNet (Song et al. 2023,
Alg. 2), the teacher's ODE step taken by diffsolve's own Heun solver, then an adversarial stage: regression onto the
endpoints of the teacher's dpmpp_3m trajectories plus a hinge GAN term against the real training digits (CTM, Kim et
al. 2023)."""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch

from diffsolve.errors import check_int
from diffsolve.field import VectorField
from diffsolve.grids import karras_sigmas
from diffsolve.loop import Evaluator
from diffsolve.models.builtin import load_mnist_unet
from diffsolve.models.consistency import ConsistencyUNet
from diffsolve.models.data import load_mnist
from diffsolve.models.unet import SIGMA_MAX, SIGMA_MIN, UNet
from diffsolve.noise import draw_noise
from diffsolve.sampler import Sampler
from diffsolve.solvers import get_solver
from diffsolve.training.configs import AdversarialConfig, ConsistencyConfig, TrainResult
from diffsolve.training.discriminator import Discriminator


def consistency_levels(cfg: ConsistencyConfig) -> torch.Tensor:
    """sigma_1 = eps < ... < sigma_N = T: the karras discretization of Song et al. 2023 (float64, increasing).

    Args:
        cfg: the settings (`n_levels`, `rho`).

    Returns:
        The n_levels noise levels, float64, increasing.
    """
    return karras_sigmas(SIGMA_MIN, SIGMA_MAX, cfg.n_levels, cfg.rho).flip(0)


def consistency_loss(a: torch.Tensor, b: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """Mean over samples of the pseudo-Huber distance sqrt(|a - b|^2 + c^2) - c, or of the mean squared error.

    Args:
        a: the student's outputs, batch first.
        b: the targets, shaped like a.
        kind: "l2" for the mean squared error; anything else for pseudo-Huber.
        c: the pseudo-Huber constant.

    Returns:
        The loss, a scalar tensor.
    """
    d = (a - b).flatten(1)
    if kind == "l2":
        return (d * d).mean()
    return (torch.sqrt((d * d).sum(1) + c * c) - c).mean()


def train_consistency(cfg: ConsistencyConfig | None = None, *, teacher: UNet | None = None,
                      data: torch.Tensor | None = None, log: Callable[[str], None] = print,
                      checkpoint: Callable[[torch.nn.Module, int], None] | None = None,
                      checkpoint_every: int = 0, init: dict | None = None) -> TrainResult:
    """Consistency distillation (Song et al. 2023, Alg. 2) of the EDM UNet; returns the EMA student and losses
    (TrainResult; `extra` holds the student and the target network).

    Args:
        cfg: the settings; None: ConsistencyConfig(). A loss other than "huber" or "l2" raises ValueError.
        teacher: the EDM UNet to distil; None: the built-in one (`load_mnist_unet()`).
        data: the training images; None: the MNIST training split.
        log: receives the progress lines (default print).
        checkpoint: called as `checkpoint(ema, iteration)` every `checkpoint_every` iterations.
        checkpoint_every: iterations between checkpoints (0: none).
        init: a consistency-model state dict to start from (a later stage); None: the teacher's weights.
    """
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

    Args:
        teacher: the EDM network that declares its spec (the built-in UNet).
        n: the number of trajectories, >= 1.
        levels: noise levels per trajectory before the final 0, >= 2.
        solver: the diffsolve solver's registry name.
        seed: seeds the grid shifts and the per-trajectory noise.
        chunk: trajectories per solve, each chunk on one grid (default 256).

    Returns:
        The float32 states and the float32 sigmas.

    Raises:
        InvalidArgument: `levels` < 2, `n` < 1, or the solver name is unknown.
    """
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

    Args:
        cfg: the settings; None: AdversarialConfig().
        init: the consistency model's state dict to fine-tune.
        teacher: the EDM UNet; None: the built-in one.
        data: the real training images; None: the MNIST training split.
        log: receives the progress lines (default print).
        trajectories: (states, sigmas) of `teacher_trajectories`; None: made here (timed with the training).
        checkpoint: called as `checkpoint(ema, iteration)` every `checkpoint_every` iterations.
        checkpoint_every: iterations between checkpoints (0: none).
    """
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

