"""A field's source distribution: checked once (bad sources refused naming source=), drawn per seed and batch
invariant, without touching torch's global random state; None keeps the standard-normal draw bit for bit; the
Sampler, the teacher's draws and the field identity all follow the source."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from diffsolve import InvalidArgument, Sampler
from diffsolve.corrections.teacher import noise_for
from diffsolve.field import (ClassifierFreeGuidance, ModelSpec, VectorField, as_field, model_spec_of, source_identity,
                             with_source)
from diffsolve.noise import draw_noise, draw_start


def mixture(shift: float = 3.0) -> MixtureSameFamily:
    centres = torch.tensor([[shift, 0.0], [-shift, 0.0]])
    return MixtureSameFamily(Categorical(probs=torch.tensor([0.5, 0.5])),
                             Independent(Normal(centres, torch.full((2, 2), 0.1)), 1))


def shifted(n: int, generator: torch.Generator) -> torch.Tensor:
    return 10.0 + torch.randn(n, 2, generator=generator)


def velocity(x, t):
    return -x


def flow(source=None) -> VectorField:
    return VectorField(velocity, prediction="velocity", sample_shape=(2,), time_convention="flow", source=source)


SOURCES = [mixture(), shifted]


def test_default_draw_is_the_standard_normal_bit_for_bit():
    for seed in (5, [1, 2, 3]):
        assert torch.equal(draw_start((3, 2), seed=seed), draw_noise((3, 2), seed=seed))
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(draw_start((3, 4), generator=g1), draw_noise((3, 4), generator=g2))
    f = flow()
    assert f.source is None
    assert torch.equal(noise_for(f, [7, 8]), draw_noise((2, 2), seed=[7, 8]))


@pytest.mark.parametrize("source", SOURCES, ids=["distribution", "callable"])
def test_per_sample_seeds_are_batch_invariant_and_leave_the_global_rng(source):
    state = torch.get_rng_state()
    batch = draw_start((4, 2), source=source, seed=[11, 12, 13, 14])
    alone = draw_start((1, 2), source=source, seed=[13])
    assert torch.equal(batch[2], alone[0])
    assert torch.equal(draw_start((2, 2), source=source, seed=3), draw_start((2, 2), source=source, seed=3))
    assert torch.equal(torch.get_rng_state(), state)          # seeded draws leave the user's generator alone
    assert not torch.equal(batch[0], batch[1])
    # a generator draws the whole batch from itself: reproducible, and the global state untouched too
    a = draw_start((3, 2), source=source, generator=torch.Generator().manual_seed(9))
    b = draw_start((3, 2), source=source, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_draws_follow_the_source_not_the_normal():
    x = draw_start((400, 2), source=mixture(), seed=list(range(400)))
    assert torch.allclose(x[:, 0].abs(), torch.full((400,), 3.0), atol=0.5)     # both modes at +-3, none near 0
    assert float((x[:, 0] > 0).float().mean()) == pytest.approx(0.5, abs=0.1)
    y = draw_start((400, 2), source=shifted, seed=0, dtype=torch.float64)
    assert y.dtype == torch.float64 and float(y.mean()) == pytest.approx(10.0, abs=0.2)


@pytest.mark.parametrize("source", SOURCES, ids=["distribution", "callable"])
def test_sampler_and_teacher_draw_from_the_field_source(source):
    f = flow(source)
    seeds = [21, 22, 23]
    starts = draw_start((3, 2), source=source, seed=seeds)
    assert torch.equal(noise_for(f, seeds), starts)
    smp = Sampler(f, "euler", progress=False)
    assert torch.equal(smp.run(steps=3, seed=seeds).samples, smp.run(steps=3, noise=starts).samples)
    # the same through a wrapper, and from the model's spec
    assert ClassifierFreeGuidance(f, 1.0, {}).source is source
    model = lambda x, t: -x                                                   # noqa: E731
    model.diffsolve_spec = ModelSpec("velocity", None, (2,), "flow", source=source)
    assert torch.equal(noise_for(as_field(model), seeds), starts)


def test_with_source_copies_the_field_and_sets_its_source():
    f = flow()
    g = with_source(f, shifted)
    assert f.source is None and g.source is shifted
    wrapped = with_source(ClassifierFreeGuidance(f, 1.0, {}), mixture())
    assert isinstance(wrapped, ClassifierFreeGuidance) and wrapped.inner is not f
    assert isinstance(wrapped.source, MixtureSameFamily) and f.source is None
    model = lambda x, t: -x                                                   # noqa: E731
    model.diffsolve_spec = ModelSpec("velocity", None, (2,), "flow")
    assert with_source(model, shifted).source is shifted                      # a bare network: its VectorField
    assert model_spec_of(model).source is None


def test_identity_names_the_source():
    model = torch.nn.Linear(2, 2)
    plain = VectorField(model, prediction="velocity")
    a = VectorField(model, prediction="velocity", source=mixture())
    b = VectorField(model, prediction="velocity", source=mixture())             # equal parameters: same key
    c = VectorField(model, prediction="velocity", source=mixture(2.0))
    assert a.identity() == b.identity() != c.identity()
    assert "source" not in plain.identity() and "source=" in a.identity()
    assert VectorField(model, prediction="velocity", source=shifted).identity() is None    # unknown: never cached
    named = lambda n, g: torch.randn(n, 2, generator=g)                      # noqa: E731
    named.identity = "randn2"
    assert VectorField(model, prediction="velocity", source=named).identity().endswith("source=callable:randn2)")
    assert source_identity(None) == "normal"


def test_sample_shape_comes_from_the_source():
    assert VectorField(velocity, prediction="velocity", source=mixture()).sample_shape == (2,)


@pytest.mark.parametrize("source, words", [
    ("normal", "source='normal'"),
    (3.0, "source=3.0"),
    (lambda n: torch.zeros(n, 2), "failed to draw"),
    (lambda n, g: torch.zeros(n, 3), "shape (2, 3)"),
    (lambda n, g: torch.zeros(1, 2), "shape (1, 2)"),
    (lambda n, g: torch.zeros(n, 2, dtype=torch.int64), "dtype torch.int64"),
    (lambda n, g: [[0.0, 0.0]] * n, "returned list"),
    (lambda n, g: torch.full((n, 2), float("nan")), "NaN or Inf"),
])
def test_bad_sources_are_refused_naming_the_argument(source, words):
    with pytest.raises(InvalidArgument, match="source=") as e:
        flow(source)
    assert words in str(e.value)
    assert "callable source(n, generator)" in str(e.value) or "shape" in str(e.value)


def test_a_source_on_a_gaussian_path_is_refused():
    with pytest.raises(InvalidArgument, match="source=.*plain velocity field.*N\\(0, prior_std"):
        VectorField(lambda x, t: x, prediction="eps", schedule="vp_linear", sample_shape=(2,), source=mixture())
    with pytest.raises(InvalidArgument, match="plain velocity field"):
        with_source(VectorField(lambda x, t: x, prediction="eps", schedule="vp_linear", sample_shape=(2,)), shifted)


def test_a_source_of_another_shape_on_a_draw_is_refused():
    def fixed(n, g):
        return torch.zeros(2, 2)            # right for the probe (n = 2), wrong for any other n
    f = flow(fixed)
    with pytest.raises(InvalidArgument, match="drew shape \\(2, 2\\) where \\(3, 2\\) was asked for"):
        Sampler(f, "euler", progress=False).run(steps=2, seed=0, batch_size=3)
