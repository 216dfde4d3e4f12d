"""kernels.nonfinite: a 0-d device-side flag for NaN/inf that never misses one and never flags a finite tensor."""
from __future__ import annotations

import pytest
import torch

from diffsolve.kernels import nonfinite

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INF, NAN = float("inf"), float("nan")


def flag(t: torch.Tensor) -> bool:
    got = nonfinite(t)
    assert got.shape == () and got.dtype == torch.bool and got.device == t.device
    return bool(got)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("bad", [[NAN], [INF], [-INF], [INF, -INF], [NAN, INF, -INF]], ids=str)
@pytest.mark.parametrize("where", [0, 517, -1])
def test_flags_nan_and_infinities(dtype, bad, where):
    t = torch.randn(4, 7, 37, generator=torch.Generator().manual_seed(0)).to(dtype)
    flat = t.view(-1)
    for j, v in enumerate(bad):
        flat[(where + 131 * j) % flat.numel()] = v
    assert flag(t)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_largest_finite_values_are_not_flagged(dtype):
    big = torch.finfo(dtype).max
    t = torch.full((1000,), big, dtype=dtype)
    t[::2] = -big
    assert not flag(t)
    assert not flag(torch.full((1000,), big, dtype=dtype))     # a sum of these would overflow any float type
    assert not flag(torch.randn(3, 5).to(dtype))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_nan_among_huge_values(dtype):
    t = torch.full((999,), torch.finfo(dtype).max, dtype=dtype)
    t[400] = NAN
    assert flag(t)


def test_empty_and_single_element():
    assert not flag(torch.empty(0))
    assert not flag(torch.empty(3, 0, 2, dtype=torch.bfloat16))
    assert not flag(torch.tensor([2.5]))
    assert flag(torch.tensor([NAN]))
    assert flag(torch.tensor(-INF))            # 0-d


def test_non_contiguous_views():
    base = torch.randn(8, 9, 10)
    base[1, 2, 3] = NAN
    assert flag(base.transpose(0, 2))
    assert not flag(base[::2])                 # the NaN sits at an odd index the view skips
    assert flag(base[1::2, ::2, 1::2])
    cl = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    assert not flag(cl)
    cl[1, 2, 3, 4] = INF
    assert flag(cl)


def test_integer_tensors_are_finite_and_bad_arguments_are_named():
    assert not flag(torch.arange(10))
    assert not flag(torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="t must be a tensor"):
        nonfinite([1.0, NAN])


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_one_op_reads_the_tensor(dtype):
    # one pass: a float64 sum would first cast the whole tensor (aten::_to_copy), a second full-size pass
    t = torch.randn(64, 64).to(dtype)
    with torch.profiler.profile(record_shapes=True) as prof:
        nonfinite(t)
    full = [e.name for e in prof.events() if [64, 64] in e.input_shapes]
    assert full == ["aten::aminmax"], full
