"""Training and scoring of the 2-D moons flows of `diffsolve.models.toy2d`: 1-rectified flow, 2-rectified flow
and a shortcut model from N(0, I), and a 1-rectified flow from the eight-Gaussians source.

- 1-RF (Liu et al. 2023; flow matching, Lipman et al. 2023): v(x_t, t) regressed on x1 - z with the independent
  coupling (z and x1 drawn apart).
- 2-RF (Liu et al. 2023, "reflow"): the same loss on the couplings (z, X1) of the 1-RF's ODE, generated with
  `diffsolve.training.reflow.generate_couplings` (RK4), starting from the 1-RF's weights. Its paths are straighter, so
  few Euler steps land closer to the data.
- Shortcut (Frans et al. 2024): v(x, t, d) also takes the step size d. Flow matching at d = 0 on 3/4 of each batch;
  on the other 1/4, self-consistency: v(x, t, 2d) regressed on (v(x, t, d) + v(x', t + d, d)) / 2,
  x' = x + d v(x, t, d), without gradient through the target, for 2d in {1/128, ..., 1/2, 1} and t on the grid
  of multiples of 2d (where the K-step sampler evaluates it); the half steps of the smallest level, 1/256, are
  taken with d = 0. Sample with `Sampler(load_moons_shortcut())` (its spec names the "shortcut" solver).

Train: `diffsolve train --what moons-1rf|moons-2rf|moons-shortcut|moons-8gaussians|moons` (the 2-RF needs the
shipped 1-RF); score: `diffsolve evaluate --models moons`. Everything is seeded and runs at one thread in a few minutes.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from diffsolve.analysis.straightness import straightness
from diffsolve.errors import check_choice
from diffsolve.evaluation.metrics import sliced_wasserstein
from diffsolve.models.toy2d import (FILES, MODELS, SOURCES, WEIGHTS, MoonsMLP, load_moons_flow, moons,
                                    sample_eight_gaussians, toy_metadata)
from diffsolve.noise import draw_noise
from diffsolve.sampler import Sampler
from diffsolve.training.reflow import coupling_seeds, generate_couplings, load_couplings

# Seeds: training draws from torch generators seeded by the configs below; the 2-RF couplings use reflow noise
# seeds COUPLING_SEED * 2**32 + i; evaluation uses reflow noise seeds HELDOUT_SEED * 2**32 + i (never trained on)
# and moons drawn with sklearn's random_state=HELDOUT_DATA_SEED (the training pools use the configs' seeds).
COUPLING_SEED = 1
HELDOUT_SEED = 7
HELDOUT_DATA_SEED = 123_456
SHORTCUT_LEVELS = 8          # step sizes 1, 1/2, ..., 1/128


@dataclass
class ToyConfig:
    """Settings of one moons model's training (the shipped ones: DEFAULTS).

    Attributes:
        what: "1rf", "2rf" or "shortcut".
        iters: training iterations.
        batch_size: points per iteration.
        lr: Adam's peak learning rate (2% linear warm-up, then cosine decay to zero).
        width: the MLP's hidden width.
        depth: the MLP's hidden layers.
        seed: seeds the weights, the data pool, the noise and the times.
        pool: moons drawn once (1rf, shortcut) / couplings generated (2rf).
        consistency_fraction: the share of a shortcut batch trained on self-consistency (default 1/4).
        coupling_solver: the solver of the 2-RF's couplings.
        coupling_steps: its steps per coupling.
        log_every: iterations between progress lines (0: none).
        source: where the flow starts: "normal" (N(0, I)) or a key of `models.toy2d.SOURCES` (1rf only).
    """
    what: str = "1rf"                # 1rf | 2rf | shortcut
    iters: int = 6000
    batch_size: int = 512
    lr: float = 2e-3
    width: int = 128
    depth: int = 3
    seed: int = 0
    pool: int = 100_000              # moons drawn once (1rf, shortcut) / couplings generated (2rf)
    consistency_fraction: float = 0.25
    coupling_solver: str = "rk4"
    coupling_steps: int = 64
    log_every: int = 1000
    source: str = "normal"


DEFAULTS = {"1rf": ToyConfig("1rf", iters=10000, lr=2e-3, seed=0),
            "2rf": ToyConfig("2rf", iters=6000, lr=1e-3, seed=2, pool=50_000),
            "shortcut": ToyConfig("shortcut", iters=20000, lr=2e-3, seed=3),
            "8gaussians": ToyConfig("1rf", iters=10000, lr=2e-3, seed=4, source="8gaussians")}


@dataclass
class ToyResult:
    """What `train_toy` returns.

    Attributes:
        model: the trained MoonsMLP, in eval mode without gradients.
        config: the settings it was trained with.
        seconds: the training's wall time.
        losses: the loss of each iteration.
        extra: anything else the run reports (by name).
    """
    model: MoonsMLP
    config: ToyConfig
    seconds: float
    losses: list
    extra: dict


def _lr_at(cfg: ToyConfig, it: int) -> float:
    """Linear warm-up over 2% of the iterations, then cosine decay to zero."""
    warm = max(1, cfg.iters // 50)
    if it < warm:
        return cfg.lr * (it + 1) / warm
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (it - warm) / max(1, cfg.iters - warm)))


def _fm_loss(model: MoonsMLP, z: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    xt = (1 - t[:, None]) * z + t[:, None] * x1
    v = model(xt, t, torch.zeros_like(t)) if model.shortcut else model(xt, t)
    return (v - (x1 - z)).pow(2).sum(1).mean()


def _shortcut_loss(model: MoonsMLP, z: torch.Tensor, x1: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Self-consistency: v(x, t, 2d) against the mean of two d-steps (d = 0 stands in for the half of 1/128)."""
    m = z.shape[0]
    k = torch.randint(0, SHORTCUT_LEVELS, (m,), generator=g)
    big = torch.pow(2.0, -k.double()).float()                       # 2d: 1 .. 1/128
    half = big / 2
    half_in = torch.where(k == SHORTCUT_LEVELS - 1, torch.zeros_like(half), half)
    j = torch.floor(torch.rand(m, generator=g) * (1.0 / big)).clamp(max=(1.0 / big) - 1)
    t = j * big                                                      # multiples of 2d in [0, 1 - 2d]
    xt = (1 - t[:, None]) * z + t[:, None] * x1
    with torch.no_grad():
        v1 = model(xt, t, half_in)
        x_mid = xt + half[:, None] * v1
        v2 = model(x_mid, t + half, half_in)
        target = (v1 + v2) / 2
    return (model(xt, t, big) - target).pow(2).sum(1).mean()


def _draw_source(cfg: ToyConfig, g: torch.Generator) -> torch.Tensor:
    """One batch of starts from the config's source."""
    if cfg.source == "8gaussians":
        return sample_eight_gaussians(cfg.batch_size, g)
    return torch.randn(cfg.batch_size, 2, generator=g)


def train_toy(cfg: ToyConfig, *, init: MoonsMLP | None = None, pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
              log: Callable[[str], None] | None = print) -> ToyResult:
    """Train one model. 2rf needs `pairs` = (noise, endpoint) couplings and `init` (the 1-RF); the others start fresh.

    Seeded by cfg.seed (weights, data pool, noise, times): the same config gives the same weights on the same
    machine and thread count.

    Args:
        cfg: the settings.
        init: a model to continue from (copied); None: fresh weights.
        pairs: (noise, endpoint) couplings, needed for "2rf".
        log: receives the progress lines (default print; None: silent).

    Returns:
        The ToyResult.

    Raises:
        InvalidArgument: `cfg.what` is not "1rf", "2rf" or "shortcut", or a source other than N(0, I) on a
            model other than a 1-RF.
        ValueError: "2rf" without `pairs`.
    """
    check_choice("what", cfg.what, ("1rf", "2rf", "shortcut"))
    check_choice("source", cfg.source, ("normal",) + (tuple(SOURCES) if cfg.what == "1rf" else ()))
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    if init is not None:
        model = copy.deepcopy(init).train().requires_grad_(True)
    else:
        model = MoonsMLP(cfg.width, cfg.depth, shortcut=cfg.what == "shortcut",
                         source=None if cfg.source == "normal" else cfg.source)
    if cfg.what == "2rf":
        if pairs is None:
            raise ValueError("2rf trains on couplings: pass pairs=(noise, endpoint)")
        pool_z, pool_x = pairs[0].float(), pairs[1].float()
    else:
        pool_z, pool_x = None, moons(cfg.pool, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    losses = []
    t0 = time.perf_counter()
    n_pool = pool_x.shape[0]
    for it in range(cfg.iters):
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(cfg, it)
        idx = torch.randint(0, n_pool, (cfg.batch_size,), generator=g)
        x1 = pool_x[idx]
        z = pool_z[idx] if pool_z is not None else _draw_source(cfg, g)
        if cfg.what == "shortcut":
            m = int(round(cfg.batch_size * cfg.consistency_fraction))
            t = torch.rand(cfg.batch_size - m, generator=g)
            loss = (_fm_loss(model, z[m:], x1[m:], t) * (cfg.batch_size - m)
                    + _shortcut_loss(model, z[:m], x1[:m], g) * m) / cfg.batch_size
        else:
            loss = _fm_loss(model, z, x1, torch.rand(cfg.batch_size, generator=g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and cfg.log_every and (it + 1) % cfg.log_every == 0:
            recent = sum(losses[-cfg.log_every:]) / cfg.log_every
            log(f"{cfg.what}: iter {it + 1}/{cfg.iters} loss {recent:.4f} ({time.perf_counter() - t0:.0f} s)")
    return ToyResult(model.eval().requires_grad_(False), cfg, time.perf_counter() - t0, losses, {})



def save_toy(model: MoonsMLP, path: Path, meta: dict) -> None:
    """Write a moons model's weights as safetensors with its training record.

    Args:
        model: the model.
        path: the file to write.
        meta: the training record, stored as JSON under the `config` metadata key.
    """
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(meta, sort_keys=True)})


def heldout_noise(n: int) -> torch.Tensor:
    """Noise no model saw in training or couplings: reflow's per-sample seeds HELDOUT_SEED * 2**32 + i.

    Args:
        n: the number of points.

    Returns:
        The noise, (n, 2).
    """
    return draw_noise((n, 2), seed=coupling_seeds(HELDOUT_SEED, 0, n))


def heldout_moons(n: int) -> torch.Tensor:
    """Moons no model was trained on: `n` points drawn with random_state HELDOUT_DATA_SEED.

    Returns:
        The points, float32 (n, 2).
    """
    return moons(n, seed=HELDOUT_DATA_SEED)


def sample(model: Any, noise: torch.Tensor, steps: int, solver: str | None = None) -> torch.Tensor:
    """The samples of `model` from `noise` in `steps` steps of `solver`.

    Args:
        model: a model `Sampler` takes.
        noise: the starting noise, (n, 2).
        steps: the number of steps.
        solver: the solver's registry name; None: the model's own (or the default).

    Returns:
        The samples, shaped like noise.
    """
    return Sampler(model, solver, progress=False).run(steps=steps, noise=noise).samples


def sliced_w1(x: torch.Tensor, y: torch.Tensor) -> float:
    """The sliced Wasserstein-1 distance between point sets `x` and `y` (256 projections, seed 0, in float64).

    Returns:
        The distance, a float.
    """
    return sliced_wasserstein(x.double(), y.double(), n_proj=256, seed=0)


def straightness_of(model: Any, noise: torch.Tensor, steps: int = 128) -> tuple[float, float]:
    """(straightness S, RMS 1-step gap) against a fine Heun solve, from `diffsolve.analysis.straightness`.

    Args:
        model: the flow.
        noise: the starting points.
        steps: Heun steps of the reference solve (default 128).

    Returns:
        The straightness and the RMS one-step gap, floats.
    """
    r = straightness(model, noise, steps=steps, solver="heun")
    return float(r.straightness), float(r.one_step_gap)


def evaluate(n: int = 5000, steps: tuple[int, ...] = (1, 2, 4, 8)) -> dict:
    """Sliced W1 to held-out moons at each step count: 1-RF and 2-RF with Euler, the shortcut model with its
    sampler; straightness and 1-step gap of 1-RF and 2-RF. The floor (two moons samples) is reported too.

    Args:
        n: the number of points (default 5000).
        steps: the step counts (default 1, 2, 4, 8).

    Returns:
        {"n", "floor", and per model "1rf"/"2rf"/"shortcut": W1 by step count, "rk4_64", "train_seconds" and, for
            the flows, "straightness" and "one_step_gap"}.

    Raises:
        FileNotFoundError: a shipped moons model is missing.
    """
    noise, target = heldout_noise(n), heldout_moons(n)
    out: dict = {"n": n, "floor": sliced_w1(moons(n, seed=HELDOUT_DATA_SEED + 1), target)}
    for name, solver in (("1rf", "euler"), ("2rf", "euler"), ("shortcut", "shortcut")):
        model = MODELS[f"moons-{name}"]()
        out[name] = {k: sliced_w1(sample(model, noise, k, solver), target) for k in steps}
        out[name]["rk4_64"] = sliced_w1(sample(model, noise, 64, "rk4"), target)
        if name != "shortcut":
            s, gap = straightness_of(model, noise[:2000])
            out[name]["straightness"], out[name]["one_step_gap"] = s, gap
        out[name]["train_seconds"] = toy_metadata(WEIGHTS / FILES[name]).get("train_seconds")
    return out


def make_couplings(model: MoonsMLP, cfg: ToyConfig, folder: Path) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
    """Generate the 2-RF's couplings from the 1-RF (`cfg.pool` samples by `cfg.coupling_solver`, seed COUPLING_SEED).

    Args:
        model: the 1-rectified flow.
        cfg: the 2-RF's settings.
        folder: the coupling folder (resumable).

    Returns:
        The (noise, endpoint) couplings and a record of how they were made.

    Raises:
        CouplingsError: the folder holds couplings made with other settings.
    """
    run = generate_couplings(model, folder, cfg.pool, solver=cfg.coupling_solver, steps=cfg.coupling_steps,
                             batch_size=2048, shard_size=10_000, seed=COUPLING_SEED, log=True)
    info = {"coupling_seconds": round(run.seconds, 2), "coupling_n": cfg.pool, "coupling_solver": cfg.coupling_solver,
            "coupling_steps": cfg.coupling_steps, "coupling_seed": COUPLING_SEED,
            "coupling_shards_computed": len(run.computed)}
    return load_couplings(folder), info



def train_moons(what: str, out: Path = WEIGHTS, *, iters: int | None = None, couplings: Path | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Train one shipped moons model ('1rf', '2rf', 'shortcut' or '8gaussians') with its DEFAULTS config and save
    it to out / FILES[what] with its training record (returned).

    Args:
        what: "1rf", "2rf" (needs the 1-RF in `out`), "shortcut" or "8gaussians" (the 1-RF recipe from the
            eight-Gaussians source).
        out: the folder to write to (default: the shipped weights folder).
        iters: overrides the config's iteration count.
        couplings: the folder of the 2-RF's couplings (resumable; default a temporary folder).
        log: receives the progress lines (default print).

    Returns:
        The training record.

    Raises:
        InvalidArgument: `what` is not one of DEFAULTS.
        FileNotFoundError: "2rf" without the 1-RF's file in `out`.
    """
    check_choice("what", what, tuple(DEFAULTS))
    cfg = copy.deepcopy(DEFAULTS[what])
    if iters is not None:
        cfg.iters = iters
    init, pairs, extra = None, None, {}
    if what == "2rf":
        init = load_moons_flow(1, out / FILES["1rf"])
        with tempfile.TemporaryDirectory(prefix="moons-couplings-") as tmp:
            pairs, extra = make_couplings(init, cfg, couplings or Path(tmp))
        extra["init"] = FILES["1rf"]
    res = train_toy(cfg, init=init, pairs=pairs, log=log)
    meta = {**asdict(cfg), "train_seconds": round(res.seconds, 2), "final_loss": sum(res.losses[-200:]) / 200,
            "threads": torch.get_num_threads(), **extra}
    out.mkdir(parents=True, exist_ok=True)
    save_toy(res.model, out / FILES[what], meta)
    log(f"{what}: trained in {res.seconds:.1f} s; saved {out / FILES[what]} ({json.dumps(extra)})")
    return meta
