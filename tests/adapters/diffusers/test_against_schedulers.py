"""diffsolve solvers against diffusers' own schedulers: same tiny random UNet, same noise, same timesteps.

The diffusers loop is the documented one (set_timesteps; for t: unet(scale_model_input(x, t), t).sample ->
scheduler.step(...).prev_sample). Where a scheduler differs from the diffsolve solver by design, the test says
how and checks the documented difference instead of agreement.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_unet2d

diffusers = pytest.importorskip("diffusers")

from diffsolve import CustomSchedule, Sampler, VectorField, available_solvers  # noqa: E402
from diffsolve.pretrained_adapters.diffusers import (  # noqa: E402
    DiffusersModel, diffusers_grid, flow_grid, from_diffusers, grid_from_scheduler, grid_options_of,
    noise_scale_of, sampler_from_diffusers)
from diffsolve.solvers.peers import peer_tolerance  # noqa: E402

RTOL = 1e-5           # float32 agreement of two implementations of the same update (per pair: solvers/peers.py)
BATCH, SIZE = 2, 8


def require(name: str) -> None:
    """Solvers the diffusers cross-checks name must be registered: a missing one fails the test, it is not skipped."""
    if name not in available_solvers():
        pytest.fail(f"solver {name!r} is not registered in diffsolve.solvers (available: {available_solvers()}); "
                    "the diffusers cross-check for it cannot run")


@pytest.fixture(scope="module")
def unet():
    return tiny_unet2d(SIZE)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(BATCH, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def run_diffusers(scheduler, unet, noise, steps):
    """The diffusers denoising loop; returns (final sample, model calls)."""
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    x = noise * getattr(sch, "init_noise_sigma", 1.0)
    with torch.no_grad():
        for t in sch.timesteps:
            inp = sch.scale_model_input(x, t) if hasattr(sch, "scale_model_input") else x   # flow: no scaling
            out = unet(inp, t).sample
            x = sch.step(out, t, x).prev_sample
    return x, len(sch.timesteps)


def run_ours(unet, scheduler, solver, steps, noise, **options):
    """diffsolve on the scheduler's own timesteps, from the same start x_T as the diffusers loop."""
    s = sampler_from_diffusers(unet, scheduler, solver, grid=grid_from_scheduler(scheduler, steps), progress=False,
                               **options)
    with torch.no_grad():
        return s.run(noise=noise * noise_scale_of(scheduler, steps))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def assert_agree(scheduler, unet, noise, solver, steps, nfe=None, **options):
    """diffsolve's solver and the scheduler agree to the tolerance diffsolve.solvers.peers lists for the pair."""
    rtol = peer_tolerance(solver, type(scheduler).__name__)
    ref, calls = run_diffusers(scheduler, unet, noise, steps)
    got = run_ours(unet, scheduler, solver, steps, noise, **options)
    err = rel(got.samples, ref)
    assert torch.isfinite(ref).all()
    assert err < rtol, f"{type(scheduler).__name__} vs {solver!r}: relative difference {err:.3g} >= {rtol:g}"
    assert got.nfe == (calls if nfe is None else nfe), f"NFE {got.nfe} vs diffusers' {calls} model calls"
    return err


# ------------------------------------------------------------------------------------------------
# DDIM / Euler / Heun: the first-order update and the Heun correction
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddim_eta0_equals_ddim(unet, noise, beta_schedule):
    sch = diffusers.DDIMScheduler(beta_schedule=beta_schedule, clip_sample=False, steps_offset=1,
                                  timestep_spacing="leading")
    assert_agree(sch, unet, noise, "ddim", 10)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_ddim_prediction_types(unet, noise, prediction_type):
    sch = diffusers.DDIMScheduler(prediction_type=prediction_type, clip_sample=False, timestep_spacing="leading",
                                  steps_offset=1)
    assert_agree(sch, unet, noise, "euler", 8)


def test_ddim_trained_betas_and_final_alpha(unet, noise):
    """trained_betas, and set_alpha_to_one=False: the last step ends at alphas_cumprod[0], not at zero noise."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64) ** 1.1
    sch = diffusers.DDIMScheduler(trained_betas=betas.numpy(), clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1, timestep_spacing="leading")
    grid = grid_from_scheduler(sch, 10)
    assert float(grid[-1]) == pytest.approx(1 / 1000)
    assert_agree(sch, unet, noise, "ddim", 10)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_euler_discrete_equals_ddim_in_x_space(unet, noise, spacing):
    """diffusers' Euler steps x~ = x / alpha from init_noise_sigma = sqrt(1 + s_max^2); in x that is the DDIM update."""
    sch = diffusers.EulerDiscreteScheduler(timestep_spacing=spacing, steps_offset=1)
    assert sch.init_noise_sigma > 1
    assert_agree(sch, unet, noise, "euler", 10)


def test_euler_linspace_fractional_timesteps(unet, noise):
    """'linspace' gives fractional timesteps where diffusers interpolates sigma linearly between nodes while
    VPDiscrete interpolates log alpha. The grid keeps diffusers' sigma exactly (the value its update uses); the
    model time we pass then differs from diffusers' by < 2e-2 of a timestep, below what changes the samples."""
    sch = diffusers.EulerDiscreteScheduler(timestep_spacing="linspace")
    ref, _ = run_diffusers(sch, unet, noise, 10)
    got = run_ours(unet, sch, "euler", 10, noise)
    assert rel(got.samples, ref) < RTOL
    field = from_diffusers(unet, sch)
    t = grid_from_scheduler(sch, 10)[:-1]
    s2 = copy.deepcopy(sch)
    s2.set_timesteps(10)
    model_t = field.schedule.model_time(t)
    assert torch.allclose(model_t, s2.timesteps.double(), atol=2e-2)
    assert torch.allclose(field.schedule.edm_sigma(t), s2.sigmas[:-1].double(), rtol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_heun_discrete(unet, noise, spacing):
    require("heun")
    sch = diffusers.HeunDiscreteScheduler(timestep_spacing=spacing, steps_offset=1)
    assert_agree(sch, unet, noise, "heun", 6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_match_euler(unet, noise, shift):
    """The UNet read as a flow model: velocity prediction, model time 1000 sigma, shifted sigmas."""
    sch = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    ours_grid = flow_grid(8, shift=shift)
    theirs = grid_from_scheduler(sch, 8)
    assert torch.equal(ours_grid, theirs)
    assert_agree(sch, unet, noise, "euler", 8)
    # the default grid of sampler_from_diffusers is the same
    grid, opts = grid_options_of(sch)
    assert torch.equal(grid(8, None, **opts), theirs)


# ------------------------------------------------------------------------------------------------
# Multistep exponential integrators
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,spacing,final", [(10, "linspace", "zero"), (16, "trailing", "zero"),
                                                 (16, "linspace", "sigma_min"), (8, "leading", "sigma_min")])
def test_dpmsolver_multistep_2m(unet, noise, steps, spacing, final):
    """lower_order_final: diffusers lowers the last step when it reaches zero noise or when steps < 15;
    dpmpp_2m's default 'auto' is the same rule."""
    sch = diffusers.DPMSolverMultistepScheduler(solver_order=2, timestep_spacing=spacing, steps_offset=1,
                                                final_sigmas_type=final)
    assert_agree(sch, unet, noise, "dpmpp_2m", steps)


@pytest.mark.parametrize("steps", [8, 16])
def test_dpmsolver_multistep_3m(unet, noise, steps):
    """third_order='reference' is diffusers' (and dpm_solver_pytorch's) third-order update."""
    require("dpmpp_3m")
    sch = diffusers.DPMSolverMultistepScheduler(solver_order=3)
    assert_agree(sch, unet, noise, "dpmpp_3m", steps, third_order="reference")


def test_dpmsolver_multistep_3m_default_differs_by_design(unet, noise):
    """dpmpp_3m's default third_order='taylor' weights D2 by the exact Taylor coefficient; diffusers' (and
    dpm_solver_pytorch's) weight makes the method second order on non-uniform steps. So the default differs from
    DPMSolverMultistepScheduler(solver_order=3) by more than round-off; the option 'reference' agrees (above).
    Accuracy on a trained model: test_mnist_ddpm.py and `diffsolve bench --preset diffusers`."""
    require("dpmpp_3m")
    sch = diffusers.DPMSolverMultistepScheduler(solver_order=3)
    theirs, _ = run_diffusers(sch, unet, noise, 10)
    ours = run_ours(unet, sch, "dpmpp_3m", 10, noise)
    assert rel(ours.samples, theirs) > 100 * RTOL


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc(unet, noise, variant, order):
    """bh1 is compared with final_sigmas_type='sigma_min': diffusers' bh1 step into zero noise multiplies
    B(h) = -h = -inf by a zero correction and returns NaN; diffsolve's bh1 ends at zero noise finite."""
    name = f"unipc_{variant}"
    require(name)
    final = "sigma_min" if variant == "bh1" else "zero"
    sch = diffusers.UniPCMultistepScheduler(solver_type=variant, solver_order=order, final_sigmas_type=final)
    assert_agree(sch, unet, noise, name, 8, order=order)
    if variant == "bh1":
        zero = diffusers.UniPCMultistepScheduler(solver_type=variant, solver_order=order)
        assert torch.isfinite(run_ours(unet, zero, name, 8, noise, order=order).samples).all()


@pytest.mark.parametrize("order", [2, 3])
def test_deis(unet, noise, order):
    """DEISMultistepScheduler ends at alphas_cumprod[0] (sigma_min), not at zero noise."""
    require("deis")
    sch = diffusers.DEISMultistepScheduler(solver_order=order)
    assert float(grid_from_scheduler(sch, 8)[-1]) > 0
    assert_agree(sch, unet, noise, "deis", 8, order=order)


def test_karras_grid_matches_dpmsolver_sigmas():
    """use_karras_sigmas: the grid reproduces diffusers' sigmas (the values its update uses); diffusers rounds the
    model's timestep input to an integer, diffsolve passes the exact time of that sigma."""
    sch = diffusers.DPMSolverMultistepScheduler(use_karras_sigmas=True)
    field_sch = from_diffusers(lambda x, t: x, sch).schedule
    ours = diffusers_grid(10, field_sch, use_karras_sigmas=True)
    s2 = copy.deepcopy(sch)
    s2.set_timesteps(10)
    assert torch.allclose(field_sch.edm_sigma(ours), s2.sigmas.double(), rtol=1e-6)
    assert torch.allclose(field_sch.model_time(ours[:-1]), s2.timesteps.double(), atol=0.5)


# ------------------------------------------------------------------------------------------------
# Grids: the pure diffusers_grid function reproduces every scheduler's set_timesteps
# ------------------------------------------------------------------------------------------------
GRID_CLASSES = ["DDIMScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler"]


@pytest.mark.parametrize("cls", GRID_CLASSES)
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_grid_function_reproduces_set_timesteps(cls, spacing):
    kw = {"timestep_spacing": spacing, "steps_offset": 1}
    if cls == "DPMSolverSinglestepScheduler":    # it has only the 'linspace' spacing
        if spacing != "linspace":
            return
        kw = {}
    sch = getattr(diffusers, cls)(**kw)
    schedule = from_diffusers(lambda x, t: x, sch).schedule
    grid, opts = grid_options_of(sch)
    for steps in (3, 7, 10, 25):
        ours = grid(steps, schedule, **opts)
        theirs = grid_from_scheduler(sch, steps)
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=0), (cls, spacing, steps, ours, theirs)


@pytest.mark.parametrize("cls", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                                 "UniPCMultistepScheduler"])
def test_grid_function_reproduces_karras_sigmas(cls):
    sch = getattr(diffusers, cls)(use_karras_sigmas=True)
    schedule = from_diffusers(lambda x, t: x, sch).schedule
    grid, opts = grid_options_of(sch)
    assert opts["use_karras_sigmas"]
    for steps in (4, 10):
        assert torch.allclose(grid(steps, schedule, **opts), grid_from_scheduler(sch, steps), rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------------------------
# Singlestep DPM-Solver and iPNDM: the same idea with different intermediate points / parameterizations
# ------------------------------------------------------------------------------------------------
def singlestep_points(schedule, outer: torch.Tensor, fractions) -> torch.Tensor:
    """The outer grid with diffsolve's intermediate points (fixed fractions of each step in log-SNR) inserted."""
    lam = schedule.lambda_(outer)
    pts = []
    for i in range(outer.numel() - 1):
        pts.append(float(outer[i]))
        if float(outer[i + 1]) > 0:       # a step into zero noise is one first-order call
            pts += [float(schedule.t_from_lambda(lam[i] + r * (lam[i + 1] - lam[i]))) for r in fractions]
    pts.append(float(outer[-1]))
    return torch.tensor(pts, dtype=torch.float64)


def run_diffusers_on(scheduler, unet, noise, t, schedule):
    """The diffusers loop on arbitrary diffsolve times: the scheduler's sigmas are replaced by s(t) and the
    network gets the exact (fractional) model time of each point. Returns the whole trajectory."""
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(t.numel() - 1)
    s = schedule.edm_sigma(t)
    s[t == 0] = 0.0
    sch.sigmas = s.float()
    model_t = schedule.model_time(t[:-1]).float()
    x, traj = noise.clone(), [noise]
    with torch.no_grad():
        for i in range(t.numel() - 1):
            out = unet(x, model_t[i]).sample
            x = sch.step(out, sch.timesteps[i], x).prev_sample
            traj.append(x)
    return traj


@pytest.mark.parametrize("solver,algo,final", [("dpmpp_2s", "dpmsolver++", "zero"),
                                               ("dpm_solver_2", "dpmsolver", "sigma_min")])
def test_dpmsolver_singlestep_2_on_the_same_points(unet, noise, solver, algo, final):
    """diffusers' singlestep solver takes its intermediate model calls at the next listed timesteps (a step of
    order k spans k of them); diffsolve places them inside each step at r = 1/2 in log-SNR. Given diffsolve's
    points as its sigmas, DPMSolverSinglestepScheduler(order 2) makes the same updates."""
    require(solver)
    sch = diffusers.DPMSolverSinglestepScheduler(solver_order=2, algorithm_type=algo, final_sigmas_type=final)
    field = from_diffusers(unet, sch)
    outer = diffusers_grid(4, field.schedule, final=final)
    pts = singlestep_points(field.schedule, outer, (0.5,))
    theirs = run_diffusers_on(sch, unet, noise, pts, field.schedule)
    with torch.no_grad():
        ours = Sampler(field, solver, outer, progress=False).run(noise=noise)
    assert ours.nfe == pts.numel() - 1
    err = rel(ours.samples, theirs[-1])
    assert err < peer_tolerance(solver, "DPMSolverSinglestepScheduler"), \
        f"{solver} vs DPMSolverSinglestepScheduler on the same points: {err:.3g}"


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
def test_dpm_solver_3_differs_from_diffusers_third_order(unet, noise, solver_type):
    """dpm_solver_3 is Lu et al.'s Alg. 2 (u2 by the phi_2 formula, final update from eps(u2) alone). diffusers'
    third-order singlestep is not: 'midpoint' computes u2 with the DPM-Solver-2 midpoint rule, 'heun' ends with a
    Taylor update in D1 and D2. On the same points the first step already differs, by far more than round-off
    (the accuracy of both is compared on the MNIST DDPM in test_mnist_ddpm.py)."""
    require("dpm_solver_3")
    sch = diffusers.DPMSolverSinglestepScheduler(solver_order=3, algorithm_type="dpmsolver",
                                                 final_sigmas_type="sigma_min", solver_type=solver_type)
    field = from_diffusers(unet, sch)
    outer = diffusers_grid(3, field.schedule, final="sigma_min")
    pts = singlestep_points(field.schedule, outer, (1 / 3, 2 / 3))
    theirs = run_diffusers_on(sch, unet, noise, pts, field.schedule)
    with torch.no_grad():
        ours = Sampler(field, "dpm_solver_3", outer, progress=False).run(noise=noise, return_trajectory=True)
    assert rel(ours.trajectory[1], theirs[3]) > 100 * RTOL


def test_ipndm_matches_diffusers_ipndm(unet, noise):
    """diffusers' IPNDMScheduler is Adams-Bashforth (orders 1-4, fixed weights) on the noise prediction with a DDIM
    transfer on the angular VP path alpha = cos(pi t / 2), sigma = sin(pi t / 2), model time t: the same update as
    iPNDM on the EDM-frame slope d = eps. Its sigmas are given via trained_betas so the start avoids alpha = 0."""
    require("ipndm")
    steps = 8
    t = torch.linspace(0.9, 0.0, steps + 1, dtype=torch.float64)
    sig = torch.sin(t * math.pi / 2).float()
    sch = diffusers.IPNDMScheduler(trained_betas=sig.numpy())
    sch.set_timesteps(steps)
    theirs, calls = run_diffusers(sch, unet, noise, steps)
    # the times diffusers really used (float32 sigmas): t = 2/pi atan2(sigma, sqrt(1 - sigma^2))
    t_used = torch.atan2(sch.betas.double(), sch.alphas.double()) * 2 / math.pi
    path = CustomSchedule(alpha=lambda u: torch.cos(u * math.pi / 2), sigma=lambda u: torch.sin(u * math.pi / 2),
                          t_min=1e-4, t_max=0.95, name="angular")
    field = VectorField(DiffusersModel(unet), prediction="v", schedule=path)
    s = Sampler(field, "ipndm", t_used, progress=False)
    with torch.no_grad():   # diffusers starts from unit noise; diffsolve scales by prior_std = sigma(t0)
        ours = s.run(noise=noise / path.prior_std(float(t_used[0])))
    err = rel(ours.samples, theirs)
    assert err < peer_tolerance("ipndm", "IPNDMScheduler"), f"ipndm vs IPNDMScheduler: relative difference {err:.3g}"
    assert ours.nfe == calls


@pytest.mark.parametrize("cls, options", [
    ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("UniPCMultistepScheduler", {}),
    ("DDIMScheduler", {"clip_sample": False}),
])
def test_sampler_scheduler_one_liner_matches_the_diffusers_loop(unet, noise, cls, options):
    """`Sampler(unet, scheduler=...)` picks schedule, prediction, timesteps and the matching update by itself."""
    scheduler = getattr(diffusers, cls)(num_train_timesteps=1000, **options)
    steps = 8
    expect, calls = run_diffusers(scheduler, unet, noise, steps)
    with torch.no_grad():
        out = Sampler(unet, scheduler=scheduler, progress=False).run(steps=steps, noise=noise)
    assert out.nfe == calls
    assert rel(out.samples, expect) < RTOL


def test_ddim_clip_sample_takes_diffusers_default_step(unet, noise):
    """diffusers' default DDIM (clip_sample=True) clamps x0 but keeps the network's eps in the direction term;
    Sampler(scheduler=) takes that same step, not the one that derives eps from the clamped x0 (diffusers'
    step(..., use_clipped_model_output=True), which plain diffsolve DDIM on a clipping field does)."""
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000)
    assert scheduler.config.clip_sample
    steps = 8
    with torch.no_grad():
        ours = Sampler(unet, scheduler=scheduler, progress=False).run(steps=steps, noise=noise).samples
        sch = copy.deepcopy(scheduler)
        sch.set_timesteps(steps)
        glide, raw = noise.clone(), noise.clone()
        for t in sch.timesteps:
            glide = sch.step(unet(glide, t).sample, t, glide, use_clipped_model_output=True).prev_sample
            raw = sch.step(unet(raw, t).sample, t, raw).prev_sample
    assert rel(ours, raw) < RTOL
    assert rel(ours, glide) > 100 * RTOL     # the two steps differ, so the test tells them apart
