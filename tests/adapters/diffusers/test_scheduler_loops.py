"""Sampler(unet, scheduler=...) reproduces each scheduler's own loop where it departs from a clean grid.

* DEISMultistepScheduler on karras sigmas ends with a zero-length step (its last sigma is repeated): a model call
  that counts in its lower-order-final rule; diffsolve takes it too (one ulp long).
* DPMSolverSinglestepScheduler calls the model once per listed timestep and groups runs of orders 1, 2, (3) into
  one singlestep step whose intermediate points are the listed timesteps (`SchedulerSinglestep`).

* DDIMScheduler with 'linspace' spacing steps from its listed timestep n to n - T // steps, not to the next listed
  timestep (999 -> 899, then the network is called at 888): 57% apart on this tiny UNet when stepped cleanly.
* DPMSolver*/UniPC/DEIS with karras sigmas feed the network rounded timesteps (the update keeps the sigma).
`loop="clean"` (sampler_from_diffusers) keeps the grid-to-grid steps and exact model times.
Agreement: 1e-5 relative in float32 (measured 2e-7 .. 5e-7).
"""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import Sampler  # noqa: E402
from diffsolve.pretrained_adapters.diffusers import noise_scale_of, sampler_from_diffusers  # noqa: E402

RTOL = 1e-5


@pytest.fixture(scope="module")
def unet():
    return tiny_unet2d(8)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def run_diffusers(scheduler, unet, noise, steps):
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    x = noise * sch.init_noise_sigma
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(sch.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x, len(sch.timesteps)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("cls,kw", [
    ("DDIMScheduler", {"timestep_spacing": "linspace", "clip_sample": False}),
    ("DDIMScheduler", {"timestep_spacing": "linspace", "clip_sample": False, "set_alpha_to_one": False}),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": False}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    ("DEISMultistepScheduler", {"use_karras_sigmas": True}),
    ("DEISMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {}),
    ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True, "solver_order": 3}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "solver_type": "heun", "final_sigmas_type": "sigma_min"}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "solver_order": 3, "solver_type": "heun",
                                      "final_sigmas_type": "sigma_min", "lower_order_final": False}),
])
@pytest.mark.parametrize("steps", [6, 7, 10])
def test_scheduler_loop_reproduced_by_default(unet, noise, cls, kw, steps):
    scheduler = getattr(diffusers, cls)(**kw)
    ref, calls = run_diffusers(scheduler, unet, noise, steps)
    with torch.no_grad():
        out = Sampler(unet, scheduler=scheduler, progress=False).run(steps, noise=noise * noise_scale_of(scheduler, steps))
        clean = sampler_from_diffusers(unet, scheduler, loop="clean", progress=False).run(
            steps, noise=noise * noise_scale_of(scheduler, steps))
    assert out.nfe == calls
    assert rel(out.samples, ref) < RTOL, f"{cls} {kw}: {rel(out.samples, ref):.3g}"
    # the clean variant is a different (documented) loop, measurably further from diffusers than ours (except
    # DDIM trailing with T / steps an integer, where the step targets are the listed timesteps)
    if not (kw.get("timestep_spacing") == "trailing" and 1000 % steps == 0):
        assert rel(clean.samples, ref) > 10 * max(rel(out.samples, ref), 1e-7)


def test_ddim_linspace_steps_to_t_minus_ratio(unet):
    scheduler = diffusers.DDIMScheduler(timestep_spacing="linspace", clip_sample=False)
    s = Sampler(unet, scheduler=scheduler, progress=False)
    plan = s.plan(10)
    sch = s.field.schedule
    first = plan.coeffs[0]
    # the first step's target is timestep 899 (999 - 1000 // 10), not the next listed timestep 888
    q = s.field.at(float(sch.t_from_index(torch.tensor(899.0))))
    a = q.sigma / plan.points[0].sigma
    assert first.a == pytest.approx(a, rel=1e-12)
    assert float(sch.timestep_index(plan.t[1])) == pytest.approx(888.0)
