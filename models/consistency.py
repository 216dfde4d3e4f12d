"""A consistency model on 1 x 28 x 28 MNIST digits (Song et al. 2023, "Consistency Models"), distilled from the UNet.

The network F is the built-in `UNet`'s (same architecture, initialized from the teacher's weights); the output is
the consistency function in its boundary parameterization (Song et al. 2023, Sec. 3 and App. C, EDM-style):
    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_skip = sd^2 / ((sigma - eps)^2 + sd^2), c_out = sd (sigma - eps) / sqrt(sd^2 + sigma^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4, eps = 0.002, sd = 0.5,
so f(x, eps) = x exactly. It declares prediction='denoiser' (f is a data prediction) and solver='consistency', so
`Sampler(load_mnist_consistency()).run(steps=1)` is one call f(x_T, 80).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from diffsolve.field import ModelSpec
from diffsolve.schedules import EDMSchedule
from diffsolve.models.unet import SIGMA_DATA, SIGMA_MAX, SIGMA_MIN, UNet


class ConsistencyUNet(nn.Module):
    """Consistency function f(x, sigma) with f(x, eps) = x (Song et al. 2023), the network F an MNIST `UNet`.

    Args:
        channels: the UNet's channels per level (default (16, 32, 64)).
        emb_dim: the UNet's noise-embedding width (default 64).
        in_channels: image channels (default 1).
        sigma_data: sd, the data's standard deviation (default SIGMA_DATA, 0.5).
        sigma_min: eps, the noise level where f is the identity (default SIGMA_MIN, 0.002).
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), emb_dim: int = 64, in_channels: int = 1,
                 sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
        super().__init__()
        # The UNet's own EDM preconditioning is bypassed (only `raw` is used), so its weights load unchanged.
        self.net = UNet(channels, emb_dim, in_channels, sigma_data)
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.in_channels = in_channels

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The model's description for diffsolve: a denoiser on EDM's schedule, (in_channels, 28, 28) in [-1, 1],
        sampled by the "consistency" solver.
        """
        return ModelSpec(prediction="denoiser", schedule=EDMSchedule(SIGMA_MIN, SIGMA_MAX),
                         sample_shape=(self.in_channels, 28, 28), data_range=(-1.0, 1.0), solver="consistency")

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """f(x, sigma) for a scalar sigma or one per sample (sigma >= eps), in the preconditioning dtype.

        Args:
            x: images, (B, in_channels, 28, 28).
            sigma: the noise level, a scalar or one per image.

        Returns:
            The data prediction f(x, sigma), in float32 (float64 when the network is float64).
        """
        # As UNet.forward (EDM's Precond): the coefficients in float32 or better, the network in its own dtype.
        dtype = self.net.conv_in.weight.dtype
        pdtype = torch.float64 if dtype == torch.float64 else torch.float32
        x = x.to(pdtype)
        sigma = torch.as_tensor(sigma, dtype=pdtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        sd, eps = self.sigma_data, self.sigma_min
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip = sd * sd / ((s - eps) ** 2 + sd * sd)
        c_out = sd * (s - eps) / torch.sqrt(sd * sd + s * s)
        c_in = 1.0 / torch.sqrt(s * s + sd * sd)
        c_noise = torch.log(sigma.clamp_min(1e-6)) / 4.0
        f, _ = self.net.raw((c_in * x).to(dtype), c_noise)
        return c_skip * x + c_out * f.to(pdtype)
