"""Initial noise and the counter-based step noise: reproducible, batch invariant, standard normal."""
from __future__ import annotations

import pytest
import torch

from diffsolve.errors import InvalidArgument
from diffsolve.noise import NoiseSource, draw_noise


def test_draw_noise_seed_list_rows_are_independent_of_the_batch():
    batch = draw_noise((5, 3), seed=[11, 12, 13, 14, 15])
    alone = draw_noise((1, 3), seed=[13])
    assert torch.equal(batch[2], alone[0])
    assert torch.equal(draw_noise((4, 2), seed=3), draw_noise((4, 2), seed=3))
    with pytest.raises(InvalidArgument):
        draw_noise((2, 3), seed=[1, 2, 3])
    with pytest.raises(InvalidArgument):
        draw_noise((2, 3), seed=1, generator=torch.Generator())


def test_step_noise_depends_on_seed_and_step_only():
    seeds = [101, 7, 2 ** 40 + 3, -5, 0, 9, 33, 4]
    big = NoiseSource.for_run((8, 3, 5), seed=seeds)
    for k in (0, 2, 3):
        alone = NoiseSource.for_run((1, 3, 5), seed=[seeds[k]])
        for i, j in ((0, 0), (7, 1), (123, 4)):
            assert torch.equal(big.draw(i, j)[k], alone.draw(i, j)[0])
    # Calling order and repeated calls do not matter.
    a = big.draw(5, 0)
    big.draw(6, 0)
    assert torch.equal(big.draw(5, 0), a)
    # Steps, draws and samples get different numbers.
    assert not torch.equal(big.draw(5, 0), big.draw(6, 0))
    assert not torch.equal(big.draw(5, 0), big.draw(5, 1))
    assert not torch.equal(a[0], a[1])
    # A subset keeps each sample's numbers.
    assert torch.equal(big.subset([6, 1]).draw(2, 3), big.draw(2, 3)[[6, 1]])


def test_one_seed_is_reproducible_and_prefix_stable():
    a = NoiseSource.for_run((6, 4), seed=5).draw(3, 0)
    b = NoiseSource.for_run((9, 4), seed=5).draw(3, 0)
    assert torch.equal(a, b[:6])            # sample b of a one-seed batch is keyed by (seed, b)
    assert not torch.equal(a, NoiseSource.for_run((6, 4), seed=6).draw(3, 0))


def test_generator_and_global_rng_give_reproducible_sources():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    s1 = NoiseSource.for_run((3, 2), generator=g1)
    s2 = NoiseSource.for_run((3, 2), generator=g2)
    assert torch.equal(s1.draw(1, 0), s2.draw(1, 0))
    torch.manual_seed(123)
    u = NoiseSource.for_run((3, 2)).draw(0, 0)
    torch.manual_seed(123)
    assert torch.equal(u, NoiseSource.for_run((3, 2)).draw(0, 0))
    with pytest.raises(InvalidArgument):
        NoiseSource.for_run((3, 2), seed=[1, 2])


def test_step_noise_is_standard_normal():
    z = NoiseSource.for_run((50_000, 4), seed=17).draw(2, 1).double()
    n = z.numel()
    se = (1.0 / n) ** 0.5
    assert abs(float(z.mean())) < 5 * se
    assert abs(float(z.var()) - 1.0) < 5 * (2.0 / n) ** 0.5
    assert abs(float((z ** 4).mean()) - 3.0) < 5 * (96.0 / n) ** 0.5          # Var(z^4) = 105 - 9
    c = torch.corrcoef(z.T) - torch.eye(4, dtype=z.dtype)
    assert float(c.abs().max()) < 5 / (z.shape[0] ** 0.5)
    # Consecutive steps of the same samples are uncorrelated.
    z2 = NoiseSource.for_run((50_000, 4), seed=17).draw(3, 1).double()
    assert abs(float((z * z2).mean())) < 5 * se
    # Kolmogorov-Smirnov distance to N(0, 1).
    from scipy import stats
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-4


def test_dtype_and_shape():
    s = NoiseSource.for_run((2, 3, 4, 4), seed=[1, 2], dtype=torch.float64)
    z = s.draw(0, 0)
    assert z.shape == (2, 3, 4, 4) and z.dtype == torch.float64 and torch.isfinite(z).all()
