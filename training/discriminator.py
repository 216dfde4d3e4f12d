"""A small spectral-normalized convolutional discriminator for 1 x 28 x 28 images (Miyato et al. 2018).

It is the critic of the consistency model's adversarial stage (hinge loss, as CTM, Kim et al. 2023, adds a GAN
term to consistency distillation); it only trains there and never ships.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Discriminator(nn.Module):
    """Real/fake score of 28 x 28 images: three strided convolutions and a linear head, all spectral-normalized.

    Args:
        in_channels: image channels (default 1).
        width: the first convolution's channels (default 32; then twice and four times as many).
    """

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(in_channels, w, 4, 2, 1)), nn.LeakyReLU(0.2),       # 14 x 14
            spectral_norm(nn.Conv2d(w, 2 * w, 4, 2, 1)), nn.LeakyReLU(0.2),             # 7 x 7
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 3, 2, 1)), nn.LeakyReLU(0.2),         # 4 x 4
            nn.Flatten(), spectral_norm(nn.Linear(4 * w * 16, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The score of each image in `x` (B, in_channels, 28, 28); higher means more real.

        Returns:
            One score per image, (B,).
        """
        return self.net(x).squeeze(1)
