"""The built-in MNIST UNet, its feature classifier and their training."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import model_spec_of
from diffsolve.models.builtin import load_feature_stats, load_mnist_classifier, load_mnist_unet
from diffsolve.models.classifier import feature_stats, featurize, frechet_distance
from diffsolve.models.data import load_mnist, random_shift
from diffsolve.training.classifier import train_classifier
from diffsolve.training.configs import ClassifierConfig, UNetConfig
from diffsolve.training.unet import train_unet
from diffsolve.models.unet import UNet
from diffsolve.sampler import Sampler


@pytest.fixture(scope="module")
def unet():
    return load_mnist_unet()


@pytest.mark.slow
def test_data_split_is_fixed_disjoint_and_scaled():
    x, y = load_mnist("train")
    h, yh = load_mnist("heldout")
    assert x.shape == (4000, 1, 28, 28) and h.shape == (1000, 1, 28, 28)
    assert torch.bincount(yh, minlength=10).tolist() == [100] * 10
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    # no held-out image appears in the training split
    train_keys = {row.numpy().tobytes() for row in x.reshape(4000, -1)}
    assert sum(row.numpy().tobytes() in train_keys for row in h.reshape(1000, -1)) == 0
    x2, _ = load_mnist("train")
    assert torch.equal(x, x2)


def test_random_shift_moves_digits_and_keeps_range():
    x = load_mnist("heldout")[0][:32]
    g = torch.Generator().manual_seed(0)
    s = random_shift(x, 2, g)
    assert s.shape == x.shape and float(s.min()) >= -1.0 and float(s.max()) <= 1.0
    assert not torch.equal(s, x)
    assert torch.equal(random_shift(x, 0, g), x)


def test_shipped_unet_declares_its_spec_and_samples_without_arguments(unet):
    spec = model_spec_of(unet)
    assert spec.prediction == "denoiser" and spec.sample_shape == (1, 28, 28) and spec.data_range == (-1.0, 1.0)
    assert Sampler(unet).run(steps=5).samples.shape == (1, 1, 28, 28)
    res = Sampler(unet, progress=False).run(steps=5, batch_size=6, seed=0)
    x = res.samples
    assert x.shape == (6, 1, 28, 28) and torch.isfinite(x).all()
    # in the data range [-1, 1] up to the small overshoot of a 5-step solve
    assert float(x.abs().max()) < 2.0
    assert float((x.abs() > 1.5).float().mean()) < 0.01
    assert float((x - x.clamp(-1, 1)).abs().mean()) < 0.1
    # MNIST digits: mostly black background (-1) with a few bright strokes
    assert float(x.median()) < -0.8
    assert float((x > 0.5).float().mean()) > 0.05


@pytest.mark.slow
def test_heun_samples_are_recognised_digits(unet):
    torch.manual_seed(0)
    res = Sampler(unet, "heun", progress=False).run(steps=8, batch_size=32, seed=1)
    assert res.nfe == 15
    clf = load_mnist_classifier()
    _, p = featurize(clf, res.samples.clamp(-1, 1))
    assert float(p.max(1).values.mean()) > 0.7
    # and they are not all one digit
    assert len(set(p.argmax(1).tolist())) >= 5


def test_denoiser_preconditioning_and_hooks(unet):
    x = load_mnist("heldout")[0][:4]
    with torch.no_grad():
        # c_skip(0) = 1, c_out(0) = 0: the denoiser is the identity at sigma = 0
        assert torch.allclose(unet(x, torch.zeros(4)), x)
        noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        d = unet(noisy, torch.full((4,), 0.5))
        assert (d - x).pow(2).mean() < (noisy - x).pow(2).mean() / 4
        out, bott = unet(noisy, 0.5, return_bottleneck=True)
        assert torch.equal(out, d) and bott.shape == (4, unet.channels[-1], 7, 7)
        # the same bottleneck reaches a solver through a forward hook on the submodule `mid`
        from diffsolve import FeatureCapture, VectorField
        field = FeatureCapture(VectorField(unet), {"bottleneck": "mid"})
        captured = field.evaluate(noisy, field.at(0.5)).aux["bottleneck"]
        assert torch.equal(captured, bott) and not unet.mid._forward_hooks
        assert torch.equal(unet(noisy, 0.5, skip_scale=[1.0] * unet.num_skip_levels), d)
        scaled = unet(noisy, 0.5, skip_scale=[0.8, 1.0, 1.0])
        assert not torch.allclose(scaled, d)
        unet.skip_scales = [0.8, 1.0, 1.0]
        try:
            assert torch.equal(unet(noisy, 0.5), scaled)
        finally:
            unet.skip_scales = [1.0] * unet.num_skip_levels
        with pytest.raises(InvalidArgument, match="skip_scale"):
            unet(noisy, 0.5, skip_scale=[1.0])


@pytest.mark.slow
def test_classifier_accuracy_on_heldout_real_images():
    x, y = load_mnist("heldout")
    f, p = featurize(load_mnist_classifier(), x)
    acc = float((p.argmax(1) == y).double().mean())
    assert acc >= 0.95, acc
    assert f.shape == (1000, 128)


@pytest.mark.slow
def test_shipped_feature_stats_match_the_real_images():
    stats = load_feature_stats()
    clf = load_mnist_classifier()
    f, _ = featurize(clf, load_mnist("heldout")[0])
    mu, cov = feature_stats(f)
    assert torch.allclose(mu, stats["heldout_mu"], atol=1e-4)
    assert torch.allclose(cov, stats["heldout_cov"], atol=1e-4)
    # real training images are much closer to the held-out ones than noise is
    g = torch.Generator().manual_seed(0)
    fd_real = frechet_distance(stats["train_mu"], stats["train_cov"], stats["heldout_mu"], stats["heldout_cov"])
    fn, _ = featurize(clf, torch.rand(500, 1, 28, 28, generator=g) * 2 - 1)
    fd_noise = frechet_distance(*feature_stats(fn), stats["heldout_mu"], stats["heldout_cov"])
    assert fd_real < fd_noise / 20


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    a, b = torch.rand(6, generator=g, dtype=torch.float64) + 0.1, torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    want = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert math.isclose(got, want, rel_tol=1e-8, abs_tol=1e-10)
    assert abs(frechet_distance(mu1, torch.diag(a), mu1, torch.diag(a))) < 1e-8


def _mean(v):
    return sum(v) / len(v)


@pytest.mark.slow
def test_unet_training_smoke_loss_falls():
    data = load_mnist("train")[0][:256]
    cfg = UNetConfig(channels=(8, 16, 16), emb_dim=32, iters=60, batch_size=16, lr=2e-3, warmup=1, log_every=0)
    res = train_unet(cfg, data=data)
    assert isinstance(res.model, UNet) and len(res.losses) == 60
    assert all(math.isfinite(v) for v in res.losses)
    assert _mean(res.losses[-15:]) < 0.8 * _mean(res.losses[:15])
    # the same seed gives the same run
    again = train_unet(UNetConfig(**{**cfg.__dict__, "iters": 5}), data=data)
    assert again.losses == res.losses[:5]


@pytest.mark.slow
def test_classifier_training_smoke_loss_falls():
    res = train_classifier(ClassifierConfig(width=16, iters=60, batch_size=32, lr=3e-3, log_every=0))
    assert _mean(res.losses[-10:]) < 0.85 * _mean(res.losses[:10])


SHARED_DDPM = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "mnist-ddpm-eps.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DDPM.is_file(), reason="the shared MNIST DDPM is not beside the repository")
def test_builtin_beats_the_shared_ddpm_at_equal_nfe(unet):
    from diffsolve.models.quality import sample_model, score
    from diffsolve.pretrained_adapters.mnist_ddpm import load_mnist_ddpm
    clf, ref = load_mnist_classifier(), load_feature_stats()
    ours, nfe = sample_model(unet, 200, solver="heun", steps=10, seed=0)
    theirs, nfe_ddpm = sample_model(load_mnist_ddpm(SHARED_DDPM), 200, solver="heun", steps=10, seed=0)
    assert nfe == nfe_ddpm == 19
    # samples from the ddpm's [-0.5, 0.5] range were mapped to the classifier's [-1, 1]
    assert float(theirs.min()) >= -1.0 and float(theirs.max()) <= 1.0 and float(theirs.median()) < -0.8
    a, b = score(clf, ours, ref), score(clf, theirs, ref)
    assert a["fd"] < 0.75 * b["fd"], (a, b)
    assert a["confidence"] > b["confidence"], (a, b)
