"""The recipes that made the shipped MNIST files: each trainer run in its stages, with checkpoints and the training
record stored beside the weights. `diffsolve train --what unet|unet_deep|classifier|stats|consistency` runs them."""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.models.builtin import WEIGHTS, load_mnist_classifier, load_mnist_unet, load_weights
from diffsolve.models.classifier import featurize
from diffsolve.models.data import load_mnist
from diffsolve.training.checkpoints import save_model
from diffsolve.training.classifier import real_feature_stats, train_classifier
from diffsolve.training.configs import (CLASSIFIER_FILE, CONSISTENCY_FILE, CONSISTENCY_STAGES, DEEP_UNET,
                                        DEEP_UNET_FILE, DEEP_UNET_STAGES, STATS_FILE, UNET_FILE, UNET_STAGES,
                                        AdversarialConfig, ClassifierConfig, ConsistencyConfig, UNetConfig)
from diffsolve.training.consistency import train_consistency, train_consistency_adversarial
from diffsolve.training.unet import train_unet

WHAT = ("unet", "unet_deep", "classifier", "stats", "consistency")
STAGE_CHOICES = (("cd",), ("adversarial",), ("cd", "adversarial"))


def _say(text: str) -> None:
    print(text, flush=True)


@dataclass
class MnistTrainSettings:
    """What to train and where (see `diffsolve train --help`).

    Attributes:
        what: one of WHAT: "unet", "unet_deep", "classifier", "stats" or "consistency".
        out: the folder the files are written to (default: the shipped weights folder).
        iters: iterations per stage; None: each config's own.
        seed: None: each trainer's own default seed (0; the consistency stage's ConsistencyConfig.seed).
        threads: torch threads (recorded with the consistency model).
        checkpoint_every: iterations between checkpoints (0: none).
        channels: the UNet's channels per level; None: the config's.
        lr: one stage at this learning rate instead of the recipe's stages.
        init: a UNet file to continue from (unet), or the teacher's file (consistency).
        resume: a consistency-model file to continue from.
        stages: the consistency stages, one of STAGE_CHOICES.
        overrides: ConsistencyConfig fields given as text, converted to the field's type.
        adversarial_overrides: AdversarialConfig fields given as text, converted to the field's type.
        save_student: also save the consistency stage's raw student (not the EMA) there.
    """

    what: str
    out: Path = WEIGHTS
    iters: int | None = None
    seed: int | None = None
    threads: int = 1
    checkpoint_every: int = 300
    channels: tuple[int, ...] | None = None
    lr: float | None = None
    init: Path | None = None
    resume: Path | None = None
    stages: tuple[str, ...] = ("cd", "adversarial")
    overrides: dict[str, str] = field(default_factory=dict)
    adversarial_overrides: dict[str, str] = field(default_factory=dict)
    save_student: Path | None = None


def train_mnist(s: MnistTrainSettings, log: Callable[[str], None] = _say) -> None:
    """Run the recipe of `s.what` and write its file(s) under `s.out`.

    Args:
        s: the settings.
        log: receives the progress lines (default: print, flushed).

    Raises:
        InvalidArgument: `s.what` is not in WHAT, or the settings do not fit the recipe.
    """
    check_choice("what", s.what, WHAT)
    if s.what in ("unet", "unet_deep"):
        train_unet_stages(s, log)
    elif s.what == "consistency":
        train_consistency_stages(s, log)
    elif s.what == "classifier":
        train_classifier_file(s, log)
    else:
        write_feature_stats(s, log)


def train_unet_stages(s: MnistTrainSettings, log: Callable[[str], None] = _say) -> None:
    """The UNet (or the deep UNet) in its stages, or one stage from `s.init` / with `s.lr`.

    Args:
        s: the settings (`what` "unet" or "unet_deep").
        log: receives the progress lines (default: print, flushed).
    """
    deep = s.what == "unet_deep"
    path = s.out / (DEEP_UNET_FILE if deep else UNET_FILE)
    store = torch.float16 if deep else None
    if s.init is not None or s.lr is not None:
        stages = [(s.lr if s.lr is not None else UNetConfig.lr, s.seed or 0)]
    else:
        stages = list(DEEP_UNET_STAGES if deep else UNET_STAGES)
    state, meta = None, {}
    if s.init is not None:
        state, meta = load_weights(s.init)
    for k, (lr, seed) in enumerate(stages):
        cfg = UNetConfig(lr=lr, seed=seed, **(DEEP_UNET if deep else {}))
        if s.iters is not None:
            cfg.iters = s.iters
        if s.channels:
            cfg.channels = tuple(s.channels)
        if meta:
            cfg.channels, cfg.emb_dim = tuple(meta["channels"]), int(meta["emb_dim"])
            cfg.blocks_per_level = int(meta.get("blocks_per_level", 1))
        prior = {"continued_from": meta} if meta else {}
        log(f"stage {k + 1}/{len(stages)}: lr {lr:g}, seed {seed}")

        def ckpt(m: torch.nn.Module, it: int, cfg=cfg, prior=prior) -> None:
            save_model(m, path, {**asdict(cfg), "trained_iters": it, **prior}, store)
            log(f"saved EMA weights after {it} iterations to {path}")

        res = train_unet(cfg, log=log, checkpoint=ckpt, checkpoint_every=s.checkpoint_every, init=state)
        meta = {**asdict(cfg), "trained_iters": cfg.iters, "train_seconds": round(res.seconds, 1), **prior}
        save_model(res.model, path, meta, store)
        state = {k2: v.clone() for k2, v in res.model.state_dict().items()}
        log(f"stage {k + 1} done in {res.seconds:.0f} s; saved {path}")


def train_classifier_file(s: MnistTrainSettings, log: Callable[[str], None] = _say) -> None:
    """Train the feature classifier, write it under `s.out` and log its held-out accuracy.

    Args:
        s: the settings (`seed`, `iters`, `out`).
        log: receives the progress lines (default: print, flushed).
    """
    cfg = ClassifierConfig(seed=s.seed or 0)
    if s.iters is not None:
        cfg.iters = s.iters
    res = train_classifier(cfg, log=log)
    path = s.out / CLASSIFIER_FILE
    save_model(res.model, path, {**asdict(cfg), "train_seconds": res.seconds})
    x, y = load_mnist("heldout")
    _, p = featurize(res.model, x)
    log(f"done in {res.seconds:.0f} s; held-out accuracy {(p.argmax(1) == y).double().mean():.4f}; saved {path}")


def write_feature_stats(s: MnistTrainSettings, log: Callable[[str], None] = _say) -> None:
    """The real images' feature statistics under the classifier in `s.out`.

    Args:
        s: the settings (`out` holds the classifier and receives the statistics).
        log: receives the progress lines (default: print, flushed).

    Raises:
        FileNotFoundError: no classifier in `s.out`.
    """
    stats = real_feature_stats(load_mnist_classifier(s.out / CLASSIFIER_FILE))
    save_file(stats, str(s.out / STATS_FILE))
    log(f"saved {sorted(stats)} to {s.out / STATS_FILE}")


def with_overrides(cfg: Any, overrides: dict[str, str], argument: str) -> Any:
    """cfg with each named field set to its text value converted to the field's type.

    Args:
        cfg: a config dataclass, changed in place.
        overrides: field name -> text value.
        argument: the argument's name, for the message.

    Returns:
        `cfg`.

    Raises:
        InvalidArgument: a name that is not a field of cfg.
        ValueError: a text the field's type cannot convert.
    """
    for key, value in overrides.items():
        if key not in type(cfg).__dataclass_fields__:
            raise InvalidArgument(f"{argument}: {key!r} is not a {type(cfg).__name__} field")
        setattr(cfg, key, type(getattr(cfg, key))(value))
    return cfg


def _consistency_plan(s: MnistTrainSettings) -> list[tuple]:
    """The stages to run: ('cd', lr, seed, iters) and/or ('adversarial',)."""
    if tuple(s.stages) not in STAGE_CHOICES:
        raise InvalidArgument(f"stages={','.join(s.stages)!r}: 'cd', 'adversarial' or 'cd,adversarial'")
    if tuple(s.stages) == ("adversarial",) and s.resume is None:
        raise InvalidArgument("stages='adversarial' fine-tunes a consistency model: give it with resume (--resume)")
    plan: list[tuple] = []
    if "cd" in s.stages:
        if s.resume is not None or s.iters is not None or s.lr is not None:
            plan.append(("cd", s.lr if s.lr is not None else ConsistencyConfig.lr,
                         ConsistencyConfig.seed if s.seed is None else s.seed,
                         s.iters if s.iters is not None else ConsistencyConfig.iters))
        else:
            plan += [("cd", *stage) for stage in CONSISTENCY_STAGES]
    if "adversarial" in s.stages:
        plan.append(("adversarial",))
    return plan


def train_consistency_stages(s: MnistTrainSettings, log: Callable[[str], None] = _say) -> None:
    """The consistency model's recipe: the CD stages, then the adversarial stage; train_seconds adds up all stages.

    Args:
        s: the settings (`stages`, `init` the teacher, `resume`, overrides).
        log: receives the progress lines (default: print, flushed).

    Raises:
        InvalidArgument: stages not in STAGE_CHOICES, "adversarial" alone without `resume`, or an unknown override.
    """
    plan = _consistency_plan(s)
    teacher_path = s.init if s.init is not None else WEIGHTS / UNET_FILE
    teacher = load_mnist_unet(teacher_path)
    base = {"channels": list(teacher.channels), "emb_dim": teacher.time_mlp[0].out_features,
            "teacher_sha1": hashlib.sha1(Path(teacher_path).read_bytes()).hexdigest()[:10], "threads": s.threads}
    state, meta = (load_weights(s.resume) if s.resume is not None else (None, {}))
    for k, stage in enumerate(plan):
        meta, res = _consistency_stage(s, stage, teacher, state, meta, base, f"{k + 1}/{len(plan)}", log)
        state = {k2: v.clone() for k2, v in res.model.state_dict().items()}
        log(f"stage {k + 1} done in {res.seconds:.0f} s (total {meta['train_seconds']:.0f} s); "
            f"saved {s.out / CONSISTENCY_FILE}")


def _consistency_stage(s: MnistTrainSettings, stage: tuple, teacher: torch.nn.Module, state: dict | None, meta: dict,
                       base: dict, where: str, log: Callable[[str], None]) -> tuple[dict, Any]:
    """One stage from `state` (after the stage recorded in `meta`); saves checkpoints and the stage's result."""
    path = s.out / CONSISTENCY_FILE
    prior = {"continued_from": meta} if meta else {}
    before = float(meta.get("train_seconds", 0.0)) if meta else 0.0     # earlier stages' wall time
    started = time.time()

    def stage_meta(cfg: Any, it: int) -> dict:
        return {**asdict(cfg), **base, "stage": stage[0], "trained_iters": it, **prior,
                "train_seconds": round(before + time.time() - started, 1)}

    def ckpt(m: torch.nn.Module, it: int, cfg: Any) -> None:
        # lr and EMA do not depend on cfg.iters: the checkpoint after `it` iterations is the run with iters=it
        save_model(m, path, stage_meta(cfg, it))
        log(f"saved EMA weights after {it} iterations to {path}")

    if stage[0] == "cd":
        _, lr, seed, iters = stage
        cfg = with_overrides(ConsistencyConfig(lr=lr, seed=seed, iters=iters), s.overrides, "overrides (--set)")
        log(f"stage {where}: consistency distillation, lr {lr:g}, seed {seed}, {iters} iterations")
        res = train_consistency(cfg, teacher=teacher, log=log, checkpoint=lambda m, it: ckpt(m, it, cfg),
                                checkpoint_every=s.checkpoint_every, init=state)
    else:
        cfg = AdversarialConfig()
        if tuple(s.stages) == ("adversarial",):
            cfg.iters = s.iters if s.iters is not None else cfg.iters
            cfg.lr = s.lr if s.lr is not None else cfg.lr
        cfg = with_overrides(cfg, s.adversarial_overrides, "adversarial_overrides (--set-adversarial)")
        log(f"stage {where}: adversarial, weight {cfg.adv_weight:g}, {cfg.iters} iterations")
        res = train_consistency_adversarial(cfg, init=state, teacher=teacher, log=log,
                                            checkpoint=lambda m, it: ckpt(m, it, cfg),
                                            checkpoint_every=s.checkpoint_every)
    meta = stage_meta(cfg, cfg.iters)
    save_model(res.model, path, meta)
    if s.save_student is not None:
        save_model(res.extra["student"], s.save_student, {**meta, "weights": "student"})
    return meta, res
