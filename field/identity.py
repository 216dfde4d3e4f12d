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


FLOAT32 = torch.float32
REDUCED = (torch.float16, torch.bfloat16)

# Reduced-precision copies of networks hashed in float32 (or wider) in this process: (dtype, digest of the values
# rounded to dtype) -> the float32 digest. A half copy's values are a rounding of the float32 ones, which cannot
# be undone, so it is recognised by the rounding instead; a loader that converts a network hashes it first.
_ROUNDED: dict[tuple[torch.dtype, str], str] = {}
_ROUNDED_FROM: set[str] = set()


def _settings(module: torch.nn.Module) -> bytes:
    """The plain settings submodules hold outside the state_dict (a UNet's `skip_scales`)."""
    out = []
    for prefix, sub in module.named_modules():
        for attr, value in sorted(vars(sub).items()):
            # None is left out with tensors: a slot filled by a forward pass must not change the key.
            if attr.startswith("_") or attr == "training" or value is None or not _plain(value):
                continue
            out.append(f"{prefix}.{attr}={value!r};")
    return "".join(out).encode()


def _digest(module: torch.nn.Module, state: Mapping[str, Any], floats: torch.dtype) -> str:
    """sha256 of class name, settings and state_dict with every floating tensor cast to `floats`."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    h.update(_settings(module))
    for name in sorted(state):
        v = state[name]
        h.update(name.encode())
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().contiguous()
            v = v.to(floats) if v.is_floating_point() else v
            h.update(f"{v.dtype}{tuple(v.shape)}".encode())
            h.update((v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy().tobytes())
        else:
            h.update(repr(v).encode())
    return f"sha256:{h.hexdigest()}"


def state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's class name, its state_dict (names, shapes and bytes) and the plain settings its
    submodules hold outside it (a UNet's `skip_scales`), which change the output as surely as the weights.

    The digest does not depend on the dtype the network runs in, so that a learned correction trained on it
    still applies to its `.half()`, `.bfloat16()` or `.double()` copy. Floating values are hashed as float32
    (the reference: a float32 network's digest is its bytes' digest, and a float64 copy casts back bit for bit).
    A float16 or bfloat16 copy has lost the float32 bits; it gets the digest of the float32 network it was
    rounded from when that network was hashed in this process, else the digest of its values as float32.

    Args:
        module: the network.

    Returns:
        The hex sha256 digest.
    """
    state = module.state_dict()
    dtypes = {v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    reduced = [d for d in REDUCED if d in dtypes]
    if len(reduced) == 1:
        known = _ROUNDED.get((reduced[0], _digest(module, state, reduced[0])))
        if known is not None:
            return known
    digest = _digest(module, state, FLOAT32)
    if not reduced and digest not in _ROUNDED_FROM:       # the roundings' digests once per network
        _ROUNDED_FROM.add(digest)
        for d in REDUCED:
            _ROUNDED.setdefault((d, _digest(module, state, d)), digest)
    return digest


def model_identity(model: Any) -> str | None:
    """A stable identity of a network: its `identity()` when it has one, else a digest of an nn.Module's
    state_dict; None for callables that cannot be identified (they are never cached).

    Args:
        model: a network or callable.

    Returns:
        "<class name>:<identity or digest>", or None.
    """
    ident = getattr(model, "identity", None)
    if callable(ident):
        value = ident()
        return None if value is None else f"{type(model).__qualname__}:{value}"
    if isinstance(model, torch.nn.Module):
        return f"{type(model).__qualname__}:{state_dict_digest(model)}"
    return None


def identity_of_kwargs(kwargs: Mapping[str, Any]) -> str | None:
    """Model keyword arguments as a stable string: tensors by content hash; None if a value has no stable form.

    Args:
        kwargs: the model's keyword arguments.

    Returns:
        "key=value,..." sorted by key, or None.
    """
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
