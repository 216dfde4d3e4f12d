"""Adapters that turn models from other frameworks into diffsolve fields (and diffsolve solvers into theirs)."""
from diffsolve.pretrained_adapters.mnist_ddpm import load_mnist_ddpm
from diffsolve.pretrained_adapters.torchcfm import load_torchcfm_mlp

__all__ = ["load_mnist_ddpm", "load_torchcfm_mlp"]
from diffsolve.pretrained_adapters import diffusers  # noqa: E402,F401  (imports the diffusers library lazily, so it stays optional)
from diffsolve.pretrained_adapters import k_diffusion  # noqa: E402,F401  (registers the k-diffusion / EDM model adapter)
from diffsolve.pretrained_adapters import jax_models  # noqa: E402,F401  (registers the JAX model adapter; jax is imported only when used)
