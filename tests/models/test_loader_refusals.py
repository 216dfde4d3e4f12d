"""The built-in model loaders: dtype and device checked before the file is read; a missing, truncated or foreign
file raises InvalidArgument naming it (never a parser's or torch's error)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from diffsolve.errors import InvalidArgument
from diffsolve.models import load_mnist_consistency, load_mnist_unet
from diffsolve.models.builtin import WEIGHTS, load_mnist_unet_deep

LOADERS = [load_mnist_unet, load_mnist_unet_deep, load_mnist_consistency]


@pytest.mark.parametrize("load", LOADERS)
@pytest.mark.parametrize("dtype", ["int8", torch.int8, "float", None, 3, "nosuch"])
def test_a_dtype_that_is_not_a_float_is_refused_by_name(load, dtype):
    if dtype == "float":
        assert next(load(dtype=dtype).parameters()).dtype == torch.float32
        return
    with pytest.raises(InvalidArgument, match="dtype"):
        load(dtype=dtype)


@pytest.mark.parametrize("load", LOADERS)
def test_another_models_file_is_refused_naming_it(load):
    others = {"mnist_unet.safetensors", "mnist_unet_deep.safetensors", "mnist_consistency.safetensors"}
    for name in sorted(others):
        try:
            load(WEIGHTS / name)
        except InvalidArgument as e:
            assert name in str(e) and "another model" in str(e)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 5000), junk=st.binary(max_size=16))
def test_truncated_files_raise_our_error(tmp_path, cut, junk):
    blob = (WEIGHTS / "mnist_consistency.safetensors").read_bytes()
    path = tmp_path / "m.safetensors"
    path.write_bytes(blob[:cut] + junk)
    with pytest.raises(InvalidArgument, match="m.safetensors"):
        load_mnist_consistency(path)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(InvalidArgument, match="nope.safetensors.*missing"):
        load_mnist_consistency(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", ["load_moons_flow", "load_moons_shortcut"])
def test_toy_loaders_refuse_missing_and_foreign_files_naming_them(tmp_path, name):
    from diffsolve.models import toy2d
    load = getattr(toy2d, name)
    with pytest.raises(InvalidArgument, match="nope.safetensors.*missing"):
        load(path=tmp_path / "nope.safetensors")
    with pytest.raises(InvalidArgument, match="another model"):
        load(path=WEIGHTS / "mnist_consistency.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(InvalidArgument, match="cut.safetensors"):
        load(path=tmp_path / "cut.safetensors")


def test_feature_stats_from_a_truncated_file_raise_our_error(tmp_path):
    from diffsolve.models.builtin import load_feature_stats
    (tmp_path / "s.safetensors").write_bytes(b"junk")
    with pytest.raises(InvalidArgument, match="s.safetensors"):
        load_feature_stats(tmp_path / "s.safetensors")
