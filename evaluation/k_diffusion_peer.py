"""k-diffusion's samplers without the rest of k-diffusion.

The k-diffusion package's __init__ imports torchvision, its training utilities and more, which diffsolve does not
install (they would pull another torch build). Its `sampling.py` needs only torch, scipy, torchdiffeq, torchsde,
tqdm and one helper from `k_diffusion.utils` (`append_dims`), so it is loaded on its own, as a submodule of a
private stand-in package whose `utils` holds that helper. The installed k-diffusion's package is never imported.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

from diffsolve.errors import DiffsolveError

_PACKAGE = "_diffsolve_k_diffusion"     # the stand-in package; never 'k_diffusion', so the real one stays unloaded


class KDiffusionMissing(DiffsolveError, ImportError):
    """k-diffusion is not installed; the message names the package and how to install it."""


def _append_dims(x, target_dims):
    """Appends dimensions to the end of a tensor until it has target_dims dimensions (as k_diffusion.utils)."""
    dims_to_append = target_dims - x.ndim
    if dims_to_append < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * dims_to_append]


@functools.lru_cache(maxsize=None)
def load_k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's `sampling` module (sample_euler, sample_dpmpp_2m, get_sigmas_karras, ...).

    Loaded once (cached) under a stand-in package name, so the real `k_diffusion` package stays unloaded.

    Returns:
        The module.

    Raises:
        KDiffusionMissing: k-diffusion is not installed (the message names the package and how to install it).
    """
    spec = importlib.util.find_spec("k_diffusion")      # locates the package without running its __init__
    path = Path(next(iter(spec.submodule_search_locations or ())), "sampling.py") if spec else None
    if path is None or not path.is_file():
        raise KDiffusionMissing("the k-diffusion package is not installed (it is a comparison peer only): "
                                "pip install --no-deps k-diffusion==0.1.1.post1")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = []
    utils = types.ModuleType(f"{_PACKAGE}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.setdefault(_PACKAGE, package)
    sys.modules.setdefault(f"{_PACKAGE}.utils", utils)
    mod_spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.sampling", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module
    try:
        mod_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_spec.name]
        raise
    return module
