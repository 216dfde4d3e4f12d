"""k-diffusion both ways: diffsolve's sample_<name> functions against k-diffusion's own (sampling.py loaded
alone, as the bench does), and k-diffusion / EDM denoisers detected by Sampler(model).

Tolerance: 1e-5 relative (float32; the two implementations differ only in rounding, measured 1e-7 .. 4e-7).
"""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from diffsolve import InvalidArgument, Sampler, VectorField
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling
from diffsolve.grids import from_sigmas
from diffsolve.pretrained_adapters import k_diffusion as kd
from diffsolve.pretrained_adapters.k_diffusion import sample_dpm_2, sample_dpmpp_2m
from diffsolve.solvers import available_solvers

RTOL = 1e-5


@pytest.fixture(scope="module")
def K():
    return load_k_diffusion_sampling()


def den(x, sigma, scale=1.0):
    """A smooth nonlinear denoiser in the EDM frame (k-diffusion convention: model(x, sigma) -> denoised)."""
    W = torch.linspace(-1, 1, 256, dtype=x.dtype).reshape(16, 16) * 0.3
    s = sigma.reshape(-1, 1).to(x.dtype)
    flat = x.reshape(x.shape[0], -1)
    h = torch.tanh(flat @ W / (1 + s))
    return (scale * flat / (1 + s ** 2) + h * s / (1 + s)).reshape(x.shape)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def setup(K):
    sigmas = K.get_sigmas_karras(8, 0.03, 20.0)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    table = {float(s): torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(10 + i))
             for i, s in enumerate(sigmas)}
    return sigmas, noise, (lambda s, s_next: table[float(s)])


@pytest.mark.parametrize("name,opts", [
    ("euler", {}), ("heun", {}), ("lms", {}), ("dpm_2", {}), ("dpmpp_2m", {}),
    ("dpmpp_2s_ancestral", {"eta": 0.0}), ("dpmpp_2m_sde", {"fixed_noise": True}),
    ("dpmpp_2m_sde", {"fixed_noise": True, "solver_type": "heun"}), ("dpmpp_3m_sde", {"fixed_noise": True}),
    ("euler_ancestral", {"fixed_noise": True})])
def test_same_samples_as_k_diffusion(K, setup, name, opts):
    sigmas, noise, noise_sampler = setup
    opts = dict(opts)
    if opts.pop("fixed_noise", False):
        opts["noise_sampler"] = noise_sampler        # both take the same draws per (sigma, sigma_next)
    x = noise * sigmas[0]
    ref = getattr(K, f"sample_{name}")(den, x.clone(), sigmas, disable=True, **opts)
    got = getattr(kd, f"sample_{name}")(den, x.clone(), sigmas, **opts)
    err = rel(got, ref)
    assert err < RTOL, f"sample_{name}: relative difference {err:.3g}"


def test_callback_receives_k_diffusion_dict(K, setup):
    sigmas, noise, _ = setup
    ours, theirs = [], []
    x = noise * sigmas[0]
    K.sample_heun(den, x.clone(), sigmas, callback=theirs.append, disable=True)
    kd.sample_heun(den, x.clone(), sigmas, callback=ours.append)
    assert len(ours) == len(theirs) == len(sigmas) - 1
    for a, b in zip(ours, theirs):
        assert set(a) == {"x", "i", "sigma", "sigma_hat", "denoised"} and a["i"] == b["i"]
        assert rel(a["x"], b["x"]) < RTOL and rel(a["denoised"], b["denoised"]) < RTOL
        assert float(a["sigma"]) == pytest.approx(float(b["sigma"]), rel=1e-6)


def test_extra_args_reach_the_model(setup):
    sigmas, noise, _ = setup
    a = kd.sample_dpmpp_2m(den, noise * sigmas[0], sigmas, extra_args={"scale": 0.5})
    b = kd.sample_dpmpp_2m(lambda x, s: den(x, s, 0.5), noise * sigmas[0], sigmas)
    assert torch.equal(a, b)


def test_name_tables_and_every_solver_has_a_function(setup):
    assert kd.K_DIFFUSION_TO_DIFFSOLVE["dpm_2"] == "dpm_solver_2"
    assert kd.DIFFSOLVE_TO_K_DIFFUSION["dpm_solver_2"] == "dpm_2"
    for k, v in kd.K_DIFFUSION_TO_DIFFSOLVE.items():
        assert v is None or (v in available_solvers() and kd.DIFFSOLVE_TO_K_DIFFUSION[v] == k)
    for name in available_solvers():
        assert callable(getattr(kd, f"sample_{name}"))
    with pytest.raises(InvalidArgument, match="dpm_2 -> dpm_solver_2"):
        kd.sampler_function("dpmpp_sde")
    sigmas, noise, _ = setup
    for name in ("dpm_adaptive", "rk4", "unipc_bh2", "restart", "dpm_solver_3"):
        out = getattr(kd, f"sample_{name}")(den, noise * sigmas[0], sigmas, seed=0)
        assert torch.isfinite(out).all()



def test_sampler_functions_are_defined_in_the_module():
    """One `sample_<name>` per sampler name, written in the module (importable by name, listed in __all__)."""
    defined = {n[len("sample_"):] for n in vars(kd) if n.startswith("sample_")}
    assert defined == set(kd.sampler_names())
    assert {f"sample_{n}" for n in defined} <= set(kd.__all__)
    assert sample_dpmpp_2m.__name__ == "sample_dpmpp_2m" and "'dpmpp_2m'" in sample_dpmpp_2m.__doc__
    assert "'dpm_solver_2'" in sample_dpm_2.__doc__

def test_s_churn_runs_edm_churn(setup):
    sigmas, noise, _ = setup
    out = kd.sample_euler(den, noise * sigmas[0], sigmas, s_churn=1.0, s_noise=1.0, seed=1)
    assert torch.isfinite(out).all()
    with pytest.raises(InvalidArgument, match="s_churn"):
        kd.sample_lms(den, noise * sigmas[0], sigmas, s_churn=1.0)


# ------------------------------------------------------------------------------------------------
# Inbound: k-diffusion wrappers and EDM networks
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def external(K):
    """k-diffusion's external.py (DiscreteEpsDDPMDenoiser, CompVisDenoiser), loaded beside the stand-in sampling."""
    name = K.__name__.rsplit(".", 1)[0] + ".external"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, K.__file__.replace("sampling.py", "external.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class TinyEps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(16, 16)

    def forward(self, x, t, **kw):
        h = self.lin(x.reshape(x.shape[0], -1)) * torch.cos(t.reshape(-1, 1) / 300)
        return torch.tanh(h).reshape(x.shape)


def test_discrete_eps_denoiser_detected_and_same_samples(K, external):
    betas = torch.linspace(1e-4, 0.02, 1000)
    ac = torch.cumprod(1 - betas, 0)
    model = external.DiscreteEpsDDPMDenoiser(TinyEps(), ac, quantize=True).requires_grad_(False)
    s = Sampler(model, "dpmpp_2m", progress=False)
    assert s.field.prediction == "denoiser" and s.field.schedule.sigma_max == pytest.approx(float(model.sigma_max))
    sigmas = K.get_sigmas_karras(6, model.sigma_min, model.sigma_max)     # float32: its ends may be ulps off
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    ref = K.sample_dpmpp_2m(model, noise * sigmas[0], sigmas, disable=True)
    s = Sampler(model, "dpmpp_2m", from_sigmas(sigmas, s.field.schedule), progress=False)
    got = s.run(noise=noise).samples
    assert rel(got, ref) < RTOL
    field = VectorField.from_k_diffusion(model)
    assert isinstance(field, VectorField) and field.schedule.default_grid == "karras"


class FakeEDMPrecond(torch.nn.Module):
    """The interface of NVlabs' EDMPrecond: sigma_min 0, sigma_max inf, label_dim, img_resolution, img_channels."""

    def __init__(self, label_dim=3):
        super().__init__()
        self.img_resolution, self.img_channels, self.label_dim = 4, 1, label_dim
        self.sigma_min, self.sigma_max, self.sigma_data = 0, float("inf"), 0.5
        self.emb = torch.nn.Parameter(torch.linspace(-1, 1, label_dim * 16).reshape(label_dim, 16))

    def forward(self, x, sigma, class_labels=None, force_fp32=False, **kw):
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        F = torch.tanh(x + (class_labels @ self.emb).reshape(x.shape))
        return c_skip * x + sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt() * F


def test_edm_network_detected_with_class_labels(K):
    net = FakeEDMPrecond().requires_grad_(False)
    s = Sampler(net, "heun", progress=False)
    assert s.field.sample_shape == (1, 4, 4)
    assert s.field.schedule.sigma_min == pytest.approx(0.002) and s.field.schedule.sigma_max == pytest.approx(80.0)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 2]), 3).float()
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    got = s.run(6, noise=noise, class_labels=labels).samples
    sigmas = K.get_sigmas_karras(6, 0.002, 80.0)
    ref = K.sample_heun(lambda x, sg: net(x, sg, labels), noise * sigmas[0], sigmas, disable=True)
    assert rel(got, ref) < RTOL
    again = s.run(6, noise=noise, class_labels=torch.tensor([0, 2])).samples    # integer labels are one-hot encoded
    assert torch.equal(again, got)
    with pytest.raises(InvalidArgument, match="class_labels"):
        s.run(2, noise=noise)


# ------------------------------------------------------------------------------------------------
# Noise conventions: unit noise (diffsolve) and prior-scaled noise (k-diffusion's noise * sigmas[0])
# ------------------------------------------------------------------------------------------------
def test_noise_scale_prior_and_the_obvious_mistake():
    net = FakeEDMPrecond(label_dim=0)
    net.forward = lambda x, sigma, class_labels=None, **kw: x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)
    s = Sampler(net, "dpmpp_2m", progress=False)
    noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    unit = s.run(5, noise=noise).samples
    prior = s.run(5, noise=noise * 80.0, noise_scale="prior").samples
    assert torch.allclose(unit, prior, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidArgument, match="noise_scale='prior'"):
        s.run(5, noise=noise * 80.0)                      # std near sigma_max given as unit noise
    with pytest.raises(InvalidArgument, match="noise_scale"):
        s.run(5, noise=noise, noise_scale="sigma")
