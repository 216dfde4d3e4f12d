"""The diffusers adapter: scheduler configs -> schedules, predictions and grids; diffusers models -> VectorField."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from diffsolve import InvalidArgument, RectifiedFlow, Sampler, VPDiscrete
from diffsolve.pretrained_adapters import diffusers as ad

ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------------
# Without the diffusers library: configs as plain dicts
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_core_and_adapter_import_without_diffusers():
    """diffusers is optional: with it blocked, diffsolve and the adapter import and read a config dict."""
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "import diffsolve, diffsolve.pretrained_adapters as pa\n"
        "s = pa.diffusers.schedule_from_diffusers({'_class_name': 'DDIMScheduler', 'beta_schedule': 'linear'})\n"
        "assert s.N == 1000 and 'diffusers' in sys.modules and sys.modules['diffusers'] is None\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]



def test_public_names_importable_from_the_package():
    """The package re-exports its modules' public names; the scheduler module reads the modules, not the package."""
    for name in ad.__all__:
        assert getattr(ad, name) is not None, name
    assert ad.sampler_parts.__module__ == "diffsolve.pretrained_adapters.diffusers.sampling"
    source = (ROOT / "pretrained_adapters" / "diffusers" / "scheduler.py").read_text()
    assert "from diffsolve.pretrained_adapters import diffusers" not in source
    assert "from diffsolve.pretrained_adapters.diffusers import " not in source

def test_config_dict_schedules_and_model_time():
    cfg = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
           "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"}
    sch = ad.schedule_from_diffusers(cfg)
    assert isinstance(sch, VPDiscrete) and sch.N == 1000
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    ac = torch.cumprod(1 - betas, 0).double()
    n = torch.tensor([0.0, 1.0, 499.0, 999.0], dtype=torch.float64)
    t = sch.t_from_index(n)
    # diffusers' timestep n uses alphas_cumprod[n]; diffsolve's t_from_index(n) = (n + 1) / N is that same point
    assert torch.allclose(sch.alpha(t) ** 2, ac[n.long()], rtol=1e-12, atol=0)
    assert torch.allclose(sch.model_time(t), n, atol=1e-9)
    assert ad.prediction_of(cfg) == "v"


@pytest.mark.parametrize("ptype,ours", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_prediction_types(ptype, ours):
    assert ad.prediction_of({"prediction_type": ptype}) == ours


@pytest.mark.slow
def test_bad_config_values_name_the_argument():
    with pytest.raises(InvalidArgument, match="prediction_type"):
        ad.prediction_of({"prediction_type": "score"})
    with pytest.raises(InvalidArgument, match="beta_schedule"):
        ad.schedule_from_diffusers({"beta_schedule": "quadratic"})
    with pytest.raises(InvalidArgument, match="scheduler"):
        ad.from_diffusers(lambda x, t: x, 3)


def test_flow_config_is_rectified_flow_with_timestep_1000_sigma():
    cfg = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    sch = ad.schedule_from_diffusers(cfg)
    assert isinstance(sch, RectifiedFlow)
    assert float(sch.model_time(0.25)) == pytest.approx(250.0)
    assert ad.prediction_of(cfg) == "velocity"
    t = ad.flow_grid(4, sch, shift=3.0)
    base = torch.tensor([1.0, 0.75, 0.5, 0.25])
    # shifted sigmas s' = shift s / (1 + (shift - 1) s), decreasing, then 0
    assert float(t[0]) == 1.0 and float(t[-1]) == 0.0 and torch.all(t[1:] < t[:-1])
    assert float(ad.shift_sigmas(0.5, 3.0)) == pytest.approx(0.75)
    assert t.numel() == base.numel() + 1


def test_dynamic_shift_needs_mu():
    with pytest.raises(InvalidArgument, match="use_dynamic_shifting"):
        ad.grid_options_of({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True})


def test_solver_of_maps_scheduler_classes():
    assert ad.solver_of({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}) == "dpmpp_3m"
    assert ad.solver_of({"_class_name": "UniPCMultistepScheduler", "solver_type": "bh1"}) == "unipc_bh1"
    assert ad.solver_of({"_class_name": "HeunDiscreteScheduler"}) == "heun"
    assert ad.solver_of({"_class_name": "DDIMScheduler"}) == "ddim"


# ------------------------------------------------------------------------------------------------
# Model wrapping
# ------------------------------------------------------------------------------------------------
@dataclass
class Out:
    sample: torch.Tensor


class CondNet(torch.nn.Module):
    """Stands in for UNet2DConditionModel: keyword timestep, encoder_hidden_states, dataclass output."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=True):
        self.seen.append((timestep.clone(), encoder_hidden_states))
        out = self.w * sample + 1e-3 * timestep.reshape(-1, 1, 1, 1) + encoder_hidden_states.mean()
        return Out(out) if return_dict else (out,)


def test_wrapper_unwraps_sample_and_passes_kwargs():
    net = CondNet()
    field = ad.from_diffusers(net, {"_class_name": "DDIMScheduler"}, sample_shape=(1, 4, 4))
    cond = torch.full((2, 3, 8), 2.0)
    x = torch.randn(2, 1, 4, 4)
    p = field.at(float(field.schedule.t_from_index(499.0)))
    out = field.call_model(x, p, encoder_hidden_states=cond)
    assert isinstance(out, torch.Tensor)
    ts, ehs = net.seen[-1]
    assert torch.equal(ts, torch.full((2,), 499.0)) and ehs is cond
    assert torch.allclose(out, 0.5 * x + 0.499 + 2.0)
    # tuple outputs (return_dict=False) are unwrapped too, and Sampler.run(**kwargs) reaches the network
    tup = ad.DiffusersModel(lambda s, t: (s * 2,))
    assert torch.equal(tup(x, torch.zeros(2)), x * 2)
    res = Sampler(field, "euler", progress=False).run(steps=3, noise=x, encoder_hidden_states=cond)
    assert res.nfe == 3 and net.seen[-1][1] is cond


def test_positional_time_models_and_timestep_scale():
    seen = []

    def net(x, t):          # no parameter called `timestep`: called positionally
        seen.append(t)
        return torch.zeros_like(x)

    m = ad.DiffusersModel(net, timestep_scale=1e-3)
    m(torch.zeros(2, 3), torch.full((2,), 500.0))
    assert torch.allclose(seen[-1], torch.full((2,), 0.5))


def test_unet2d_model_end_to_end():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).eval().requires_grad_(False)
    sch = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2")
    field = ad.from_diffusers(unet, sch)
    assert field.sample_shape == (1, 8, 8)
    assert torch.equal(field.schedule.alphas_cumprod, sch.alphas_cumprod.double())
    s = ad.sampler_from_diffusers(unet, sch, progress=False)
    assert s.solver.name == "dpmpp_2m"
    with torch.no_grad():
        res = s.run(steps=5, batch_size=2, seed=0)
    assert res.samples.shape == (2, 1, 8, 8) and torch.isfinite(res.samples).all() and res.nfe == 5
    # the default grid is the scheduler's own timesteps
    assert torch.equal(s.times(5), ad.grid_from_scheduler(sch, 5))


def test_zero_terminal_snr_config_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    cfg = dict(beta_schedule="scaled_linear", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    # DPMSolver*/UniPC/Euler replace the zero terminal alphas_cumprod by 2**-24 (DDIM keeps 0, which no
    # log-SNR schedule can hold); the adapter always does
    theirs = diffusers.DPMSolverMultistepScheduler(**cfg).alphas_cumprod.double()
    ours = ad.alphas_cumprod_of({"_class_name": "DDIMScheduler", **cfg})
    assert torch.equal(ours, theirs) and float(ours[-1]) == 2.0 ** -24


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_config_betas_reproduce_diffusers_bitwise(kind):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMScheduler(beta_schedule=kind).alphas_cumprod.double()
    assert torch.equal(ad.alphas_cumprod_of({"beta_schedule": kind}), theirs)


@pytest.mark.parametrize("spacing,scaled", [("leading", False), ("trailing", True), ("linspace", True)])
def test_noise_scale_of_euler_family(spacing, scaled):
    """diffusers' Euler starts x~ = x / alpha from noise * init_noise_sigma; for 'linspace'/'trailing' that is
    sigma_max, not sqrt(sigma_max^2 + 1), so in x its start has std sigma(t_max) < 1 (diffsolve's VP prior: 1)."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=1)
    f = ad.noise_scale_of(sch, 10)
    s0 = float(ad.grid_from_scheduler(sch, 10)[0])
    sigma0 = float(ad.schedule_from_diffusers(sch).sigma(s0))
    if scaled:
        assert f == pytest.approx(sigma0, rel=1e-6) and f < 1
    else:
        assert f == pytest.approx(1.0, rel=1e-6)
    assert ad.noise_scale_of(diffusers.DPMSolverMultistepScheduler(), 10) == 1.0
