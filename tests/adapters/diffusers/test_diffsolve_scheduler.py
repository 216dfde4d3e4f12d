"""DiffsolveScheduler: diffsolve solvers inside diffusers pipelines, against Sampler(unet, scheduler=...).

Tiny random-weight networks only (no downloads). The pipeline's samples must equal the Sampler's on the same
initial noise (and, for stochastic solvers, the same step noise: `seed=` on both sides).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import ClassifierFreeGuidance, InvalidArgument, Sampler  # noqa: E402
from diffsolve.pretrained_adapters.diffusers import (  # noqa: E402
    DiffsolveScheduler, from_diffusers, grid_options_of, noise_scale_of, supported_solvers)

SIZE, BATCH = 8, 2
ATOL = 1e-5           # pipelines return images in [0, 1]: absolute float32 agreement


@pytest.fixture(scope="module")
def unet():
    return tiny_unet2d(SIZE)


def ddpm_pipe(unet, scheduler):
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_image(x: torch.Tensor) -> np.ndarray:
    """What DDPMPipeline(output_type='np') does to the final state."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def pipeline_noise(seed: int, shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("solver", ["unipc_bh2", "dpmpp_2m", "deis", "lms", "ddim", "heun", "dpm_solver_2",
                                    "ddpm", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_ddpm_pipeline_equals_sampler(unet, solver):
    orig = diffusers.DDPMScheduler()
    pipe = ddpm_pipe(unet, DiffsolveScheduler.from_config(orig.config, solver=solver, seed=7))
    got = pipe(batch_size=BATCH, num_inference_steps=5, generator=torch.Generator().manual_seed(1),
               output_type="np").images
    s = Sampler(unet, scheduler=orig, solver=solver, progress=False)
    ref = s.run(5, noise=pipeline_noise(1, (BATCH, 1, SIZE, SIZE)), seed=7).samples
    err = float(np.abs(got - to_image(ref)).max())
    assert err < ATOL, f"{solver}: max abs difference {err:.3g}"
    sch = pipe.scheduler
    assert sch.order == s.solver.calls_per_step
    assert len(sch.timesteps) == s.plan(5).nfe             # one listed timestep per model call


def test_timesteps_follow_the_source_scheduler(unet):
    """The listed timesteps are the source class's (DDPM 'leading'); a Heun-like solver lists interior points twice."""
    orig = diffusers.DDPMScheduler()
    ref = diffusers.DDPMScheduler()
    ref.set_timesteps(5)
    sch = DiffsolveScheduler.from_config(orig.config, solver="unipc_bh2")
    sch.set_timesteps(5)
    assert sch.timesteps.tolist() == ref.timesteps.tolist()
    heun = DiffsolveScheduler.from_config(orig, solver="heun")           # a scheduler object works as well
    heun.set_timesteps(5)
    assert heun.order == 2 and heun.timesteps.tolist() == [800, 600, 600, 400, 400, 200, 200, 0, 0]


def test_changing_steps_between_calls_equals_fresh_scheduler(unet):
    orig = diffusers.DDPMScheduler()
    pipe = ddpm_pipe(unet, DiffsolveScheduler.from_config(orig.config, solver="dpmpp_3m_sde", seed=3))
    for n in (4, 7):
        pipe(batch_size=1, num_inference_steps=n, generator=torch.Generator().manual_seed(0), output_type="np")
    again = pipe(batch_size=BATCH, num_inference_steps=5, generator=torch.Generator().manual_seed(1),
                 output_type="np").images
    fresh = ddpm_pipe(unet, DiffsolveScheduler.from_config(orig.config, solver="dpmpp_3m_sde", seed=3))
    first = fresh(batch_size=BATCH, num_inference_steps=5, generator=torch.Generator().manual_seed(1),
                  output_type="np").images
    assert np.array_equal(again, first)


def test_refuses_adaptive_solvers_and_lists_supported():
    with pytest.raises(InvalidArgument, match="unipc_bh2") as e:
        DiffsolveScheduler(solver="dpm_adaptive")
    assert "adaptive" in str(e.value)
    assert "dpm_adaptive" not in supported_solvers() and "heun" in supported_solvers()


def test_step_before_set_timesteps_is_an_error():
    sch = DiffsolveScheduler(solver="euler")
    with pytest.raises(InvalidArgument, match="set_timesteps"):
        sch.step(torch.zeros(1, 1, 2, 2), 999, torch.zeros(1, 1, 2, 2))


def test_add_noise_matches_ddpm_scheduler():
    orig = diffusers.DDPMScheduler()
    sch = DiffsolveScheduler.from_config(orig.config)
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 499, 999])
    assert torch.allclose(sch.add_noise(x0, eps, t), orig.add_noise(x0, eps, t), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# A small text-conditioned pipeline (random-weight parts, classifier-free guidance, scale_model_input)
# ------------------------------------------------------------------------------------------------
class TinyTextEncoder(torch.nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.emb(ids)))


class TinyTextPipeline(diffusers.DiffusionPipeline):
    """The Stable Diffusion loop in miniature: CFG in eps space, scale_model_input, init_noise_sigma."""

    def __init__(self, unet, text_encoder, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, num_inference_steps: int = 5, guidance_scale: float = 3.0,
                 latents: torch.Tensor | None = None):
        cond = self.text_encoder(ids)
        uncond = self.text_encoder(torch.zeros_like(ids))
        emb = torch.cat([uncond, cond])
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps = self.unet(inp, t, encoder_hidden_states=emb).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        return latents


@pytest.fixture(scope="module")
def text_parts():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=SIZE, in_channels=2, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    return unet.eval().requires_grad_(False), TinyTextEncoder().eval().requires_grad_(False)


@pytest.mark.parametrize("solver", ["unipc_bh2", "heun", "edm_churn"])
def test_text_pipeline_with_guidance_equals_sampler(text_parts, solver):
    unet, enc = text_parts
    orig = diffusers.EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            timestep_spacing="trailing")
    opts = {"S_churn": 10.0} if solver == "edm_churn" else {}
    pipe = TinyTextPipeline(unet, enc, DiffsolveScheduler.from_config(orig.config, solver=solver, seed=5,
                                                                      solver_options=opts or None))
    pipe.set_progress_bar_config(disable=True)
    ids = torch.tensor([[3, 5, 7, 1], [2, 2, 9, 4]])
    noise = pipeline_noise(4, (2, 2, SIZE, SIZE))
    got = pipe(ids, num_inference_steps=5, latents=noise)
    # the same run through diffsolve: guidance on the field, the Euler scheduler's path, grid and solver options
    with torch.no_grad():
        cond, uncond = enc(ids), enc(torch.zeros_like(ids))
        field = ClassifierFreeGuidance(from_diffusers(unet, orig), 3.0, {"encoder_hidden_states": uncond})
        grid, grid_opts = grid_options_of(orig)
        # the pipeline starts at init_noise_sigma: the Euler family's sigma_max start, as diffusers does
        start = noise * noise_scale_of(orig, 5)
        ref = Sampler(field, solver, grid, grid_options=grid_opts, progress=False, **opts).run(
            5, noise=start, noise_scale="prior", seed=5, encoder_hidden_states=cond).samples
    err = float((got - ref).norm() / ref.norm())
    assert err < 1e-5, f"{solver}: relative difference {err:.3g}"


@pytest.mark.parametrize("solver", ["dpmpp_3m_sde", "heun"])
def test_set_begin_index_starts_mid_grid_like_a_fresh_run(unet, solver):
    """img2img: set_timesteps(n), set_begin_index(k), the loop over timesteps[k:] from a partly noised state equals
    a Sampler run on the rest of the grid from that state (noise_scale='prior': the state is used as is)."""
    orig = diffusers.DDPMScheduler()
    sch = DiffsolveScheduler.from_config(orig.config, solver=solver, seed=2)
    sch.set_timesteps(8)
    begin = 3 * sch.order
    full_t = sch.run.plan.t
    sch.set_begin_index(begin)
    x0, eps = torch.randn(2, 1, SIZE, SIZE) * 0.5, torch.randn(2, 1, SIZE, SIZE)
    x = sch.add_noise(x0, eps, sch.timesteps[begin:begin + 1])
    start = x.clone()
    with torch.no_grad():
        for t in sch.timesteps[begin:]:
            x = sch.step(unet(sch.scale_model_input(x, t), t).sample, t, x).prev_sample
        s = Sampler(unet, scheduler=orig, solver=solver, grid=full_t[3:].tolist(), grid_options={}, progress=False)
        ref = s.run(noise=start, noise_scale="prior", seed=2).samples
    assert float((x - ref).norm() / ref.norm()) < 1e-5


def _flow_net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth velocity field of (x, timestep) standing in for a flow-matching transformer."""
    return torch.tanh(1.3 * x + 0.002 * t.reshape(-1, *([1] * (x.dim() - 1)))) - 0.4 * x


@pytest.mark.parametrize("kw,call", [
    ({"shift": 3.0}, {"sigmas": [1.0, 0.8, 0.55, 0.3, 0.1]}),
    ({"use_dynamic_shifting": True}, {"num_inference_steps": 6, "mu": 0.7}),
    ({"use_dynamic_shifting": True}, {"sigmas": [1.0, 0.75, 0.5, 0.25], "mu": -0.4}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"num_inference_steps": 5, "mu": 1.3}),
])
def test_flow_matching_set_timesteps_with_sigmas_and_mu(kw, call):
    """SD3 / Flux pipelines call set_timesteps(sigmas=..., mu=...): the same timesteps and samples as
    FlowMatchEulerDiscreteScheduler's own loop."""
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**kw)
    ours = DiffsolveScheduler.from_config(ref.config, solver="euler")
    noise = pipeline_noise(3, (BATCH, 1, SIZE, SIZE))
    out = []
    for sch in (ref, ours):
        sch.set_timesteps(**call)
        x = noise * getattr(sch, "init_noise_sigma", 1.0)
        with torch.no_grad():
            for t in sch.timesteps:
                x = sch.step(_flow_net(x, t), t, x).prev_sample
        out.append(x)
    torch.testing.assert_close(ours.timesteps.float(), ref.timesteps.float(), rtol=1e-6, atol=1e-4)
    err = float((out[1] - out[0]).norm() / out[0].norm())
    assert err < 1e-5, f"{kw} {call}: relative difference {err:.3g}"


def test_flow_matching_mu_is_required_exactly_where_diffusers_uses_it():
    dyn = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(InvalidArgument, match="mu= is missing"):
        dyn.set_timesteps(5)
    static = DiffsolveScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=2.0).config)
    with pytest.raises(InvalidArgument, match="use_dynamic_shifting"):
        static.set_timesteps(5, mu=0.5)
    with pytest.raises(InvalidArgument, match="sigmas"):
        static.set_timesteps(sigmas=[1.0, 1.5])
    with pytest.raises(InvalidArgument, match="mu"):
        dyn.set_timesteps(5, mu="0.5")
