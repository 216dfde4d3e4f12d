"""The core's shape: per-sample device times in a step, features and per-step options through the field,
autograd on request only, EDM-style dtypes, adaptive control on the fixed-step twins' steps, identities."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from sync_guard import guarded_loop

from diffsolve import (ClassifierFreeGuidance, CustomSchedule, EDMSchedule, FeatureCapture, FieldWrapper,
                       InvalidArgument, Sampler, StepOptions, VectorField, get_solver)
from diffsolve.problems import GaussianMixtureProblem, GaussianProblem
from diffsolve.field import FieldOutput, per_sample
from diffsolve.solvers.base import Solver, StepCoefficients
from diffsolve.solvers.dpm_solver import DPMSolverSinglestep


# ------------------------------------------------------------------------------------------------
# A solver whose intermediate time is a per-sample tensor (the shape of a learned mean-value step)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval(StepCoefficients):
    """Nothing precomputed: the step reads its interval from t0 and t1."""


class LearnedMidpoint(Solver):
    """EDM-frame midpoint whose stage sits at s0 + r (s1 - s0), with r one value per sample on the device."""

    name = "learned_midpoint"
    order = 2
    calls_per_step = 2

    def __init__(self, r: torch.Tensor):
        self.r = r

    def coefficients(self, field, t0, t1):
        return Interval()

    def step(self, ev, x, t0, t1, state, coeffs):
        s0, s1 = t0.s, t1.s
        y0 = x / t0.alpha
        d0 = (y0 - ev.denoise(x, t0)) / s0
        s_mid = s0 + self.r.to(torch.float64) * (s1 - s0)              # [batch], stays on the device
        pm = ev.field.at(ev.field.schedule.t_from_edm_sigma(s_mid))    # per-sample EvalPoint
        y_mid = y0 + per_sample(s_mid - s0, x) * d0
        d_mid = (y_mid - ev.denoise(y_mid * per_sample(pm.alpha, x), pm)) / per_sample(s_mid, x)
        return (y0 + (s1 - s0) * d_mid) * t1.alpha, None, state


def _mixture():
    return GaussianMixtureProblem.default()


def test_per_sample_midpoint_equals_the_tableau_midpoint_at_one_half():
    problem = _mixture()
    noise = torch.randn((6, *problem.diffsolve_spec.sample_shape), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    ours = Sampler(problem, LearnedMidpoint(torch.full((6,), 0.5)), "karras", grid_options={"final": "min"},
                   progress=False).run(steps=6, noise=noise)
    ref = Sampler(problem, "midpoint", "karras", grid_options={"final": "min"}, frame="edm",
                  progress=False).run(steps=6, noise=noise)
    assert ours.nfe == ref.nfe == 12
    torch.testing.assert_close(ours.samples, ref.samples, rtol=1e-12, atol=1e-12)


def test_per_sample_times_act_per_sample_and_without_host_sync():
    problem = _mixture()
    shape = (4, *problem.diffsolve_spec.sample_shape)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = torch.tensor([0.5, 0.2, 0.8, 0.5])
    sampler = Sampler(problem, LearnedMidpoint(r), "karras", grid_options={"final": "min"}, progress=False)
    with guarded_loop(sampler):
        batch = sampler.run(steps=5, noise=noise).samples
    for i in range(4):
        alone = Sampler(problem, LearnedMidpoint(r[i:i + 1]), "karras", grid_options={"final": "min"},
                        progress=False).run(steps=5, noise=noise[i:i + 1]).samples
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-12, atol=1e-12)
    half = Sampler(problem, LearnedMidpoint(torch.full((4,), 0.5)), "karras", grid_options={"final": "min"},
                   progress=False).run(steps=5, noise=noise).samples
    assert torch.equal(batch[0], half[0]) and torch.equal(batch[3], half[3])
    assert not torch.allclose(batch[1], half[1]) and not torch.allclose(batch[2], half[2])


# ------------------------------------------------------------------------------------------------
# Autograd: none by default, end to end on request, through every solver family
# ------------------------------------------------------------------------------------------------
class Scaled(FieldWrapper):
    """A wrapper with a trainable parameter (the shape of a learned correction)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def evaluate(self, x, p, kind="x0", **kwargs):
        out = self.inner.evaluate(x, p, kind, **kwargs)
        return FieldOutput(out.value * self.w.to(out.value.dtype), out.aux)


def _count_saved(run) -> int:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        run()
    return len(saved)


def test_no_graph_by_default_and_none_kept_across_steps():
    field = Scaled(VectorField(_mixture()))
    seen = []
    run = lambda steps: Sampler(field, "dpmpp_2m", progress=False).run(  # noqa: E731
        steps=steps, batch_size=4, seed=0, callback=lambda info: seen.append(info.x.requires_grad))
    out = run(8)
    assert not out.samples.requires_grad and out.samples.grad_fn is None and not any(seen)
    assert _count_saved(lambda: run(4)) == 0 and _count_saved(lambda: run(16)) == 0
    with_grad = lambda steps: Sampler(field, "dpmpp_2m", progress=False).run(  # noqa: E731
        steps=steps, batch_size=4, seed=0, grad=True)
    assert _count_saved(lambda: with_grad(16)) > _count_saved(lambda: with_grad(4)) > 0


FAMILIES = ["euler", "heun", "rk4", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "deis", "ipndm", "dpmpp_2s", "dpm_solver_3",
            "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "edm_churn", "restart", "dpm_adaptive",
            "odeint_dopri5"]


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_reaches_a_wrapper_parameter(name):
    field = Scaled(VectorField(_mixture()))
    steps = None if name in ("dpm_adaptive", "odeint_dopri5") else 6
    out = Sampler(field, name, progress=False).run(steps=steps, batch_size=4, seed=0, grad=True)
    assert out.samples.requires_grad
    (g,) = torch.autograd.grad(out.samples.sum(), field.w)
    assert torch.isfinite(g) and g.abs() > 0


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"])
def test_gradient_through_the_triton_kernels(name, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("DIFFSOLVE_KERNELS", "torch")
    field = Scaled(VectorField(_mixture()))
    ref = Sampler(field, name, progress=False).run(steps=4, batch_size=2, seed=0, grad=True, dtype=torch.float32)
    (g_ref,) = torch.autograd.grad(ref.samples.sum(), field.w)
    monkeypatch.setenv("DIFFSOLVE_KERNELS", "triton")
    out = Sampler(field, name, progress=False).run(steps=4, batch_size=2, seed=0, grad=True, dtype=torch.float32)
    assert out.samples.requires_grad
    (g,) = torch.autograd.grad(out.samples.sum(), field.w)
    # float32 sums in another order: the EDM-frame slope (y - D) / s amplifies round-off near s_min (heun: 5e-5)
    torch.testing.assert_close(out.samples, ref.samples, rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(g, g_ref, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Adaptive control drives the fixed-step twins' own steps
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,twin", [(2, "dpmpp_2s"), (3, "dpmpp_3s")])
def test_adaptive_runs_the_fixed_step_twins_step(order, twin, monkeypatch):
    calls = {"step": 0, "coefficients": 0}
    real_step, real_coeffs = DPMSolverSinglestep.step, DPMSolverSinglestep.coefficients

    def step(self, *a, **k):
        calls["step"] += 1
        return real_step(self, *a, **k)

    def coefficients(self, *a, **k):
        calls["coefficients"] += 1
        return real_coeffs(self, *a, **k)

    monkeypatch.setattr(DPMSolverSinglestep, "step", step)
    monkeypatch.setattr(DPMSolverSinglestep, "coefficients", coefficients)
    problem = _mixture()
    out = Sampler(problem, "dpm_adaptive", order=order, progress=False).run(batch_size=8, seed=0)
    attempts = out.stats["accepted"] - 1 + out.stats["rejected"]      # the last accepted step is the final denoise
    assert calls["step"] == attempts and calls["coefficients"] >= attempts > 0

    # and one adaptive step is the twin's step on the same interval, to the bit
    field = VectorField(problem)
    adaptive = get_solver("dpm_adaptive", order=order)
    fixed = get_solver(twin)
    p, q = field.at(20.0), field.at(5.0)
    from diffsolve.loop import Evaluator
    x = torch.randn((3, *problem.diffsolve_spec.sample_shape), generator=torch.Generator().manual_seed(2)) * 20
    x1, err, _ = adaptive.step(Evaluator(field, {}, False), x, p, q, (), adaptive.coefficients(field, p, q))
    y1, none, _ = fixed.step(Evaluator(field, {}, False), x, p, q, (), fixed.coefficients(field, p, q))
    assert torch.equal(x1, y1) and none is None and err is not None and err.abs().max() > 0


def test_pi_controller_reaches_the_same_tolerance():
    problem = _mixture()
    base = Sampler(problem, "dpm_adaptive", rtol=1e-3, atol=1e-4, progress=False).run(batch_size=8, seed=0,
                                                                                       dtype=torch.float64)
    pi = Sampler(problem, "dpm_adaptive", rtol=1e-3, atol=1e-4, controller="pi", progress=False).run(
        batch_size=8, seed=0, dtype=torch.float64)
    assert pi.stats["completed"] and base.stats["completed"]
    assert (pi.samples - base.samples).abs().max() < 1e-2


# ------------------------------------------------------------------------------------------------
# The model boundary: dtypes, features, per-step options, output checks
# ------------------------------------------------------------------------------------------------
class _TimeRecorder:
    def __init__(self, module, index=1):
        self.times = []
        self.x_dtypes = []
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)
        self.index = index

    def hook(self, module, args, kwargs):
        t = args[self.index] if len(args) > self.index else kwargs.get("timestep")
        self.times.append(torch.as_tensor(t).detach().clone())
        self.x_dtypes.append(args[0].dtype)


# Measured (relative RMS to the float32 run, same noise): the built-in UNet, 5 steps of dpmpp_2m: float16 1.0e-3,
# bfloat16 1.1e-2; the tiny random UNet2DModel below, 4 DDIM steps: float16 4.3e-3, bfloat16 3.6e-2. The bounds
# leave room for other CPUs' half-precision kernels.
HALF_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_builtin_unet(dtype):
    from diffsolve.models import load_mnist_unet
    ref_net, net = load_mnist_unet(), load_mnist_unet().to(dtype)
    rec_ref, rec = _TimeRecorder(ref_net), _TimeRecorder(net)
    ref = Sampler(ref_net, progress=False).run(steps=5, batch_size=4, seed=0)
    out = Sampler(net, progress=False).run(steps=5, batch_size=4, seed=0)
    assert out.samples.dtype == torch.float32                   # the state stays float32
    assert all(d == dtype for d in rec.x_dtypes)                  # the network sees its own dtype
    assert all(t.dtype == torch.float32 for t in rec.times)
    assert all(torch.equal(a, b) for a, b in zip(rec.times, rec_ref.times))
    rel = float((out.samples - ref.samples).pow(2).mean().sqrt() / ref.samples.pow(2).mean().sqrt())
    assert rel < HALF_TOLERANCE[dtype], rel


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_diffusers_unet_sees_float32_timesteps(dtype):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    # unclipped: diffusers' clip_sample step keeps the network's raw eps beside the clamped x0, which amplifies the
    # half-precision error of a random network beyond what this test is about (the time input's dtype)
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing", clip_sample=False)
    half = diffusers.UNet2DModel.from_config(unet.config)
    half.load_state_dict(unet.state_dict())
    half = half.to(dtype)
    rec_ref, rec = _TimeRecorder(unet), _TimeRecorder(half)
    ref = Sampler(unet, scheduler=sch, progress=False).run(steps=4, batch_size=2, seed=0)
    out = Sampler(half, scheduler=sch, progress=False).run(steps=4, batch_size=2, seed=0)
    assert out.samples.dtype == torch.float32 and all(d == dtype for d in rec.x_dtypes)
    assert all(t.dtype == torch.float32 for t in rec.times)
    assert all(torch.equal(a, b) for a, b in zip(rec.times, rec_ref.times))
    assert float(rec.times[0][0]) == 999.0          # bf16 would have rounded it to 1000
    rel = float((out.samples - ref.samples).pow(2).mean().sqrt() / ref.samples.pow(2).mean().sqrt())
    assert rel < HALF_TOLERANCE[dtype], rel


def test_float64_state_with_a_float32_model_and_the_reverse():
    problem = GaussianProblem.default(schedule=EDMSchedule(0.05, 10.0))
    lin = torch.nn.Linear(problem.mean.numel(), problem.mean.numel())
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    # a plain function hides its dtype: model_dtype= says it
    f = VectorField(lambda x, t: lin(x), "x0", problem.schedule, sample_shape=(problem.mean.numel(),),
                    model_dtype=torch.float32)
    assert f.evaluate(torch.ones(2, problem.mean.numel(), dtype=torch.float64), f.at(1.0)).value.dtype == torch.float64
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin.double()

        def forward(self, x, t):
            assert x.dtype == torch.float64          # the module's own dtype, found from its parameters
            return self.lin(x)

    out = Sampler(VectorField(Net(), "x0", problem.schedule, sample_shape=(problem.mean.numel(),)), "euler",
                  progress=False).run(steps=3, batch_size=2, seed=0, dtype=torch.float32)
    assert out.samples.dtype == torch.float32


def test_features_reach_the_solver_from_a_named_module():
    from diffsolve.models import load_mnist_unet
    net = load_mnist_unet()
    field = FeatureCapture(VectorField(net), {"bottleneck": "mid"}, reduce=lambda h: h.mean(dim=1))
    seen = []

    class Reader(Solver):
        name = "feature_reader"

        def coefficients(self, field, t0, t1):
            return get_solver("euler").coefficients(field, t0, t1)

        def step(self, ev, x, t0, t1, state, coeffs):
            x1, _, state = get_solver("euler").step(ev, x, t0, t1, state, coeffs)
            seen.append(ev.features["bottleneck"])
            return x1, None, state

    Sampler(field, Reader(), progress=False).run(steps=3, batch_size=2, seed=0)
    assert len(seen) == 3 and all(f.shape == (2, 7, 7) for f in seen)
    assert not net.mid._forward_hooks                              # hooks live only during a call
    with pytest.raises(InvalidArgument, match="not a submodule"):
        FeatureCapture(VectorField(net), {"bottleneck": "middle"})


def test_per_step_options_and_guidance_scale_see_each_point():
    from diffsolve.models import load_mnist_unet
    net = load_mnist_unet()
    levels = []

    def options(p):
        levels.append(p.s)
        return {"skip_scale": [1.0, 1.0, 0.5 if p.s > 1 else 1.0]}

    out = Sampler(StepOptions(VectorField(net), options), "euler", progress=False).run(steps=4, batch_size=2, seed=0)
    plan = Sampler(net, "euler").plan(steps=4)
    assert levels == [p.s for p in plan.points[:-1]]
    plain = Sampler(net, "euler", progress=False).run(steps=4, batch_size=2, seed=0)
    assert not torch.equal(out.samples, plain.samples)

    scales = []
    guided = ClassifierFreeGuidance(VectorField(net), scale=lambda p: scales.append(p.s) or 1.0, uncond_kwargs={})
    g = Sampler(guided, "euler", progress=False).run(steps=4, batch_size=2, seed=0)
    assert len(scales) == 4 and g.nfe == 8
    torch.testing.assert_close(g.samples, plain.samples)


def test_a_model_output_of_the_wrong_shape_is_refused():
    problem = _mixture()
    f = VectorField(lambda x, t: problem(x, t)[:1], "x0", problem.schedule,
                    sample_shape=problem.diffsolve_spec.sample_shape)
    with pytest.raises(InvalidArgument, match="shape"):
        Sampler(f, "dpmpp_2m", progress=False).run(steps=3, batch_size=4, seed=0)


# ------------------------------------------------------------------------------------------------
# Identity: what the reference cache may trust
# ------------------------------------------------------------------------------------------------
def test_identities_tell_apart_what_computes_differently():
    from diffsolve.models import load_mnist_unet
    a = CustomSchedule(lambda t: torch.cos(t), lambda t: torch.sin(t), name="same")
    b = CustomSchedule(lambda t: torch.cos(t) ** 2, lambda t: torch.sin(t), name="same")
    assert a.identity() is None and b.identity() is None
    assert CustomSchedule(lambda t: torch.cos(t), lambda t: torch.sin(t), identity="cos-sin").identity() is not None

    net = load_mnist_unet()
    base = VectorField(net).identity()
    assert base is not None and base == VectorField(load_mnist_unet()).identity()
    net.skip_scales = [1.0, 1.0, 0.8]
    assert VectorField(net).identity() != base

    field = VectorField(load_mnist_unet())
    g2 = ClassifierFreeGuidance(field, 2.0, {}).identity()
    g3 = ClassifierFreeGuidance(field, 3.0, {}).identity()
    assert g2 and g3 and g2 != g3
    assert ClassifierFreeGuidance(field, lambda p: 2.0, {}).identity() is None
    assert VectorField(lambda x, t: x, "x0", "edm").identity() is None
