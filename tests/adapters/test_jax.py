"""JAX networks through DLPack: a small JAX MLP and its torch twin (same weights) give the same samples.

Skipped when jax is not installed (it is an optional extra, `diffsolve[jax]`, not in the Makefile's EXTRAS: jaxlib
is ~350 MB installed).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
jnp = jax.numpy

from diffsolve import Sampler  # noqa: E402
from diffsolve.pretrained_adapters.jax_models import from_jax  # noqa: E402

rng = np.random.default_rng(0)
W1 = rng.standard_normal((17, 32)).astype(np.float32) * 0.3
W2 = rng.standard_normal((32, 16)).astype(np.float32) * 0.3


def jax_eps(x, t):
    flat = x.reshape(x.shape[0], -1)
    h = jnp.tanh(jnp.concatenate([flat, (t / 1000.0)[:, None]], axis=1) @ W1)
    return (h @ W2).reshape(x.shape)


def torch_eps(x, t):
    flat = x.reshape(x.shape[0], -1)
    h = torch.tanh(torch.cat([flat, (t / 1000.0)[:, None]], dim=1) @ torch.from_numpy(W1))
    return (h @ torch.from_numpy(W2)).reshape(x.shape)


def params_eps(params, x, t):
    flat = x.reshape(x.shape[0], -1)
    h = jnp.tanh(jnp.concatenate([flat, (t / 1000.0)[:, None]], axis=1) @ params["w1"])
    return (h @ params["w2"]).reshape(x.shape)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun"])
def test_jax_model_equals_torch_twin(solver):
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = Sampler(torch_eps, solver, prediction="eps", schedule="vp_linear", progress=False).run(6, noise=noise)
    got = Sampler(from_jax(jax_eps, "eps", "vp_linear"), solver, progress=False).run(6, noise=noise)
    err = float((got.samples - ref.samples).norm() / ref.samples.norm())
    assert err < 1e-5, f"relative difference {err:.3g}"
    # a jitted function is detected by Sampler(model), and params-style (Flax apply) functions take params=
    det = Sampler(jax.jit(jax_eps), solver, prediction="eps", schedule="vp_linear", progress=False).run(6, noise=noise)
    assert torch.allclose(det.samples, got.samples, rtol=1e-6, atol=1e-6)
    par = Sampler(from_jax(params_eps, "eps", "vp_linear", params={"w1": jnp.asarray(W1), "w2": jnp.asarray(W2)}),
                  solver, progress=False).run(6, noise=noise)
    assert torch.allclose(par.samples, got.samples, rtol=1e-6, atol=1e-6)
