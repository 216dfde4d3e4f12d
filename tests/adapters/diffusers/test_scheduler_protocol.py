"""DiffsolveScheduler keeps the contract a diffusers pipeline relies on: the timesteps and noise levels diffusers
lists, its scheduler attributes, where a loop may start, config round trips, and named errors for bad input.

Reference runs are diffusers' own schedulers stepped over the same tiny random UNet from the same noise.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import InvalidArgument, Sampler  # noqa: E402
from diffsolve.pretrained_adapters.diffusers import DiffsolveScheduler  # noqa: E402

RTOL = 1e-5


@pytest.fixture(scope="module")
def unet():
    return tiny_unet2d(8)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def loop(scheduler, unet, x, steps=None, start=0, **set_kwargs):
    """A pipeline's loop: set_timesteps, then scale_model_input / network / step over timesteps[start:]."""
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps, **set_kwargs)
    x = x * sch.init_noise_sigma
    with torch.no_grad():
        for t in sch.timesteps[start:]:
            x = sch.step(unet(sch.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x, sch


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- timesteps and noise levels -------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [10, 25])
def test_karras_ending_at_sigma_min_runs_like_dpmsolver(unet, noise, steps):
    """diffusers' karras grid ending at sigma_min repeats its last noise level: a zero-length step that returns its
    input. Both the scheduler and Sampler(scheduler=) give diffusers' sample; from 15 steps on without that step."""
    ref_sch = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, final_sigmas_type="sigma_min")
    ref, ref_sch = loop(ref_sch, unet, noise, steps)
    ours, sch = loop(DiffsolveScheduler.from_config(ref_sch.config, solver="dpmpp_2m"), unet, noise, steps)
    assert rel(ours, ref) < RTOL
    listed = ref_sch.timesteps.tolist()
    assert sch.timesteps.tolist() == (listed[:-1] if steps >= 15 else listed)
    with torch.no_grad():
        out = Sampler(unet, scheduler=ref_sch, progress=False).run(steps, noise=noise)
    assert rel(out.samples, ref) < RTOL


def test_zero_length_end_without_lower_order_final(unet, noise):
    """lower_order_final=False: diffusers' zero-length end step is second order there and returns its input."""
    ref_sch = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True, final_sigmas_type="sigma_min",
                                                    lower_order_final=False)
    ref, _ = loop(ref_sch, unet, noise, 8)
    ours = DiffsolveScheduler.from_config(ref_sch.config, solver="dpmpp_2m", solver_options={"lower_order_final": False})
    got, _ = loop(ours, unet, noise, 8)
    with torch.no_grad():
        out = Sampler(unet, scheduler=ref_sch, progress=False).run(8, noise=noise)
    assert rel(got, ref) < RTOL and rel(out.samples, ref) < RTOL


def test_ddpm_pipeline_with_karras_sigma_min_at_many_steps(unet):
    sch = DiffsolveScheduler.from_config(diffusers.DDPMScheduler().config, solver="dpmpp_2m", use_karras_sigmas=True,
                                         final_sigmas_type="sigma_min")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sch)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(batch_size=1, num_inference_steps=25, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert np.isfinite(image).all()
    ac0 = float(sch.alphas_cumprod[0])
    assert float(sch.sigmas[-1]) == pytest.approx(((1 - ac0) / ac0) ** 0.5, rel=1e-6)   # ends at sigma_min


@pytest.mark.parametrize("source", [diffusers.DPMSolverMultistepScheduler, diffusers.DDPMScheduler])
@pytest.mark.parametrize("steps", [7, 20])
def test_karras_timesteps_are_rounded_like_dpmsolver(source, steps):
    ref = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    ref.set_timesteps(steps)
    sch = DiffsolveScheduler.from_config(source().config, use_karras_sigmas=True)
    sch.set_timesteps(steps)
    assert sch.timesteps.dtype == torch.int64
    assert sch.timesteps.tolist() == ref.timesteps.tolist()
    torch.testing.assert_close(sch.sigmas, ref.sigmas, rtol=1e-6, atol=0)


def test_scheduler_and_sampler_feed_the_network_dpmsolver_timesteps(unet, noise):
    """Sampler(unet, scheduler=DiffsolveScheduler) and the scheduler's loop both reproduce diffusers on karras."""
    ref_sch = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    ref, _ = loop(ref_sch, unet, noise, 8)
    ours = DiffsolveScheduler.from_config(ref_sch.config, solver="dpmpp_2m")
    got, _ = loop(ours, unet, noise, 8)
    with torch.no_grad():
        out = Sampler(unet, scheduler=ours, progress=False).run(8, noise=noise)
    assert rel(got, ref) < RTOL and rel(out.samples, ref) < RTOL


@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_custom_timesteps_end_where_final_sigmas_type_says(unet, noise, final):
    listed = [999, 800, 500, 300, 120, 40]
    ref_sch = diffusers.DPMSolverMultistepScheduler(final_sigmas_type=final)
    ref, ref_sch = loop(ref_sch, unet, noise, timesteps=listed)
    sch = DiffsolveScheduler.from_config(ref_sch.config, solver="dpmpp_2m")
    got, sch = loop(sch, unet, noise, timesteps=listed)
    assert sch.timesteps.tolist() == listed
    torch.testing.assert_close(sch.sigmas, ref_sch.sigmas, rtol=1e-6, atol=0)
    assert rel(got, ref) < RTOL


@pytest.mark.parametrize("flag", ["use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_other_sigma_spacings_match_dpmsolver(unet, noise, flag):
    pytest.importorskip("scipy")
    ref_sch = diffusers.DPMSolverMultistepScheduler(**{flag: True})
    ref, ref_sch = loop(ref_sch, unet, noise, 9)
    got, sch = loop(DiffsolveScheduler.from_config(ref_sch.config, solver="dpmpp_2m"), unet, noise, 9)
    assert sch.timesteps.tolist() == ref_sch.timesteps.tolist()
    torch.testing.assert_close(sch.sigmas, ref_sch.sigmas, rtol=1e-6, atol=0)
    assert rel(got, ref) < RTOL
    with torch.no_grad():
        out = Sampler(unet, scheduler=ref_sch, progress=False).run(9, noise=noise)
    assert rel(out.samples, ref) < RTOL


def test_two_sigma_spacings_at_once_are_refused():
    with pytest.raises(InvalidArgument, match="use_karras_sigmas and use_lu_lambdas"):
        DiffsolveScheduler(use_karras_sigmas=True, use_lu_lambdas=True).set_timesteps(5)


def test_zero_terminal_snr_with_linear_betas(unet, noise):
    ref_sch = diffusers.DPMSolverMultistepScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    ref, ref_sch = loop(ref_sch, unet, noise, 10)
    got, sch = loop(DiffsolveScheduler.from_config(ref_sch.config, solver="dpmpp_2m"), unet, noise, 10)
    assert sch.timesteps.tolist() == ref_sch.timesteps.tolist()
    torch.testing.assert_close(sch.alphas_cumprod, ref_sch.alphas_cumprod, rtol=0, atol=0)
    assert torch.isfinite(got).all() and rel(got, ref) < RTOL


def test_as_many_steps_as_training_timesteps_lists_each_once():
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=50)
    ref.set_timesteps(60)
    sch = DiffsolveScheduler(num_train_timesteps=50)
    sch.set_timesteps(60)
    once = list(dict.fromkeys(ref.timesteps.tolist()))
    assert len(once) < len(ref.timesteps) and sch.timesteps.tolist() == once


# --- scheduler attributes -------------------------------------------------------------------------------------
def test_betas_alphas_cumprod_and_sigmas_mean_what_they_mean_in_diffusers():
    ref = diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    sch = DiffsolveScheduler.from_config(ref.config)
    for name in ("betas", "alphas", "alphas_cumprod"):
        torch.testing.assert_close(getattr(sch, name), getattr(ref, name), rtol=0, atol=0)
    ref.set_timesteps(12)
    sch.set_timesteps(12)
    assert len(sch.sigmas) == len(sch.timesteps) + 1
    torch.testing.assert_close(sch.sigmas, ref.sigmas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("algorithm,solver", [("dpmsolver++", "dpmpp_2m"), ("dpmsolver++", "heun")])
def test_dynamic_thresholding_matches_diffusers(unet, noise, algorithm, solver):
    cfg = {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9}
    ref_sch = diffusers.DPMSolverMultistepScheduler(algorithm_type=algorithm, **cfg)
    ours = DiffsolveScheduler.from_config(ref_sch.config, solver=solver)
    got, _ = loop(ours, unet, noise * 3, 6)
    with torch.no_grad():
        out = Sampler(unet, scheduler=ours, progress=False).run(6, noise=noise * 3)
        plain = Sampler(unet, scheduler=DiffsolveScheduler(solver=solver), progress=False).run(6, noise=noise * 3)
    assert rel(got, out.samples) < RTOL
    assert rel(got, plain.samples) > 1e-3          # the thresholding acts on this run
    if solver == "dpmpp_2m":
        ref, _ = loop(ref_sch, unet, noise * 3, 6)
        assert rel(got, ref) < RTOL


def test_thresholding_is_refused_for_flow_matching():
    with pytest.raises(InvalidArgument, match="thresholding"):
        DiffsolveScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", thresholding=True)


# --- where a loop starts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["dpmpp_2m", "heun"])
def test_loop_starting_mid_schedule_finds_its_index(unet, noise, solver):
    """img2img pipelines loop over timesteps[k:] without set_begin_index: the first timestep says where."""
    sch = DiffsolveScheduler(solver=solver)
    sch.set_timesteps(8)
    k = 3 * sch.order
    assert sch.step_index is None and sch.begin_index is None
    x = sch.add_noise(noise * 0.3, noise, sch.timesteps[k:k + 1])
    located, _ = loop(sch, unet, x, 8, start=k)
    told = copy.deepcopy(sch)
    told.set_timesteps(8)
    told.set_begin_index(k)
    assert told.begin_index == k
    y = x
    with torch.no_grad():
        for t in told.timesteps[k:]:
            y = told.step(unet(told.scale_model_input(y, t), t).sample, t, y).prev_sample
    assert told.step_index == len(told.timesteps)
    torch.testing.assert_close(located, y, rtol=0, atol=0)


def test_timestep_outside_the_schedule_is_refused(unet, noise):
    sch = DiffsolveScheduler(solver="dpm_solver_2")
    sch.set_timesteps(5)
    out = torch.zeros_like(noise)
    with pytest.raises(InvalidArgument, match="timestep=123 is not in the schedule"):
        sch.step(out, 123, noise)
    with pytest.raises(InvalidArgument, match="inside a step"):
        sch.step(out, sch.timesteps[1], noise)                 # the midpoint of the first step
    sch.step(out, sch.timesteps[0], noise)
    assert sch.step_index == 1
    with pytest.raises(InvalidArgument, match="expects listed timestep"):
        sch.step(out, sch.timesteps[3], noise)


# --- configs --------------------------------------------------------------------------------------------------
def test_defaults_of_the_source_stay_defaults_through_diffsolve():
    """DDPM's default 'leading' spacing is not a choice: a scheduler made from the DiffsolveScheduler's config
    takes its own default, as it does from DDPM's config directly."""
    ddpm = diffusers.DDPMScheduler()
    ours = DiffsolveScheduler.from_config(ddpm.config)
    ours.set_timesteps(5)
    assert ours.timesteps.tolist() == [800, 600, 400, 200, 0]     # the source's default spacing drives the run
    direct = diffusers.EulerDiscreteScheduler.from_config(ddpm.config)
    through = diffusers.EulerDiscreteScheduler.from_config(ours.config)
    assert through.config.timestep_spacing == direct.config.timestep_spacing == "linspace"
    again = DiffsolveScheduler.from_config(ours.config)
    again.set_timesteps(5)
    assert again.timesteps.tolist() == [800, 600, 400, 200, 0]


# --- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"timesteps": [100, 500]}, "strictly decreasing"),
    ({"timesteps": [500, 500, 10]}, "repeats"),
    ({"timesteps": [1000, 10]}, r"must lie in \[0, 999\]"),
    ({"timesteps": []}, r"timesteps=\[\]"),
    ({"sigmas": [float("nan"), 1.0]}, r"sigmas\[0\]=nan"),
    ({"sigmas": [1e6, 1.0]}, r"sigmas\[0\]=1e\+06: above"),
    ({"num_inference_steps": 0}, "num_inference_steps=0"),
    ({"num_inference_steps": 2.5}, "num_inference_steps=2.5"),
])
def test_bad_set_timesteps_arguments_are_named(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        DiffsolveScheduler().set_timesteps(**kwargs)


def test_numpy_integer_step_counts_are_accepted():
    sch = DiffsolveScheduler()
    sch.set_timesteps(np.int64(10))
    ref = DiffsolveScheduler()
    ref.set_timesteps(10)
    assert sch.timesteps.tolist() == ref.timesteps.tolist()
    sch.set_begin_index(np.int64(2))


def test_bad_scheduler_arguments_are_named():
    with pytest.raises(InvalidArgument, match="solver_options='x'"):
        DiffsolveScheduler(solver_options="x")
    sch = DiffsolveScheduler()
    with pytest.raises(InvalidArgument, match="holds -5"):
        sch.add_noise(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([-5]))
