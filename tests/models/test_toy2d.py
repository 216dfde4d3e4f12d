"""The shipped 2-D moons models: reflow straightens the 1-RF; the shortcut model is told d = 1/K and samples in 1 step."""
from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest
import torch

from diffsolve import Sampler
from diffsolve.field import ModelSpec
from diffsolve.models import load_moons_flow, load_moons_shortcut
from diffsolve.cli.main import main
from diffsolve.models import toy2d
from diffsolve.models.toy2d import FILES, WEIGHTS, MoonsMLP, toy_metadata
from diffsolve.training.reflow import load_couplings
from diffsolve.training.toy2d import (HELDOUT_SEED, ToyConfig, heldout_moons, heldout_noise, sample, sliced_w1,
                                      straightness_of, train_toy)

N = 4000


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def heldout(one_thread):
    return heldout_noise(N), heldout_moons(N)


def test_shipped_models_declare_their_specs_and_training_record():
    rf1, rf2, sc = load_moons_flow(1), load_moons_flow(reflow=2), load_moons_shortcut()
    for m in (rf1, rf2):
        assert m.diffsolve_spec == ModelSpec("velocity", None, (2,), "flow")
    assert sc.diffsolve_spec == ModelSpec("velocity", None, (2,), "flow", solver="shortcut", step_input="d")
    for name in FILES.values():
        meta = toy_metadata(WEIGHTS / name)
        assert meta["train_seconds"] > 0 and meta["threads"] == 1
    meta2 = toy_metadata(WEIGHTS / FILES["2rf"])
    assert meta2["init"] == FILES["1rf"] and meta2["coupling_seconds"] > 0
    assert meta2["coupling_seed"] != HELDOUT_SEED
    assert not any(p.requires_grad for p in rf1.parameters())
    with pytest.raises(ValueError, match="reflow=3"):
        load_moons_flow(3)


@pytest.mark.slow
def test_two_rectified_flow_is_straighter_and_closer_in_one_step(heldout):
    noise, target = heldout
    rf1, rf2 = load_moons_flow(1), load_moons_flow(2)
    s1, gap1 = straightness_of(rf1, noise[:1000], steps=64)
    s2, gap2 = straightness_of(rf2, noise[:1000], steps=64)
    assert s2 * 5 < s1, (s1, s2)
    assert gap2 * 2 < gap1, (gap1, gap2)
    w1, w2 = sliced_w1(sample(rf1, noise, 1, "euler"), target), sliced_w1(sample(rf2, noise, 1, "euler"), target)
    assert w2 * 2 <= w1, (w1, w2)                    # at least 2x closer to the moons at one Euler step
    # both still solve the flow well with many steps (the 2-RF keeps the 1-RF's marginals)
    assert sliced_w1(sample(rf2, noise, 32, "rk4"), target) < 0.12


class DSpy(torch.nn.Module):
    """The shortcut model, recording the step size d of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    @property
    def diffsolve_spec(self):
        return self.inner.diffsolve_spec

    def forward(self, x, t, d=None):
        self.seen.append(None if d is None else d.clone())
        return self.inner(x, t, d)


@pytest.mark.slow
def test_shortcut_model_is_told_the_step_and_samples_in_one_step(heldout):
    noise, target = heldout
    spy = DSpy(load_moons_shortcut())
    for k in (1, 2, 4, 8):
        spy.seen.clear()
        Sampler(spy, progress=False).run(steps=k, noise=noise[:16])        # the spec's sampler: 'shortcut'
        assert len(spy.seen) == k
        for d in spy.seen:
            assert d is not None and d.shape == (16,) and torch.allclose(d, torch.full((16,), 1.0 / k))
    spy.seen.clear()
    Sampler(spy, "euler", progress=False).run(steps=3, noise=noise[:16])   # an ODE solver: the velocity, d = 0
    assert len(spy.seen) == 3 and all(float(d.abs().max()) == 0.0 for d in spy.seen)

    sc, rf1 = load_moons_shortcut(), load_moons_flow(1)
    w_sc = sliced_w1(sample(sc, noise, 1, "shortcut"), target)
    w_rf1 = sliced_w1(sample(rf1, noise, 1, "euler"), target)
    assert w_sc * 2 < w_rf1, (w_sc, w_rf1)
    assert w_sc < 0.35, w_sc
    # more steps do not hurt, and d = 0 with a fine ODE solver is a good flow too
    assert sliced_w1(sample(sc, noise, 8, "shortcut"), target) < w_sc + 0.02
    assert sliced_w1(sample(sc, noise, 32, "rk4"), target) < 0.15


@pytest.mark.slow
@pytest.mark.parametrize("what", ["1rf", "2rf", "shortcut"])
def test_training_is_seeded(what, one_thread):
    pairs = init = None
    if what == "2rf":
        g = torch.Generator().manual_seed(0)
        pairs = (torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g))
        init = MoonsMLP(16, 2)
    cfg = lambda seed: ToyConfig(what, iters=5, batch_size=32, width=16, depth=2, seed=seed, pool=256,  # noqa: E731
                                 log_every=0)
    a, b, c = (train_toy(cfg(s), init=init, pairs=pairs, log=None) for s in (4, 4, 5))
    sa, sb, sc = (r.model.state_dict() for r in (a, b, c))
    assert a.losses == b.losses
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.model.shortcut == (what == "shortcut")
    if init is not None:
        assert not all(torch.equal(init.state_dict()[k], sa[k]) for k in sa)   # trained a copy of the init


def test_reflow_cli_reads_the_shipped_model_names(tmp_path, capsys, one_thread):
    assert main(["reflow", "--model", "moons-2rf", "--samples", "6", "--out", str(tmp_path / "c"), "--solver", "rk4",
                 "--steps", "4", "--shard-size", "4", "--threads", "1"]) == 0
    noise, endpoint = load_couplings(tmp_path / "c")
    ref = Sampler(load_moons_flow(2), "rk4", progress=False).run(steps=4, noise=noise).samples
    assert torch.allclose(endpoint, ref, atol=1e-5)


def test_weights_are_package_data():
    root = Path(toy2d.__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "diffsolve.models"]
    for name in FILES.values():
        assert (WEIGHTS / name).is_file()
        assert any(fnmatch.fnmatch(f"weights/{name}", p) for p in patterns), (name, patterns)


@pytest.mark.slow
def test_the_eight_gaussians_flow_names_its_source_and_reaches_the_moons(one_thread):
    model = toy2d.load_moons_8gaussians()
    spec = model.diffsolve_spec
    assert isinstance(spec.source, torch.distributions.MixtureSameFamily) and spec.schedule is None
    assert toy_metadata(WEIGHTS / FILES["8gaussians"])["source"] == "8gaussians"
    assert load_moons_flow(1).source is None and load_moons_flow(1).diffsolve_spec.source is None
    # training's draws and the distribution are one law: eight modes at radius 5, std 0.1 ** 0.25 each
    train = toy2d.sample_eight_gaussians(4000, torch.Generator().manual_seed(0))
    # (a uniform angle would give a mean distance of 0.25 to the nearest mode's; these give about 0.11)
    for x in (train, spec.source.sample((4000,))):
        angle = torch.atan2(x[:, 1], x[:, 0]) / (torch.pi / 4)
        assert float((angle - angle.round()).abs().mean()) < 0.15 and abs(float(x.norm(dim=1).mean()) - 5.0) < 0.1
    # its flow carries those starts to the moons (measured W1 0.056 at 64 RK4 steps on 4000 points; floor 0.044)
    out = Sampler(model, "rk4", progress=False).run(steps=16, seed=list(range(10**7, 10**7 + 1000))).samples
    assert sliced_w1(out, heldout_moons(1000)) < 0.15
    with pytest.raises(ValueError, match="source"):
        train_toy(ToyConfig("shortcut", iters=1, source="8gaussians"), log=None)
