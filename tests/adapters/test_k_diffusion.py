"""k-diffusion both ways: diffsolve's sample_<name> functions against k-diffusion's own (sampling.py loaded
alone, as the bench does), and k-diffusion / EDM denoisers detected by Sampler(model).

Tolerance: 1e-5 relative (float32; the two implementations differ only in rounding, measured 1e-7 .. 4e-7).
"""
from __future__ import annotations

import importlib.util
import inspect
import sys

import pytest
import torch

from diffsolve import InvalidArgument, NonFiniteError, Sampler, VectorField
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling
from diffsolve.grids import from_sigmas
from diffsolve.pretrained_adapters import k_diffusion as kd
from diffsolve.pretrained_adapters.k_diffusion import outbound
from diffsolve.pretrained_adapters.k_diffusion import sample_dpm_2, sample_dpmpp_2m
from diffsolve.solvers import available_solvers
from diffsolve.solvers.peers import PEER_MATCHES

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


K_DIFFUSION_MATCHES = [m for m in PEER_MATCHES if m.library == "k-diffusion"]


@pytest.mark.parametrize("match", K_DIFFUSION_MATCHES, ids=[f"{m.peer}-{m.peer_options}" for m in K_DIFFUSION_MATCHES])
def test_same_samples_as_k_diffusion(K, setup, match):
    """Each k-diffusion row of diffsolve.solvers.peers: our sample_<name> (which runs match.solver) against theirs."""
    sigmas, noise, noise_sampler = setup
    opts = dict(match.peer_options)
    if match.same_noise:
        opts["noise_sampler"] = noise_sampler        # both take the same draws per (sigma, sigma_next)
    assert kd.K_DIFFUSION_TO_DIFFSOLVE[match.peer.removeprefix("sample_")] == match.solver
    x = noise * sigmas[0]
    ref = getattr(K, match.peer)(den, x.clone(), sigmas, disable=True, **opts)
    got = getattr(kd, match.peer)(den, x.clone(), sigmas, **opts)
    err = rel(got, ref)
    assert err < match.rtol, f"{match.peer}: relative difference {err:.3g}"


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
    for name in ("dpm_adaptive_23", "rk4", "unipc_bh2", "restart", "dpm_solver_3"):
        out = getattr(kd, f"sample_{name}")(den, noise * sigmas[0], sigmas, seed=0)
        assert torch.isfinite(out).all()



def test_sampler_functions_are_defined_in_the_module():
    """One `sample_<name>` per sampler name, written in the module (importable by name, listed in __all__)."""
    defined = {n[len("sample_"):] for n in vars(kd) if n.startswith("sample_")}
    unmatched = {k for k, v in kd.K_DIFFUSION_TO_DIFFSOLVE.items() if v is None}     # defined, and they refuse
    assert defined == set(kd.sampler_names()) | unmatched
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


# ------------------------------------------------------------------------------------------------
# Outbound: k-diffusion's signatures, default noise and checks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(kd.K_DIFFUSION_TO_DIFFSOLVE))
def test_each_function_takes_k_diffusions_arguments(K, name):
    """Every k-diffusion parameter, in k-diffusion's order and with its default; ours adds only `seed`."""
    theirs = inspect.signature(getattr(K, f"sample_{name}")).parameters
    ours = inspect.signature(getattr(kd, f"sample_{name}")).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for p in theirs.values():
        assert ours[p.name].default == p.default, p.name
    assert set(ours) - set(theirs) <= {"seed", "unexpected"}


def test_a_misspelt_keyword_names_the_valid_ones(setup):
    sigmas, noise, _ = setup
    with pytest.raises(InvalidArgument, match=r"\['etaa'\].*eta, s_noise, noise_sampler"):
        kd.sample_euler_ancestral(den, noise * sigmas[0], sigmas, etaa=0.5)


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_default_noise_is_k_diffusions_for_the_same_global_seed(K, setup, name):
    """No noise_sampler: the same torch.manual_seed gives k-diffusion's samples (randn_like per step, or its
    Brownian tree for the SDE samplers); seed= switches to diffsolve's own step noise."""
    sigmas, noise, _ = setup
    x = noise * sigmas[0]
    torch.manual_seed(123)
    ref = getattr(K, f"sample_{name}")(den, x.clone(), sigmas, disable=True)
    torch.manual_seed(123)
    got = getattr(kd, f"sample_{name}")(den, x.clone(), sigmas)
    assert rel(got, ref) < RTOL
    other = getattr(kd, f"sample_{name}")(den, x.clone(), sigmas, seed=5)
    assert rel(other, ref) > 1e-3


def test_dpm_adaptive_takes_sigma_min_and_sigma_max(K, setup):
    """k-diffusion's arguments; both integrate the same ODE to rtol, so they agree to about rtol, and a tighter
    rtol brings ours closer to a tight solve (the step-size controllers differ in detail)."""
    _, noise, _ = setup
    x = noise * 20.0
    ref = K.sample_dpm_adaptive(den, x.clone(), 0.03, 20.0, disable=True, rtol=1e-3, atol=1e-4)
    got, info = kd.sample_dpm_adaptive(den, x.clone(), 0.03, 20.0, rtol=1e-3, atol=1e-4, return_info=True)
    assert rel(got, ref) < 5e-3 and info["steps"] > 1 and info["nfe"] >= 3 * info["steps"]
    tight = kd.sample_dpm_adaptive(den, x.clone(), 0.03, 20.0, rtol=1e-6, atol=1e-7)
    assert rel(got, tight) < 5e-3
    with pytest.raises(InvalidArgument, match="sigma_min"):
        kd.sample_dpm_adaptive(den, x, 20.0, 0.03)
    with pytest.raises(InvalidArgument, match="pcoeff"):
        kd.sample_dpm_adaptive(den, x, 0.03, 20.0, pcoeff=0.3)
    with pytest.raises(InvalidArgument, match="accept_safety"):
        kd.sample_dpm_adaptive(den, x, 0.03, 20.0, accept_safety=0.5)


@pytest.mark.parametrize("name,nearest", [("dpm_fast", "sample_dpm_solver_3"),
                                          ("dpm_2_ancestral", "sample_dpmpp_2s_ancestral"),
                                          ("dpmpp_sde", "sample_dpmpp_2m_sde")])
def test_unmatched_k_diffusion_functions_name_the_nearest(setup, name, nearest):
    sigmas, noise, _ = setup
    args = (0.03, 20.0, 6) if name == "dpm_fast" else (sigmas,)
    with pytest.raises(InvalidArgument, match=nearest):
        getattr(kd, f"sample_{name}")(den, noise * 20.0, *args)


def test_bad_input_is_refused_by_name(setup):
    sigmas, noise, _ = setup
    x = noise * sigmas[0]
    with pytest.raises(InvalidArgument, match="floating-point"):
        kd.sample_euler(den, x.long(), sigmas)
    with pytest.raises(InvalidArgument, match="noise_sampler returned"):
        kd.sample_euler_ancestral(den, x, sigmas, noise_sampler=lambda s, sn: torch.zeros(1))
    bad = sigmas.clone()
    bad[2] = float("nan")
    with pytest.raises(InvalidArgument, match="sigmas must be finite"):
        kd.sample_dpmpp_2m(den, x, bad)
    with pytest.raises(NonFiniteError):
        kd.sample_dpmpp_2m(lambda x, s: den(x, s) * float("nan"), x, sigmas)


def test_plans_are_reused_across_calls(setup):
    sigmas, noise, _ = setup
    outbound._PLANS.clear()
    a = kd.sample_dpmpp_2m(den, noise * sigmas[0], sigmas)
    assert len(outbound._PLANS) == 1
    (plan,) = outbound._PLANS.values()
    b = kd.sample_dpmpp_2m(den, noise * sigmas[0], sigmas)
    assert torch.equal(a, b) and list(outbound._PLANS.values()) == [plan]
    kd.sample_dpmpp_2m(den, noise * sigmas[0], sigmas[1:])
    assert len(outbound._PLANS) == 2
