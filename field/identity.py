"""Stable identities of networks and their keyword arguments (the keys of reference caches and of learned
corrections): digests of state_dicts and tensors, never object addresses."""
from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch


def _plain(value: Any) -> bool:
    """Plain data whose repr is a faithful, stable description (no addresses, no tensors)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's class name, its state_dict (names, dtypes, shapes and bytes) and the plain settings
    its submodules hold outside it (a UNet's `skip_scales`), which change the output as surely as the weights."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for prefix, sub in module.named_modules():
        for attr, value in sorted(vars(sub).items()):
            # None is left out with tensors: a slot filled by a forward pass must not change the key.
            if attr.startswith("_") or attr == "training" or value is None or not _plain(value):
                continue
            h.update(f"{prefix}.{attr}={value!r};".encode())
    state = module.state_dict()
    for name in sorted(state):
        v = state[name]
        h.update(name.encode())
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().contiguous()
            h.update(f"{v.dtype}{tuple(v.shape)}".encode())
            h.update((v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy().tobytes())
        else:
            h.update(repr(v).encode())
    return f"sha256:{h.hexdigest()}"


def model_identity(model: Any) -> str | None:
    """A stable identity of a network: its `identity()` when it has one, else a digest of an nn.Module's
    state_dict; None for callables that cannot be identified (they are never cached)."""
    ident = getattr(model, "identity", None)
    if callable(ident):
        value = ident()
        return None if value is None else f"{type(model).__qualname__}:{value}"
    if isinstance(model, torch.nn.Module):
        return f"{type(model).__qualname__}:{state_dict_digest(model)}"
    return None


def identity_of_kwargs(kwargs: Mapping[str, Any]) -> str | None:
    """Model keyword arguments as a stable string: tensors by content hash; None if a value has no stable form."""
    parts = []
    for k in sorted(kwargs):
        v = kwargs[k]
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            t = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            v = f"tensor:{t.dtype}{tuple(t.shape)}:{hashlib.sha256(t.numpy().tobytes()).hexdigest()}"
        elif not isinstance(v, (int, float, str, bool, type(None), tuple)):
            return None
        parts.append(f"{k}={v!r}")
    return ",".join(parts)
