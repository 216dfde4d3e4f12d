"""The small MNIST DDPM (eps prediction, linear betas, T = 1000) whose weights live in ../shared/models.

Rebuilt from the description in that folder's README: four Conv7-LayerNorm-GELU blocks and a Conv3 head,
with a sinusoidal time embedding added after the first block. The network takes n / 1000 for timestep n.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffsolve.field import ModelSpec
from diffsolve.schedules import VPDiscrete


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, cout, 7, padding=3), nn.LayerNorm((cout, 28, 28)), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _GT(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [1, 16, 32, 32, 16]
        self.blocks = nn.ModuleList([_Block(a, b) for a, b in zip(chans[:-1], chans[1:])] +
                                    [nn.Conv2d(16, 1, 3, padding=1)])
        self.register_buffer("frequencies", torch.tensor([0.0] + [2 * torch.pi * 1.5 ** i for i in range(15)]))
        self.time_embed = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(),
                                        nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 16))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tf = t.reshape(-1, 1).to(x.dtype) * self.frequencies.to(x.dtype)
        temb = self.time_embed(torch.cat([torch.sin(tf), torch.cos(tf) - 1], dim=1))
        h = self.blocks[0](x) + temb[:, :, None, None]
        for block in self.blocks[1:4]:
            h = block(h)
        return self.blocks[4](h)


class MnistDDPM(nn.Module):
    """`model(x, n / 1000) -> eps` on 1 x 28 x 28 images in [-0.5, 0.5]; the buffers `beta_t` and `alpha_t` (abar) come
    with the weights.
    """

    def __init__(self):
        super().__init__()
        self.gt = _GT()
        self.register_buffer("beta_t", torch.zeros(1001))
        self.register_buffer("alpha_t", torch.zeros(1001))   # the cumulative product abar, as the author named it

    @property
    def schedule(self) -> VPDiscrete:
        """The VPDiscrete schedule of the stored alphas_cumprod (`alpha_t`), with model time n / 1000."""
        return VPDiscrete(alphas_cumprod=self.alpha_t.double(), model_time_scale=1.0 / 1000.0)

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The model's description for diffsolve: eps prediction, its schedule, shape (1, 28, 28), data in [-0.5, 0.5].
        """
        return ModelSpec(prediction="eps", schedule=self.schedule, sample_shape=(1, 28, 28), data_range=(-0.5, 0.5))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise prediction.

        Args:
            x: images, shape (batch, 1, 28, 28).
            t: the model time n / 1000, a scalar or one per image.

        Returns:
            eps, shaped like x.
        """
        return self.gt(x, t)


def load_mnist_ddpm(path: str | Path) -> MnistDDPM:
    """Load the shared MNIST DDPM from its safetensors file (strict key match, no pickle).

    Args:
        path: the safetensors file (in ../shared/models).

    Returns:
        The model in eval mode, without gradients.

    Raises:
        FileNotFoundError: no file at `path`.
        RuntimeError: the file's keys or shapes do not match (torch's load_state_dict).
    """
    from safetensors.torch import load_file
    model = MnistDDPM()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval().requires_grad_(False)
