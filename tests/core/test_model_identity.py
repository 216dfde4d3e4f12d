"""A network's identity (the key learned corrections and reference caches match) is a property of its values,
not of the dtype it happens to run in."""
import subprocess
import sys
import warnings

import pytest
import torch

from diffsolve import Sampler
from diffsolve.field import VectorField, model_identity, state_dict_digest
from diffsolve.models import load_mnist_unet

# The built-in UNet's identity as shipped correction files record it: it must never change.
MNIST_UNET_DIGEST = "sha256:7894b3e4aed2f18147f507f09de0df8bfff7be0b4faf9372ecb822c727e6aa2b"


def test_the_float32_identity_is_the_shipped_one():
    net = load_mnist_unet()
    assert state_dict_digest(net) == MNIST_UNET_DIGEST
    assert model_identity(net) == f"UNet:{MNIST_UNET_DIGEST}"


def test_half_bfloat16_and_double_copies_keep_the_identity():
    net = load_mnist_unet()
    # float16 and bfloat16 copies have lost the float32 bits: they are known by the rounding of a network
    # hashed in float32 in this process (the shipped one here)
    base = VectorField(net).identity()
    for copy in (load_mnist_unet().half(), load_mnist_unet().bfloat16(), load_mnist_unet().double(),
                 load_mnist_unet(dtype=torch.float16)):
        assert model_identity(copy) == f"UNet:{MNIST_UNET_DIGEST}"
        assert VectorField(copy).identity() == base


def test_a_different_network_has_a_different_identity():
    net = load_mnist_unet()
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    assert state_dict_digest(net) != MNIST_UNET_DIGEST
    assert state_dict_digest(net.half()) != MNIST_UNET_DIGEST     # nor is its rounding the shipped net's
    other = load_mnist_unet().double()
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3      # a change float32 can hold, made in float64
    assert state_dict_digest(other) != MNIST_UNET_DIGEST
    ints = torch.nn.Linear(2, 2)
    ints.register_buffer("count", torch.tensor([1, 2]))
    before = state_dict_digest(ints)
    ints.count += 1                                      # integer buffers are hashed as they are
    assert state_dict_digest(ints) != before


@pytest.mark.parametrize("convert", ["half", "bfloat16", "double"])
def test_a_shipped_correction_applies_to_a_converted_copy(convert):
    state_dict_digest(load_mnist_unet())          # as a loader does: the float32 network is hashed first
    net = getattr(load_mnist_unet(), convert)()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*untrained.*")
        out = Sampler(net, "amed_plugin", progress=False).run(nfe=5, batch_size=1, seed=0, dtype=torch.float32)
    assert torch.isfinite(out.samples).all()


@pytest.mark.slow
def test_a_fresh_process_loading_a_half_copy_finds_the_shipped_correction():
    """The loaders hash the float32 network before converting it, so `load_mnist_unet(dtype=float16)` in a new
    process keeps the identity its corrections ship under (no "untrained" warning)."""
    import subprocess
    import sys
    code = ("import warnings, torch\nwarnings.simplefilter('error')\nfrom diffsolve import Sampler\n"
            "from diffsolve.models import load_mnist_unet\n"
            "m = load_mnist_unet(dtype=torch.float16)\n"
            "print(Sampler(m, 'amed_plugin', base='ipndm', progress=False).run(nfe=5, batch_size=1, seed=0).nfe)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "5", out.stderr[-2000:]
