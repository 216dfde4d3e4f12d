"""Tuning on a flow's own source: the shipped moons flow from the eight-Gaussians source names it in its spec, so
the Sampler and the teacher draw their starts from it, and a learned grid trained on those starts beats the best
plain solver at NFE 4 on held-out seeds, where the same training on N(0, I) starts (all a tuner could draw before
sources existed) falls short."""
from __future__ import annotations

import pytest
import torch

from conftest import HELD_OUT
from diffsolve import Sampler
from diffsolve.corrections import learn_grid
from diffsolve.corrections.teacher import noise_for
from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
from diffsolve.field import VectorField
from diffsolve.models.toy2d import eight_gaussians, load_moons_8gaussians
from diffsolve.noise import draw_noise, draw_start

# dopri5 at 1e-7 in float64: far below the errors compared (>= 0.5)
SETTINGS = ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7)
PLAIN = ("euler", "heun", "midpoint", "rk4", "ipndm", "ipndm_v")


def rmse(x, ref):
    return float((x - ref).pow(2).sum(1).mean().sqrt())


@pytest.fixture(scope="module")
def flow():
    model = load_moons_8gaussians()
    field = Sampler(model, progress=False).field
    starts = draw_start((len(HELD_OUT), 2), source=eight_gaussians(), seed=HELD_OUT)
    return model, field, starts


def test_the_shipped_flow_draws_from_its_own_source(flow):
    model, field, starts = flow
    assert isinstance(field.source, torch.distributions.MixtureSameFamily)
    assert torch.equal(noise_for(field, HELD_OUT), starts)
    smp = Sampler(model, "euler", progress=False)
    assert torch.equal(smp.run(steps=2, seed=HELD_OUT).samples, smp.run(steps=2, noise=starts).samples)
    # the eight modes on the circle of radius 5, not N(0, I)
    assert torch.allclose(starts.norm(dim=1).median(), torch.tensor(5.0), atol=0.3)
    assert not torch.equal(starts, draw_noise(starts.shape, seed=HELD_OUT))


@pytest.mark.slow
def test_a_grid_learned_on_the_source_beats_the_best_plain_solver_and_one_learned_on_normal_starts(flow):
    model, field, starts = flow
    ref = solve_reference(field, starts, [1.0, 0.0], seeds=HELD_OUT, settings=SETTINGS).endpoint.float()
    best = min(rmse(Sampler(field, s, progress=False).run(nfe=4, noise=starts).samples, ref) for s in PLAIN)
    normal = VectorField(model, source=lambda n, g: torch.randn(n, 2, generator=g))
    errors = {}
    for name, f in (("source", field), ("normal", normal)):
        g = learn_grid(f, base="ipndm", nfe=(4,), n=64, batch_size=16, epochs=20, lr=0.1, log=None,
                       teacher_options={"settings": SETTINGS})
        errors[name] = rmse(Sampler(field, "ipndm", grid=g.grid(4), progress=False).run(nfe=4, noise=starts).samples,
                            ref)
    # measured: best plain (midpoint) 0.95; learned on the source 0.70 (0.74x), on N(0, I) starts 0.87 (0.92x)
    assert errors["source"] < 0.85 * best, (errors, best)
    assert errors["source"] < 0.9 * errors["normal"], (errors, best)
