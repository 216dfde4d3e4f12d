"""Settings of the built-in MNIST models' training: the configs, the stage schedules that made the shipped files,
and the file names (in `diffsolve.models.builtin.WEIGHTS`).

unet: EDM training (Karras et al. 2022) in the four UNET_STAGES (the deep UNet: DEEP_UNET_STAGES). classifier:
cross-entropy with random shifts. consistency: consistency distillation in the CONSISTENCY_STAGES, then the
adversarial stage (AdversarialConfig). Every stage is seeded; runs are repeatable on the same machine and thread count.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    """Settings of the EDM UNet's training (the defaults: the shipped UNet's first stage).

    Attributes:
        channels: channels per resolution level.
        emb_dim: the noise-level embedding's width.
        blocks_per_level: residual blocks per level.
        iters: training iterations.
        batch_size: images per iteration.
        lr: Adam's learning rate after the warm-up.
        warmup: iterations of the linear learning-rate warm-up.
        ema_decay: the EMA's decay (the EMA is what ships).
        p_mean: the mean of log sigma (EDM's P_mean).
        p_std: the standard deviation of log sigma (EDM's P_std).
        max_shift: random shifts of up to this many pixels (0: none).
        seed: seeds the training noise and batches.
        log_every: iterations between progress lines (0: none).
    """
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
    """Settings of the feature classifier's training.

    Attributes:
        width: the first convolutions' channels.
        iters: training iterations.
        batch_size: images per iteration.
        lr: Adam's learning rate (cosine-annealed).
        max_shift: random shifts of up to this many pixels.
        seed: seeds the training noise and batches.
        log_every: iterations between progress lines (0: none).
    """
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
    """Settings of consistency distillation (Song et al. 2023, Alg. 2) from the UNet.

    Attributes:
        n_levels: N of the karras discretization (CM's CIFAR-10 setting).
        rho: the karras grid's rho.
        solver: the teacher's ODE step, a diffsolve solver.
        loss: "huber" (pseudo-Huber, Song & Dhariwal 2023) or "l2".
        huber_c: the pseudo-Huber c; 0: 0.00054 sqrt(d) as iCT.
        iters: training iterations.
        batch_size: images per iteration.
        levels_per_batch: the batch is drawn as this many groups of one level each (one teacher step per group).
        lr: Adam's learning rate.
        warmup: iterations of the linear learning-rate warm-up.
        target_ema: mu of Alg. 2, the target network's EMA.
        ema_decay: the EMA that ships.
        seed: seeds the training noise.
        log_every: iterations between progress lines (0: none).
    """
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
    """Settings of the consistency model's last stage: regression onto teacher ODE endpoints plus a hinge GAN term.

    Attributes:
        trajectories: teacher ODE solutions, each on its own jittered karras grid of `levels` steps.
        levels: steps per teacher trajectory.
        solver: the teacher's solver, a diffsolve solver.
        chunk: trajectories per teacher batch (one jittered grid each).
        iters: training iterations.
        batch_size: images per iteration.
        lr: the student's Adam learning rate.
        d_lr: the discriminator's Adam learning rate.
        adv_weight: the weight of the GAN term.
        p_sigma_max: share of the batch at sigma_max, the one-step input.
        huber_c: the pseudo-Huber c; 0: 0.00054 sqrt(d) as iCT.
        ema_decay: the EMA that ships.
        d_width: the discriminator's width.
        seed: seeds the training noise and teacher trajectories.
        log_every: iterations between progress lines (0: none).
    """
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
    """What a training run returns.

    Attributes:
        model: the trained model (the EMA where there is one), in eval mode.
        losses: the loss of each iteration.
        seconds: the wall time taken.
        extra: anything else the run reports (by name).
    """
    model: torch.nn.Module
    losses: list = field(default_factory=list)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

