"""A small EDM-preconditioned UNet for 1 x 28 x 28 images (Karras et al. 2022, "Elucidating the design space").

Choice of parameterization: EDM. The network F is wrapped as the denoiser
    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2), c_in = 1 / sqrt(sigma^2 + sd^2),
    c_noise = log(sigma) / 4, sd = sigma_data = 0.5,
so the model declares prediction='denoiser' with an EDMSchedule (alpha = 1, sigma = t): `VectorField` calls it as
`model(x, sigma)` and its output is already x0_hat. Data live in [-1, 1].

Hooks for training-free samplers: `skip_scales` (one factor rho_i per skip level, as in Skip-Tuning, Ma et al.
2024; or `skip_scale=` per call) multiplies the encoder features that each decoder level concatenates, and the
bottleneck feature (AMED-Solver, Zhou et al. 2024) is the output of the submodule `mid` (hook it with
`diffsolve.FeatureCapture(field, {"bottleneck": "mid"})`), and is also returned on `return_bottleneck=True`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffsolve.errors import InvalidArgument, check_int

from diffsolve.field import ModelSpec
from diffsolve.schedules import EDMSchedule

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class FourierEmbedding(nn.Module):
    """Sinusoidal features of the scalar noise level c_noise (transformer positional embedding).

    Args:
        dim: the number of features (dim // 2 frequencies, cosine and sine each).
        max_period: the longest period of the frequencies (default 100).
    """

    def __init__(self, dim: int, max_period: float = 100.0):
        super().__init__()
        self.half = dim // 2
        self.max_period = float(max_period)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """The features of noise levels `c` (one per sample), frequencies computed in float32.

        Returns:
            cos and sin features, (B, 2 * (dim // 2)), in c's dtype.
        """
        # Frequencies in float32 whatever the module's dtype (as EDM's PositionalEmbedding): a half-precision
        # copy would shift every feature of the noise level.
        k = torch.arange(self.half, device=c.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(self.max_period) * k / self.half).to(c.dtype)
        a = c.reshape(-1, 1) * freqs * 25.0   # c_noise spans about [-1.6, 1.1]: spread it out
        return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice with the time embedding added in between (DDPM/ADM residual block).

    Args:
        cin: input channels.
        cout: output channels (a 1x1 convolution matches the skip when they differ).
        emb_dim: the time embedding's width.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The block's output for features `x` (B, cin, H, W) and time embedding `emb` (B, emb_dim).

        Returns:
            Features (B, cout, H, W).
        """
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """EDM denoiser `model(x, sigma) -> x0_hat` for (B, 1, 28, 28) images in [-1, 1]; one resolution per entry of
    `channels` (28 -> 14 -> 7 -> 4 ...), `blocks_per_level` residual blocks per level, each block's output a skip.

    Args:
        channels: channels per resolution level (default (16, 32, 64)).
        emb_dim: the noise-level embedding's width (default 64).
        in_channels: image channels (default 1).
        sigma_data: sd in EDM's preconditioning (default SIGMA_DATA, 0.5).
        blocks_per_level: residual blocks per level, >= 1 (default 1).

    Raises:
        InvalidArgument: `blocks_per_level` is not an integer >= 1.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), emb_dim: int = 64, in_channels: int = 1,
                 sigma_data: float = SIGMA_DATA, blocks_per_level: int = 1):
        super().__init__()
        c = list(channels)
        self.channels = tuple(c)
        # Private: the weights' names already tell the layout, and the identity digest (plain attributes and
        # the state dict) must stay what it was before this option existed.
        self._blocks_per_level = check_int("blocks_per_level", blocks_per_level, minimum=1)
        self.sigma_data = float(sigma_data)
        self.in_channels = in_channels
        self.fourier = FourierEmbedding(32)
        self.time_mlp = nn.Sequential(nn.Linear(32, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim), nn.SiLU())
        self.conv_in = nn.Conv2d(in_channels, c[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = c[0]
        for i, ch in enumerate(c):
            for _ in range(self.blocks_per_level):
                self.enc.append(ResBlock(prev, ch, emb_dim))
                prev = ch
            if i < len(c) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(prev, prev, emb_dim)
        self.dec = nn.ModuleList()
        for i in reversed(range(len(c))):
            for _ in range(self.blocks_per_level):
                self.dec.append(ResBlock(prev + c[i], c[i], emb_dim))
                prev = c[i]
        self.norm_out = _norm(c[0])
        self.conv_out = nn.Conv2d(c[0], in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        # rho_i of Skip-Tuning, index 0 = the highest resolution; plain Python floats so nothing syncs in forward
        self.skip_scales: list[float] = [1.0] * len(c)

    @property
    def blocks_per_level(self) -> int:
        """Residual blocks per resolution level."""
        return self._blocks_per_level

    @property
    def num_skip_levels(self) -> int:
        """The number of skip levels (one per entry of `channels`), the length of `skip_scales`."""
        return len(self.channels)

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The model's description for diffsolve: a denoiser on EDM's schedule, (in_channels, 28, 28) in [-1, 1]."""
        return ModelSpec(prediction="denoiser", schedule=EDMSchedule(SIGMA_MIN, SIGMA_MAX),
                         sample_shape=(self.in_channels, 28, 28), data_range=(-1.0, 1.0))

    def raw(self, x: torch.Tensor, c_noise: torch.Tensor, skip_scale: Sequence[float] | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bare network F(c_in x, c_noise) and its bottleneck feature (B, C_last, 7, 7).

        Args:
            x: the preconditioned input c_in x, in the network's dtype.
            c_noise: the noise input, one per sample.
            skip_scale: one factor per skip level (index 0 the highest resolution); None: `skip_scales`.

        Returns:
            F's output and the bottleneck feature (the output of `mid`).

        Raises:
            InvalidArgument: `skip_scale` does not hold one factor per level.
        """
        scales = list(self.skip_scales if skip_scale is None else skip_scale)
        if len(scales) != len(self.channels):
            raise InvalidArgument(f"skip_scale needs {len(self.channels)} factors (one per level), got {len(scales)}")
        emb = self.time_mlp(self.fourier(c_noise).to(x.dtype))
        h = self.conv_in(x)
        b = self.blocks_per_level
        skips = []
        for j, block in enumerate(self.enc):
            h = block(h, emb)
            skips.append(h)
            level = j // b
            if j % b == b - 1 and level < len(self.down):
                h = self.down[level](h)
        h = self.mid(h, emb)
        bottleneck = h
        for j, block in enumerate(self.dec):
            level = len(self.channels) - 1 - j // b
            s = skips.pop()
            if scales[level] != 1.0:
                s = s * scales[level]
            if h.shape[-1] != s.shape[-1]:
                h = F.interpolate(h, size=s.shape[-2:], mode="nearest")
            h = block(torch.cat([h, s], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h))), bottleneck

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, *, skip_scale: Sequence[float] | None = None,
                return_bottleneck: bool = False):
        """EDM preconditioned denoiser D(x, sigma); sigma is a scalar or one value per sample.

        As EDM's Precond: the preconditioning runs in float32 (float64 for a float64 network), the inner network
        in its own dtype; the output comes back in the preconditioning dtype.

        Args:
            x: images, (B, in_channels, 28, 28).
            sigma: the noise level, a scalar or one per image (0 stays finite).
            skip_scale: one factor per skip level for this call; None: `skip_scales`.
            return_bottleneck: also return the bottleneck feature.

        Returns:
            (Tensor | tuple): x0_hat, or (x0_hat, bottleneck) with return_bottleneck=True.

        Raises:
            InvalidArgument: `skip_scale` does not hold one factor per level.
        """
        dtype = self.conv_in.weight.dtype
        pdtype = torch.float64 if dtype == torch.float64 else torch.float32
        x = x.to(pdtype)
        sigma = torch.as_tensor(sigma, dtype=pdtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        sd = self.sigma_data
        s = sigma.reshape(-1, 1, 1, 1)
        c_skip = sd * sd / (s * s + sd * sd)
        c_out = s * sd / torch.sqrt(s * s + sd * sd)
        c_in = 1.0 / torch.sqrt(s * s + sd * sd)
        c_noise = torch.log(sigma.clamp_min(1e-6)) / 4.0     # sigma = 0 (a final grid point) must stay finite
        f, bottleneck = self.raw((c_in * x).to(dtype), c_noise, skip_scale)
        out = c_skip * x + c_out * f.to(pdtype)
        return (out, bottleneck) if return_bottleneck else out
