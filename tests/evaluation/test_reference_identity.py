"""Reference cache identity: fields that give different answers never share an entry, unidentifiable fields are
solved but not cached, and a guided field can be solved at all."""
from __future__ import annotations

import pytest
import torch

from diffsolve import ClassifierFreeGuidance, CustomSchedule, Sampler, VectorField, VPDiscrete
from diffsolve.evaluation import reference as reference_module
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.evaluation.reference import ReferenceSettings, field_identity, reference_key, solve_reference
from diffsolve.models.unet import UNet
from diffsolve.noise import draw_noise

CHEAP = ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6)


class _CondEps(torch.nn.Module):
    """The exact eps of N(0, I) data plus a small nonlinear term, and a label that shifts it (None: unconditional)."""

    def __init__(self):
        super().__init__()
        self.schedule = VPDiscrete.linear()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", 0.3 * torch.randn(4, 4, generator=g))
        self.register_buffer("shift", 0.3 * torch.randn(4, generator=g))

    def forward(self, x, t_model, label=None):
        sigma = self.schedule.sigma(self.schedule.t_from_model_time(t_model)).to(x.dtype)[:, None]
        out = sigma * (x + 0.2 * torch.tanh(x @ self.w.to(x.dtype)))
        return out if label is None else out + sigma * self.shift.to(x.dtype)


def _guided(scale: float) -> ClassifierFreeGuidance:
    inner = VectorField(_CondEps(), prediction="eps", schedule=VPDiscrete.linear(), sample_shape=(4,),
                        model_kwargs={"label": 1})
    return ClassifierFreeGuidance(inner, scale, {"label": None})


def _times(field, n=4) -> torch.Tensor:
    return Sampler(field, "euler", progress=False).times(n)


def _entries(folder) -> list:
    return list((folder / "reference").glob("*.safetensors")) if (folder / "reference").is_dir() else []


@pytest.mark.slow
def test_guided_field_reference_solve_works_and_follows_the_scale(tmp_path):
    noise = draw_noise((6, 4), seed=0, dtype=torch.float32)
    f1, f3 = _guided(1.0), _guided(3.0)
    t = _times(f1)
    a = solve_reference(f1, noise, t, cache_dir=tmp_path, settings=CHEAP)
    b = solve_reference(f3, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert torch.isfinite(a.states).all() and not torch.allclose(a.states, b.states)
    # Scale 1 is the conditional model alone: the same answer as the unguided conditional field.
    plain = solve_reference(f1.inner, noise, t, cache=False, settings=CHEAP)
    assert torch.allclose(a.states, plain.states, atol=1e-6)
    # The reference agrees with a fine fixed-step solve of the same guided field (endpoint values about 5).
    fine = Sampler(f3, "dpmpp_3m", progress=False).run(steps=400, noise=noise.double()).samples
    assert (b.endpoint - fine).abs().max() < 1e-3      # fine is first order at its last step: 5e-4 here
    assert b.nfe % 2 == 0                                   # two model calls per slope
    # The caller's model stays float32.
    assert f3.model.w.dtype == torch.float32 and f3.inner.model.w.dtype == torch.float32


@pytest.mark.slow
def test_guidance_scales_do_not_share_a_cache_entry(tmp_path):
    noise = draw_noise((4, 4), seed=1, dtype=torch.float32)
    t = _times(_guided(1.0))
    keys = {reference_key(_guided(s), noise, t, CHEAP)[0] for s in (1.0, 2.0, 2.5)}
    assert len(keys) == 3 and None not in keys
    # The unconditional branch's arguments count too.
    other = _guided(2.0)
    other.uncond_kwargs = {"label": 0}
    assert reference_key(other, noise, t, CHEAP)[0] not in keys
    a = solve_reference(_guided(1.0), noise, t, cache_dir=tmp_path, settings=CHEAP)
    b = solve_reference(_guided(2.0), noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not b.cached and not torch.equal(a.states, b.states)
    assert len(_entries(tmp_path)) == 2
    assert solve_reference(_guided(2.0), noise, t, cache_dir=tmp_path, settings=CHEAP).cached


def _vp_custom(beta_max: float) -> CustomSchedule:
    def log_alpha(t):
        return -0.25 * t * t * (beta_max - 0.1) - 0.5 * t * 0.1

    return CustomSchedule(lambda t: torch.exp(log_alpha(t)), lambda t: torch.sqrt(1 - torch.exp(2 * log_alpha(t))),
                          name="same-name")


@pytest.mark.slow
def test_custom_schedules_with_one_name_are_never_cached(tmp_path):
    noise = draw_noise((4, 2), seed=2, dtype=torch.float64)
    fields = [VectorField(GaussianMixtureProblem.default(dim=2, components=2), prediction="x0", schedule=_vp_custom(b),
                          sample_shape=(2,)) for b in (20.0, 10.0)]
    assert repr(fields[0].schedule) == repr(fields[1].schedule)       # what the old key saw: the same
    assert field_identity(fields[0]) is None
    t = torch.tensor([0.9, 0.5], dtype=torch.float64)
    assert reference_key(fields[0], noise, t, CHEAP) == (None, None)
    # A custom schedule inverts lambda by bisection at every slope: a few fixed steps keep this fast.
    few = ReferenceSettings(method="rk4", rk4_steps=4)
    a = solve_reference(fields[0], noise, t, cache_dir=tmp_path, settings=few)
    b = solve_reference(fields[1], noise, t, cache_dir=tmp_path, settings=few)
    assert not a.cached and not b.cached and not torch.allclose(a.endpoint, b.endpoint)
    assert _entries(tmp_path) == []


def test_skip_scales_change_the_key():
    torch.manual_seed(0)
    net = UNet((8, 16), 16)
    f = VectorField(net)
    noise = draw_noise((1, 1, 28, 28), seed=0, dtype=torch.float32)
    t = torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64)
    k0 = reference_key(f, noise, t, CHEAP)[0]
    net.skip_scales = [0.8, 1.0]
    k1 = reference_key(f, noise, t, CHEAP)[0]
    assert k0 is not None and k1 is not None and k0 != k1
    net.skip_scales = [1.0, 1.0]
    assert reference_key(f, noise, t, CHEAP)[0] == k0
    # A forward pass fills a feature cache on the model; the key must not move with it.
    with torch.no_grad():
        net(noise, torch.ones(1))
    assert reference_key(f, noise, t, CHEAP)[0] == k0


class _Identified(VectorField):
    """Stands in for the core's coming `VectorField.identity` property."""

    ident: str | None = "field-a"

    def identity(self):
        return self.ident


def test_an_explicit_field_identity_is_used_and_none_disables_the_cache(tmp_path):
    p = GaussianMixtureProblem.default(dim=3, components=2)
    noise = draw_noise((4, 3), seed=3, dtype=torch.float64)
    f = _Identified(p)
    t = _times(f)
    key_a, desc = reference_key(f, noise, t, CHEAP)
    assert desc["field"] == {"field": "field-a"}
    f.ident = "field-b"
    assert reference_key(f, noise, t, CHEAP)[0] != key_a
    first = solve_reference(f, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not first.cached and solve_reference(f, noise, t, cache_dir=tmp_path, settings=CHEAP).cached
    f.ident = None
    assert reference_key(f, noise, t, CHEAP) == (None, None)
    before = len(_entries(tmp_path))
    again = solve_reference(f, noise, t, cache_dir=tmp_path, settings=CHEAP)
    assert not again.cached and len(_entries(tmp_path)) == before
    assert torch.equal(again.states, first.states)


def test_cache_files_only_when_identified(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(reference_module, "save_reference", lambda *a, **k: saved.append(a))
    noise = draw_noise((2, 4), seed=4, dtype=torch.float32)
    solve_reference(_guided(2.0), noise, _times(_guided(2.0)), cache_dir=tmp_path, settings=CHEAP)
    assert len(saved) == 1
