"""Adapters that turn models from other frameworks into diffsolve fields (and diffsolve solvers into theirs).

Importing the package registers the adapters with the core: the diffusers scheduler adapter
(`sampler.register_scheduler_adapter`), and the k-diffusion / EDM and JAX model adapters
(`field.register_model_adapter`). The frameworks themselves (diffusers, k-diffusion, jax) stay optional.
"""
from diffsolve.pretrained_adapters import diffusers, jax_models, k_diffusion  # noqa: F401  (registration)
from diffsolve.pretrained_adapters.mnist_ddpm import load_mnist_ddpm
from diffsolve.pretrained_adapters.torchcfm import load_torchcfm_mlp

__all__ = ["load_mnist_ddpm", "load_torchcfm_mlp"]
