"""A small MNIST CNN classifier whose penultimate features give a Frechet distance (FD) and a confidence score.

The FD follows FID (Heusel et al. 2017) with this classifier in place of Inception: FD = |mu_a - mu_b|^2 +
tr(C_a + C_b - 2 (C_a C_b)^(1/2)) over 128-dimensional penultimate-layer features. Inputs are images in [-1, 1].
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

FEATURE_DIM = 128


class MnistClassifier(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc128(features)-fc10 on (B, 1, 28, 28) images in [-1, 1].

    Args:
        feature_dim: the width of the penultimate (feature) layer (default FEATURE_DIM, 128).
        width: the first convolutions' channels (default 32; the later ones have twice as many).
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, width: int = 32):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * w * 49, feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate-layer features of images `x` (B, 1, 28, 28) in [-1, 1].

        Returns:
            The features, shape (B, feature_dim).
        """
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits of images `x` (B, 1, 28, 28) in [-1, 1] (dropout on the features in training mode).

        Returns:
            The logits, shape (B, 10).
        """
        return self.head(self.dropout(self.body(x)))


@torch.no_grad()
def featurize(classifier: MnistClassifier, x: torch.Tensor, batch_size: int = 500
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128) float64, softmax probabilities (N, 10) float64) of images in [-1, 1].

    Args:
        classifier: the MnistClassifier (put in eval mode).
        x: the images, (N, 1, 28, 28).
        batch_size: images per forward pass (default 500).

    Returns:
        The features and the probabilities, both float64.
    """
    classifier.eval()
    feats, probs = [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].float()
        f = classifier.features(xb)
        feats.append(f.double())
        probs.append(torch.softmax(classifier.head(f), dim=1).double())
    return torch.cat(feats), torch.cat(probs)


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of (N, D) features in float64.

    Args:
        features: the features, (N, D) with N >= 2.

    Returns:
        The mean (D,) and the covariance (D, D).
    """
    f = features.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 sqrt(C1 C2)) (Dowson and Landau 1982; the FID formula).

    A product whose square root is not finite is regularized with 1e-6 on both diagonals, as the FID reference
    code does. Needs scipy.

    Args:
        mu1: the first feature mean.
        cov1: the first feature covariance.
        mu2: the second feature mean.
        cov2: the second feature covariance.

    Returns:
        The distance, a float.
    """
    from scipy import linalg
    m1, m2 = mu1.double().numpy(), mu2.double().numpy()
    c1, c2 = cov1.double().numpy(), cov2.double().numpy()
    with warnings.catch_warnings():
        # few samples make the product singular; that case is regularized just below, so scipy's warning adds nothing
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(c1 @ c2)
    if not np.isfinite(covmean).all():   # near-singular product: regularize as the FID reference code does
        off = np.eye(c1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((c1 + off) @ (c2 + off))
    covmean = np.real(covmean)
    return float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(covmean))
