"""Whole diffusers pipelines, built offline from tiny seeded random components, run three ways from the same
noise and conditioning: with their own diffusers scheduler, with `DiffsolveScheduler.from_config(config,
solver=<matching solver>)` swapped in, and as `Sampler(unet, scheduler=<the diffusers scheduler>)`.

* DDPMPipeline (DDPMScheduler, solver 'ddpm': step noise from the pipeline's generator, handed to the Sampler as
  the same draws in order) and DDIMPipeline (DDIMScheduler, eta=0), on the shared tiny UNet2DModel.
* StableDiffusionPipeline and StableDiffusionImg2ImgPipeline: tiny UNet2DConditionModel, AutoencoderKL and
  CLIPTextModel, a CLIPTokenizer from a character-level vocabulary written to a temporary folder, classifier-free
  guidance. The Sampler gets the pipeline's guidance as a model (`GuidedUNet`: the same batched call and mix).
  Img2img starts mid-schedule (strength < 1): through the pipeline's set_begin_index, and with a scheduler that
  has none, so the run locates its start from the first timestep it is stepped at.
* FluxPipeline (FlowMatchEulerDiscreteScheduler with dynamic shifting: set_timesteps(sigmas=, mu=)), a tiny
  FluxTransformer2DModel fed precomputed prompt embeddings (T5 needs a sentencepiece model, which cannot be built
  offline here); the Sampler takes the scheduler's sigmas as its grid, since mu is the pipeline's.

DDIM with clip_sample=True keeps the network's noise beside the clipped prediction (diffusers' default step),
and DiffsolveScheduler's init_noise_sigma is its source class's start (the Euler family's sigma_max).
Agreement: max |difference| below 5e-6 of max(1, max |reference|) (float32; measured up to 1.6e-6).
"""
from __future__ import annotations

import dataclasses
import json
import string

import numpy as np
import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import Sampler  # noqa: E402
from diffsolve.pretrained_adapters.diffusers import DDIMStepTargets, DiffsolveScheduler, noise_scale_of  # noqa: E402

RTOL = 5e-6          # of max(1, max |reference|): the random networks' samples reach ~50
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def max_abs(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a)).double() - torch.as_tensor(np.asarray(b)).double()).abs().max())


def check(name: str, ref, via_scheduler, via_sampler) -> None:
    ref, via_scheduler, via_sampler = (torch.as_tensor(v) for v in (ref, via_scheduler, via_sampler))
    d_sch, d_smp = max_abs(via_scheduler, ref), max_abs(via_sampler, ref)
    scale = max(1.0, float(np.abs(np.asarray(ref)).max()))
    print(f"\n{name}: max|pipeline - DiffsolveScheduler| = {d_sch:.3g}, max|pipeline - Sampler| = {d_smp:.3g}, "
          f"max|pipeline| = {scale:.3g}")
    assert d_sch < RTOL * scale and d_smp < RTOL * scale, f"{name}: {d_sch:.3g}, {d_smp:.3g} (scale {scale:.3g})"


def final_state(pipe, **call) -> torch.Tensor:
    """The last state DDPMPipeline / DDIMPipeline's scheduler returned: their images clamp it to [0, 1], where a
    random network's samples mostly saturate."""
    last = {}
    step = pipe.scheduler.step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        last["x"] = out.prev_sample
        return out

    pipe.scheduler.step = recording
    try:
        pipe(**call)
    finally:
        del pipe.scheduler.step
    return last["x"]


class ListNoise:
    """Step noise given as a list (draw 0 of each step): the draws the pipeline's generator made, in order."""

    def __init__(self, draws):
        self.draws = draws

    def draw(self, i, j=0):
        return self.draws[i]


@pytest.fixture(scope="module")
def unet():
    return tiny_unet2d(8)


# --- unconditional pipelines ---------------------------------------------------------------------------------

def test_ddpm_pipeline(unet):
    steps, shape = 10, (2, 1, 8, 8)
    scheduler = diffusers.DDPMScheduler()          # fixed_small variance, clip_sample=True, 'leading' spacing
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return final_state(pipe, batch_size=2, generator=torch.Generator().manual_seed(0),
                           num_inference_steps=steps, output_type="np")

    ref = run()
    pipe.scheduler = DiffsolveScheduler.from_config(scheduler.config, solver="ddpm")
    ours = run()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(shape, generator=g)                     # the pipeline's first draw, then one per step
    draws = [torch.randn(shape, generator=g) for _ in range(steps)]
    s = Sampler(unet, scheduler=scheduler, progress=False)
    with torch.no_grad():
        x = s.solve(s.plan(steps), noise * noise_scale_of(scheduler, steps), step_noise=ListNoise(draws)).samples
    check("DDPMPipeline", ref, ours, x)


def ddim_runs(kw, clipped, steps=10, shape=(2, 1, 8, 8), dtype=torch.float32):
    """DDIMPipeline with DDIMScheduler(**kw), then with DiffsolveScheduler(solver='ddim'), and the Sampler."""
    unet = tiny_unet2d(8).to(dtype)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(**kw))
    pipe.set_progress_bar_config(disable=True)
    scheduler = pipe.scheduler

    def run():
        return final_state(pipe, batch_size=2, generator=torch.Generator().manual_seed(0),
                           num_inference_steps=steps, eta=0.0, use_clipped_model_output=clipped, output_type="np")

    ref = run()
    pipe.scheduler = DiffsolveScheduler.from_config(scheduler.config, solver="ddim")
    ours = run()
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    s = Sampler(unet, scheduler=scheduler, progress=False)
    if clipped:
        s.solver.clipped_model_output = True          # what DiffsolveScheduler.step reads from the pipeline
    with torch.no_grad():
        x = s.run(steps, noise=noise * noise_scale_of(scheduler, steps)).samples
    return ref, ours, x


@pytest.mark.parametrize("kw,clipped", [({}, None), ({}, True), ({"thresholding": True}, None),
                                        ({"thresholding": True}, True),
                                        ({"clip_sample": False}, None),
                                        ({"clip_sample": False, "timestep_spacing": "trailing"}, None)])
def test_ddim_pipeline(kw, clipped):
    """With clip_sample=True (DDIMScheduler's default) or thresholding, DDIM's step keeps the network's own noise
    beside the clipped data prediction, unless the pipeline passes use_clipped_model_output=True. That step in
    float64: at t = 900 the data prediction (x - sigma eps) / alpha carries float32 rounding times 1 / alpha ~ 90 on
    either side, which clipping no longer cancels (1.3e-4 apart in float32)."""
    raw = clipped is None and (kw.get("clip_sample", True) or kw.get("thresholding"))
    check(f"DDIMPipeline {kw} use_clipped_model_output={clipped}",
          *ddim_runs(kw, clipped, dtype=torch.float64 if raw else torch.float32))


# --- Stable Diffusion ------------------------------------------------------------------------------------------

def tiny_tokenizer(folder):
    """A CLIPTokenizer over single characters (no merges): written as vocab.json and merges.txt."""
    from transformers import CLIPTokenizer
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase) + \
        [c + "</w>" for c in string.ascii_lowercase]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12)


@pytest.fixture(scope="module")
def sd_parts(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=54, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        max_position_embeddings=12, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    parts = {"unet": unet, "vae": vae, "text_encoder": text}
    for m in parts.values():
        m.eval().requires_grad_(False)
    parts["tokenizer"] = tiny_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))
    return {**parts, "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


class GuidedUNet(torch.nn.Module):
    """The Stable Diffusion pipelines' classifier-free guidance as a model: one batched call on [uncond, cond]."""

    def __init__(self, unet, uncond: torch.Tensor, scale: float):
        super().__init__()
        self.unet, self.uncond, self.scale = unet, uncond, scale

    def forward(self, x, timestep, encoder_hidden_states):
        t = torch.as_tensor(timestep).reshape(-1)[:1].expand(2 * x.shape[0])
        out = self.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([self.uncond, encoder_hidden_states]))
        u, c = out.sample.chunk(2)
        return u + self.scale * (c - u)


PROMPTS, GUIDANCE = ["a cat", "blue sky"], 3.0


def sd_inputs(pipe):
    """(prompt embeddings, negative embeddings) as the pipeline computes them for PROMPTS and empty negatives."""
    with torch.no_grad():
        return pipe.encode_prompt(PROMPTS, "cpu", 1, True)


SD_SCHEDULERS = [("DPMSolverMultistepScheduler", {}, "dpmpp_2m"),
                 ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, "euler"),
                 ("UniPCMultistepScheduler", {}, "unipc_bh2"),
                 ("HeunDiscreteScheduler", {}, "heun"),
                 # stochastic: the step noise the pipeline's generator draws, handed to the Sampler in order
                 ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, "euler_ancestral"),
                 ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "dpmpp_2m_sde"),
                 # as built here, the pipeline sets steps_offset=1 and clip_sample=False on the scheduler
                 ("DDIMScheduler", {"set_alpha_to_one": False}, "ddim")]


@pytest.mark.parametrize("cls,kw,solver", SD_SCHEDULERS)
def test_stable_diffusion_pipeline(sd_parts, cls, kw, solver):
    steps = 6
    scheduler = getattr(diffusers, cls)(**SD_BETAS, **kw)
    pipe = diffusers.StableDiffusionPipeline(**sd_parts, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def run(start):
        return pipe(PROMPTS, height=16, width=16, num_inference_steps=steps, guidance_scale=GUIDANCE,
                    latents=start, generator=torch.Generator().manual_seed(7), output_type="latent").images

    with torch.no_grad():
        ref = run(latents)
        pipe.scheduler = DiffsolveScheduler.from_config(scheduler.config, solver=solver)
        ours = run(latents)       # init_noise_sigma: the source class's start, in diffsolve's state
        cond, uncond = sd_inputs(pipe)
        g = torch.Generator().manual_seed(7)
        draws = [torch.randn(latents.shape, generator=g) for _ in range(steps)]
        s = Sampler(GuidedUNet(sd_parts["unet"], uncond, GUIDANCE), scheduler=scheduler, progress=False)
        x = s.solve(s.plan(steps), latents * noise_scale_of(scheduler, steps), step_noise=ListNoise(draws),
                    encoder_hidden_states=cond).samples
    check(f"StableDiffusionPipeline {cls} ({solver})", ref, ours, x)


class LocatingScheduler(DiffsolveScheduler):
    """A DiffsolveScheduler without set_begin_index, as the pipeline sees it: the run finds its start from the
    first timestep it is stepped at."""

    @property
    def set_begin_index(self):
        raise AttributeError("set_begin_index")


IMG2IMG_SCHEDULERS = [("DPMSolverMultistepScheduler", {}, "dpmpp_2m"),
                      ("EulerDiscreteScheduler", {}, "euler"),
                      ("UniPCMultistepScheduler", {}, "unipc_bh2"),
                      ("DDIMScheduler", {"set_alpha_to_one": False, "timestep_spacing": "trailing"}, "ddim")]


@pytest.mark.parametrize("cls,kw,solver", IMG2IMG_SCHEDULERS)
def test_stable_diffusion_img2img_pipeline(sd_parts, cls, kw, solver):
    steps, strength = 8, 0.6
    scheduler = getattr(diffusers, cls)(**SD_BETAS, **kw)
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**sd_parts, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    # an image with as many channels as the latents is taken as the initial latents (no VAE encoding draw)
    init = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4)) * 0.5

    def run():
        return pipe(PROMPTS, image=init, strength=strength, num_inference_steps=steps, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(5), output_type="latent").images

    with torch.no_grad():
        ref = run()
        pipe.scheduler = DiffsolveScheduler.from_config(scheduler.config, solver=solver)
        ours = run()
        pipe.scheduler = LocatingScheduler.from_config(scheduler.config, solver=solver)
        located = run()
        # the Sampler: the rest of the scheduler's grid, from the state the pipeline noised its latents to
        noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(5))
        begin = steps - int(steps * strength)
        s = Sampler(GuidedUNet(sd_parts["unet"], sd_inputs(pipe)[1], GUIDANCE), scheduler=scheduler, progress=False)
        full = s.plan(steps)
        sch, t = s.field.schedule, full.t
        start = sch.alpha(t[begin]) * init + sch.sigma(t[begin]) * noise
        if isinstance(s.solver, DDIMStepTargets):
            # DDIM steps n -> n - T // steps with the run's full step count, which a plan of the rest of the grid
            # would not know (it would take T // 4): single-step, so the full plan's last steps are the run
            plan = dataclasses.replace(full, t=t[begin:], points=full.points[begin:], coeffs=full.coeffs[begin:],
                                       nfe=steps - begin)
        else:       # multistep solvers start with no history, as diffusers' do after set_begin_index
            s = Sampler(s.field, s.solver, t[begin:].tolist(), progress=False)
            plan = s.plan()
        x = s.solve(plan, start, noise_scale="prior", encoder_hidden_states=sd_inputs(pipe)[0]).samples
    check(f"StableDiffusionImg2ImgPipeline {cls} ({solver}), strength {strength}", ref, ours, x)
    d = max_abs(located, ref)
    print(f"  start located from the timestep (no set_begin_index): max|pipeline - DiffsolveScheduler| = {d:.3g}")
    assert d < RTOL * max(1.0, float(ref.abs().max())), f"start located from the timestep: {d:.3g}"


# --- flow matching: Flux -----------------------------------------------------------------------------------------

class FluxTime(torch.nn.Module):
    """FluxPipeline's call of its transformer: the timestep divided by 1000, no guidance embedding."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer

    def forward(self, x, timestep, **kwargs):
        t = torch.as_tensor(timestep).reshape(-1)[:1].expand(x.shape[0]).to(x.dtype)
        return self.transformer(hidden_states=x, timestep=t / 1000, guidance=None, return_dict=False, **kwargs)[0]


def test_flux_pipeline():
    steps, height = 6, 64
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8]).eval().requires_grad_(False)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    pipe = diffusers.FluxPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(6)
    prompt_embeds, pooled = torch.randn(2, 5, 32, generator=g), torch.randn(2, 32, generator=g)
    side = 2 * (height // (pipe.vae_scale_factor * 2))
    latents = torch.randn(2, (side // 2) ** 2, 4, generator=g)      # packed 2x2 patches of 1 channel

    def run():
        return pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, height=height, width=height,
                    num_inference_steps=steps, latents=latents, output_type="latent").images

    with torch.no_grad():
        ref = run()
        used = pipe.scheduler
        pipe.scheduler = DiffsolveScheduler.from_config(scheduler.config, solver="euler")
        ours = run()
        img_ids = diffusers.FluxPipeline._prepare_latent_image_ids(2, side // 2, side // 2, "cpu", torch.float32)
        s = Sampler(FluxTime(transformer), scheduler=scheduler, grid=used.sigmas.tolist(), grid_options={},
                    progress=False)
        x = s.run(noise=latents, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
                  txt_ids=torch.zeros(5, 3), img_ids=img_ids).samples
    check("FluxPipeline FlowMatchEulerDiscreteScheduler (euler)", ref, ours, x)


# --- the adapter fixes these pipelines needed, one by one ---------------------------------------------------------

def test_ddim_clipping_keeps_the_network_noise(unet):
    """DDIMScheduler(clip_sample=True) steps x' = alpha' clip(x0) + sigma' eps with the network's eps; diffsolve's
    DDIM on a clipping field would re-derive eps from clip(x0), diffusers' use_clipped_model_output=True."""
    from diffsolve.pretrained_adapters.diffusers.ddim import DDIMModelNoise
    scheduler = diffusers.DDIMScheduler()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out = {}
    for clipped in (False, True):
        sch = diffusers.DDIMScheduler.from_config(scheduler.config)
        sch.set_timesteps(5)
        x = noise.clone()
        with torch.no_grad():
            for t in sch.timesteps:
                x = sch.step(unet(x, t).sample, t, x, use_clipped_model_output=clipped).prev_sample
        out[clipped] = x
    s = Sampler(unet, scheduler=scheduler, progress=False)
    assert isinstance(s.solver, DDIMModelNoise) and s.field.clip_x0 is None
    with torch.no_grad():
        x = s.run(5, noise=noise).samples
    assert max_abs(x, out[False]) < 1e-4 < max_abs(out[True], out[False])
    assert isinstance(DiffsolveScheduler.from_config(scheduler.config, solver="ddim").solver, DDIMModelNoise)
    assert not isinstance(DiffsolveScheduler.from_config(scheduler.config, solver="heun").solver, DDIMModelNoise)
    assert not isinstance(Sampler(unet, scheduler=diffusers.DDIMScheduler(clip_sample=False)).solver, DDIMModelNoise)


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
def test_init_noise_sigma_is_the_source_class_start(spacing):
    """Euler-family schedulers with 'linspace' / 'trailing' spacing start x / alpha from noise * sigma_max, a
    standard deviation sigma(t_max) < 1 of diffsolve's state: DiffsolveScheduler's init_noise_sigma says so."""
    for cls in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "DDIMScheduler"):
        orig = getattr(diffusers, cls)(**SD_BETAS, timestep_spacing=spacing)
        d = DiffsolveScheduler.from_config(orig.config, solver="euler")
        d.set_timesteps(7)
        assert d.init_noise_sigma == pytest.approx(noise_scale_of(orig, 7), rel=1e-6)
        assert (d.init_noise_sigma < 1) == (cls != "DDIMScheduler" and spacing != "leading"), (cls, d.init_noise_sigma)


def test_values_a_pipeline_changed_after_construction_are_kept():
    """Stable Diffusion pipelines set steps_offset=1 and clip_sample=False on an outdated scheduler config and leave
    both listed in _use_default_values: from_config would bring the class defaults back."""
    pipe_scheduler = diffusers.DDIMScheduler(**SD_BETAS)
    cfg = dict(pipe_scheduler.config)
    cfg.update(steps_offset=1, clip_sample=False)          # what the pipeline does to the scheduler's config
    pipe_scheduler._internal_dict = diffusers.configuration_utils.FrozenDict(cfg)
    assert {"steps_offset", "clip_sample"} <= set(pipe_scheduler.config["_use_default_values"])
    d = DiffsolveScheduler.from_config(pipe_scheduler.config, solver="ddim")
    src = d._source_config()
    assert src["steps_offset"] == 1 and src["clip_sample"] is False
    d.set_timesteps(6)
    pipe_scheduler.set_timesteps(6)
    assert d.timesteps.tolist() == pipe_scheduler.timesteps.tolist()
    # a key still at its default keeps taking the source class's default (a DDPM config's 'leading' spacing)
    assert DiffsolveScheduler.from_config(diffusers.DDPMScheduler().config)._source_config()["timestep_spacing"] \
        == "leading"


def test_sampler_with_a_dynamic_shifting_scheduler_takes_an_explicit_grid(unet):
    """mu is the pipeline's (per resolution): Sampler(model, scheduler=...) builds, refuses to plan its default grid
    naming the way out, and runs on grid= (the scheduler's sigmas after set_timesteps(sigmas=, mu=))."""
    from diffsolve.errors import InvalidArgument
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    s = Sampler(unet, scheduler=scheduler, progress=False)
    with pytest.raises(InvalidArgument, match="use_dynamic_shifting=True needs mu"):
        s.plan(4)
    scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25], mu=0.8)
    s = Sampler(unet, scheduler=scheduler, grid=scheduler.sigmas.tolist(), grid_options={}, progress=False)
    torch.testing.assert_close(s.plan(4).t.float(), scheduler.sigmas.float())
