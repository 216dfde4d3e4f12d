"""Every diffusers scheduler class maps to the diffsolve solver that does what it does, or is refused by name.

Stochastic schedulers are checked against diffusers' own loop with the same step noise: diffusers draws one
`randn_tensor(shape, generator=g)` per noisy step, so the same generator's draws, in order, feed diffsolve's steps.
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import InvalidArgument, Sampler  # noqa: E402
from diffsolve.pretrained_adapters import diffusers as ad  # noqa: E402
from diffsolve.solvers.peers import peer_tolerance  # noqa: E402

BATCH, SIZE = 2, 8


@pytest.fixture(scope="module")
def unet():
    return tiny_unet2d(SIZE)


@pytest.mark.parametrize("cls,kw,solver,options", [
    ("DDPMScheduler", {}, "ddpm", {}),
    ("EulerAncestralDiscreteScheduler", {}, "euler_ancestral", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "dpmpp_2m_sde", {"solver_type": "midpoint"}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, "dpmpp_3m", {"third_order": "reference"}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3}, "dpmpp_3s", {}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
     "dpm_solver_2", {}),
    ("KDPM2DiscreteScheduler", {}, "dpm_solver_2", {}),
    ("LMSDiscreteScheduler", {}, "lms", {}),
    ("DDIMScheduler", {}, "ddim", {}),
    ("UniPCMultistepScheduler", {"solver_type": "bh1"}, "unipc_bh1", {}),
    ("LCMScheduler", {}, "consistency", {}),
    ("TCDScheduler", {}, "tcd", {}),
])
def test_scheduler_classes_map_to_solvers(cls, kw, solver, options):
    sch = getattr(diffusers, cls)(**kw)
    assert ad.solver_and_options_of(sch) == (solver, options)
    # KDPM2's constructor takes LMS's arguments and TCD's LCM's: their bare configs read as LMS and LCM
    if cls not in ("KDPM2DiscreteScheduler", "TCDScheduler"):
        assert ad.solver_and_options_of(sch.config) == (solver, options)     # class inferred from the config's keys


@pytest.mark.parametrize("cls", ["PNDMScheduler", "DPMSolverSDEScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_unmatched_schedulers_are_refused_with_the_supported_list(unet, cls):
    sch = getattr(diffusers, cls)()
    with pytest.raises(InvalidArgument, match="Supported scheduler classes: DDIMScheduler"):
        ad.solver_of(sch)
    if cls in ("PNDMScheduler",):
        with pytest.raises(InvalidArgument, match=cls):
            Sampler(unet, scheduler=sch)
        Sampler(unet, scheduler=sch, solver="ipndm")      # its path and timesteps, an update chosen by the user
    with pytest.raises(InvalidArgument, match="Supported"):
        ad.solver_of({"_class_name": cls})


def test_ddpm_fixed_large_is_refused():
    with pytest.raises(InvalidArgument, match="fixed_large"):
        ad.solver_of(diffusers.DDPMScheduler(variance_type="fixed_large"))


class ListNoise:
    """Step noise given as a list (draw 0 of each step): what diffusers drew, in order."""

    def __init__(self, draws):
        self.draws = draws

    def draw(self, i, j=0):
        return self.draws[i]


def diffusers_loop_and_ours(unet, scheduler, steps, solver=None, **step_kwargs):
    """(diffusers' own loop, Sampler(unet, scheduler=...)) from the same noise, diffsolve's step noise being the
    draws diffusers made from the same generator, in order; and diffsolve's plan."""
    noise = torch.randn(BATCH, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    g = torch.Generator().manual_seed(5)
    x = noise * sch.init_noise_sigma
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(sch.scale_model_input(x, t), t).sample, t, x, generator=g, **step_kwargs).prev_sample
    g = torch.Generator().manual_seed(5)
    draws = [torch.randn(noise.shape, generator=g) for _ in range(steps)]
    s = Sampler(unet, scheduler=scheduler, solver=solver, progress=False)
    plan = s.plan(steps)
    with torch.no_grad():
        ours = s.solve(plan, noise * ad.noise_scale_of(scheduler, steps), step_noise=ListNoise(draws)).samples
    return x, ours, s, plan


@pytest.mark.parametrize("cls,kw", [
    ("DDPMScheduler", {"clip_sample": False}),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("LCMScheduler", {}),
    ("LCMScheduler", {"original_inference_steps": 20, "timestep_scaling": 2.0, "prediction_type": "v_prediction"}),
])
def test_stochastic_schedulers_match_diffusers_loop_with_the_same_noise(unet, cls, kw):
    steps = 6
    scheduler = getattr(diffusers, cls)(**kw)
    x, ours, _, plan = diffusers_loop_and_ours(unet, scheduler, steps)
    err = float((ours - x).norm() / x.norm())
    assert err < peer_tolerance(ad.solver_of(scheduler), cls), f"{cls}: relative difference {err:.3g}"
    assert plan.nfe == steps


def test_lcm_timesteps_and_boundary_follow_the_scheduler(unet):
    sch = diffusers.LCMScheduler()
    for steps in (1, 2, 4, 8, 50):
        sch.set_timesteps(steps)
        assert ad.lcm_timesteps(steps).tolist() == sch.timesteps.tolist()
    with pytest.raises(InvalidArgument, match="at most original_inference_steps=50"):
        ad.lcm_timesteps(51)
    s = Sampler(unet, scheduler=sch, progress=False)
    assert isinstance(s.field, ad.LCMBoundary) and s.solver.name == "consistency"
    # the boundary condition is what makes one step differ from the plain x0 prediction at a small timestep
    x = torch.randn(BATCH, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    p = s.field.at(float(s.field.schedule.t_from_index(torch.tensor(3.0))))
    c_skip = 0.25 / (30.0 ** 2 + 0.25)
    want = c_skip * x + (30.0 / (30.0 ** 2 + 0.25) ** 0.5) * s.field.inner.denoise(x, p)
    torch.testing.assert_close(s.field.denoise(x, p), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("kw", [{}, {"prediction_type": "v_prediction", "original_inference_steps": 25}])
def test_tcd_matches_its_loop_with_the_same_noise(unet, eta, kw):
    """TCDScheduler: DDIM to floor((1 - eta) n'), noise back up to n'; the last step ends at alphas_cumprod[0]."""
    steps = 4
    solver = None if eta == 0.3 else ad.TCDSteps(gamma=eta)
    x, ours, s, plan = diffusers_loop_and_ours(unet, diffusers.TCDScheduler(**kw), steps, solver, eta=eta)
    assert isinstance(s.solver, ad.TCDSteps) and s.solver.gamma == eta
    err = float((ours - x).norm() / x.norm())
    assert err < peer_tolerance("tcd", "TCDScheduler"), f"eta={eta}: relative difference {err:.3g}"
    assert plan.nfe == steps
