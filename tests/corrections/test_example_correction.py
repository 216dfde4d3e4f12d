"""A new learned correction is one file plus its registration: a learned per-step scale on Euler's increment,
registered as a solver and as a tuner, trained on the analytic Gaussian mixture in about a second, run through
`Sampler` and through `diffsolve tune`, and better than its untrained base on held-out noise."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from diffsolve import Sampler
from diffsolve.cli import main
from diffsolve.corrections.teacher import field_of, noise_for, teacher_states
from diffsolve.corrections.tuning import TUNERS, TuneSettings, option, parse_int, register_tuner
from diffsolve.kernels import lincomb
from diffsolve.solvers import base as solver_registry
from diffsolve.solvers.base import Plan, Solver, register
from diffsolve.solvers.euler import Euler


# ---- the correction: x' = x + (1 + w_i)(euler(x) - x), one learned w_i per step -------------------------------
class ScaledEuler(Solver):
    name, order, needs_schedule = "scaled_euler", 1, True

    def __init__(self, scales=()):
        self.scales = tuple(json.loads(Path(scales).read_text())) if isinstance(scales, str) else tuple(scales)

    def plan(self, field, t):
        pts = self.grid_points(field, t)
        base = [Euler().coefficients(field, pts[i], pts[i + 1]) for i in range(len(pts) - 1)]   # Euler's own
        w = self.scales or (0.0,) * len(base)
        coeffs = tuple((1 + (1 + wi) * (co.a - 1), (1 + wi) * co.b) for wi, co in zip(w, base))
        return Plan(t=t, points=pts, coeffs=coeffs, nfe=len(coeffs))

    def step(self, ev, x, t0, t1, state, coeffs):
        return lincomb(coeffs, (x, ev.denoise(x, t0))), None, state


def fit_scales(model, steps: int, samples: int, epochs: int = 60, seed: int = 0) -> list[float]:
    field = field_of(model)
    noise = noise_for(field, range(seed * 10_000, seed * 10_000 + samples), dtype=torch.float64)
    target = teacher_states(field, noise, [field.t_max, 0.0], mode="fine")[-1]
    plan = Sampler(field, "euler", progress=False).plan(steps=steps)
    w = torch.zeros(steps, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(epochs):
        x = noise * field.schedule.prior_std(field.t_max)
        for i, co in enumerate(plan.coeffs):
            x = x + (1 + w[i]) * ((co.a - 1) * x + co.b * field.denoise(x, plan.points[i]))
        loss = (x - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [float(v) for v in w.detach()]


@dataclass(frozen=True)
class ScaleSettings(TuneSettings):
    solver: str = option("euler", "the base (Euler only)")
    samples: int = option(64, "training trajectories", aliases=("--n",), parse=parse_int)
    suffix = ".json"


def tune_scales(model, st: ScaleSettings, ctx) -> Path:
    path = st.out_path()
    path.write_text(json.dumps(fit_scales(model, st.nfe[0], st.samples, seed=st.seed)))
    return path
# ---- end of the correction -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered():
    register("scaled_euler", ScaledEuler, "Euler with a learned scale per step (test example)")
    register_tuner("euler_scale", ScaleSettings, tune_scales, "learned per-step scales of Euler (test example)")
    yield
    solver_registry._REGISTRY.pop("scaled_euler")
    TUNERS.pop("euler_scale")


def _err(out, ref) -> float:
    return float((out.samples - ref).pow(2).mean(1).sqrt().mean())


def test_learned_scales_beat_plain_euler_on_held_out_noise(registered, gmm, held_out):
    noise, ref = held_out
    scales = fit_scales(gmm, steps=4, samples=64)
    learned = Sampler(gmm, "scaled_euler", scales=scales, progress=False).run(nfe=4, noise=noise)
    untrained = Sampler(gmm, "scaled_euler", progress=False).run(nfe=4, noise=noise)
    plain = Sampler(gmm, "euler", progress=False).run(nfe=4, noise=noise)
    torch.testing.assert_close(untrained.samples, plain.samples, rtol=0, atol=1e-12)     # zero scales: Euler
    assert learned.nfe == 4 and _err(learned, ref) < 0.9 * _err(plain, ref)


def test_the_tune_command_trains_it(registered, gmm, held_out, tmp_path, capsys):
    noise, ref = held_out
    out = tmp_path / "scales.json"
    assert main(["tune", "euler_scale", "--model", "gmm", "--nfe", "4", "--samples", "32", "--out", str(out)]) == 0
    learned = Sampler(gmm, "scaled_euler", scales=str(out), progress=False).run(nfe=4, noise=noise)
    plain = Sampler(gmm, "euler", progress=False).run(nfe=4, noise=noise)
    assert _err(learned, ref) < 0.9 * _err(plain, ref)
    assert main(["tune", "euler_scale", "--model", "gmm", "--samples", "0", "--out", str(out)]) == 2
