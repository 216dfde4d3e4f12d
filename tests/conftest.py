"""Shared test helpers: where ../shared lives, thread counts, and the Triton interpreter on CPU-only machines."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton kernels run in its CPU interpreter where there is no GPU; this must be set before triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

# One thread per test process: tiny convolutions run far slower with more threads on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_models() -> Path:
    path = SHARED / "models"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: tests need ../shared beside the repository root")
    return path


def tiny_unet2d(size: int = 8):
    """The small random diffusers UNet2DModel the cross-checks share (seeded, eval mode, no grad)."""
    import diffusers
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=8,
                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    return net.eval().requires_grad_(False)


class Counting(torch.nn.Module):
    """Wraps a model and counts how many samples' worth of evaluations it really made."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.samples = 0          # per-sample evaluations: the batch sizes summed over calls

    @property
    def diffsolve_spec(self):
        return self.inner.diffsolve_spec

    def forward(self, x, t, **kw):
        self.calls += 1
        self.samples += int(x.shape[0])
        return self.inner(x, t, **kw)


# For tests that run every registered solver on a model no correction ships for: the learned solvers run their
# untrained rule there by design and say so in a warning, which these tests expect.
untrained_corrections = pytest.mark.filterwarnings("ignore:.*correction for base=.*ships for this model:UserWarning")

# Seeds that no learned correction trains on (training seeds are 0 .. n_train - 1): where they are judged.
HELD_OUT = list(range(900_000, 900_128))


@pytest.fixture(scope="module")
def gmm():
    from diffsolve.problems import GaussianMixtureProblem
    return GaussianMixtureProblem.default()


@pytest.fixture(scope="module")
def held_out(gmm):
    """Held-out noise for the mixture and its exact-ODE endpoint (the teacher)."""
    from diffsolve.corrections.teacher import noise_for, teacher_states
    from diffsolve.field import as_field
    field = as_field(gmm)
    noise = noise_for(field, HELD_OUT, dtype=torch.float64)
    return noise, teacher_states(field, noise, [gmm.schedule.t_max, 0.0], seeds=HELD_OUT)[-1]
