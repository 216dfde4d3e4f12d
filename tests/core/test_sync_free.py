"""The sampling loop makes no host-device sync: every fixed-step deterministic solver, between plan and the one
finite-check read after the loop (Evaluator.raise_if_bad), under the guard of sync_guard (operations that would
sync on a GPU fail; the model is exempt).
"""
from __future__ import annotations

import pytest
import torch
from sync_guard import SyncFound, guarded_loop

from diffsolve.problems import GaussianProblem
from diffsolve.sampler import Sampler
from diffsolve.schedules import VPContinuous
from diffsolve.solvers import available_solvers, get_solver
from diffsolve.solvers.base import Solver
from conftest import untrained_corrections


def fixed_step_deterministic() -> list[str]:
    return [n for n in available_solvers(deterministic=True) if not getattr(get_solver(n), "adaptive", False)]


def make_sampler(solver) -> Sampler:
    problem = GaussianProblem.default(dim=4, schedule=VPContinuous(t_min=1e-2))
    return Sampler(problem, solver, grid="time_uniform", grid_options={"final": "min"}, progress=False)


@untrained_corrections
@pytest.mark.parametrize("name", fixed_step_deterministic())
def test_loop_makes_no_host_sync(name):
    sampler = make_sampler(name)
    with guarded_loop(sampler) as modes:
        out = sampler.run(steps=4, batch_size=2, seed=0)
    assert modes, "the guard never engaged: Sampler.solve no longer calls solver.init before the loop"
    assert torch.isfinite(out.samples).all()


class _SyncingEuler(Solver):
    """A deliberately bad solver: branches on a tensor value inside step."""

    name = "syncing_euler"

    def plan(self, field, t):
        return get_solver("euler").plan(field, t)

    def step(self, ev, x, t0, t1, state, coeffs):
        d = ev.denoise(x, t0)
        if d.abs().max() > 1e6:         # a host read of a device value
            raise RuntimeError
        return coeffs.a * x + coeffs.b * d, None, state


def test_guard_catches_a_syncing_solver():
    sampler = make_sampler(_SyncingEuler())
    with pytest.raises(SyncFound, match="__bool__"):
        with guarded_loop(sampler):
            sampler.run(steps=2, batch_size=2, seed=0)


def test_guard_allows_plan_reads_and_the_final_check():
    sampler = make_sampler("euler")
    with guarded_loop(sampler) as modes:
        res = sampler.run(steps=2, batch_size=2, seed=0)
        with modes[0]:                   # re-enter: the plan's grid stays readable, data tensors do not
            float(res.t[1])
            with pytest.raises(SyncFound):
                float(res.samples[0, 0])


# --- the CUDA-graph option ------------------------------------------------------------------------------------------
def test_cuda_graph_on_cpu_raises_clearly():
    from diffsolve.errors import InvalidArgument
    sampler = make_sampler("heun")
    with pytest.raises(InvalidArgument, match="CUDA graphs"):
        sampler.graphed(steps=3, batch_size=2, device="cpu")


class _TinyDenoiser(torch.nn.Module):
    """Capturable x0-predictor: no host reads, no CPU tensors in forward."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, t):
        return torch.tanh(self.lin(x)) * torch.sigmoid(t)[:, None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_cuda_graph_replay_matches_eager(name):
    model = _TinyDenoiser().cuda()
    sampler = Sampler(model, name, prediction="x0", schedule=VPContinuous(t_min=1e-2), grid="time_uniform",
                      grid_options={"final": "min"}, progress=False, sample_shape=(4,))
    graph = sampler.graphed(steps=5, batch_size=3, device="cuda")
    for seed in (0, 1):
        want = sampler.run(steps=5, batch_size=3, seed=seed, device="cuda").samples
        got = graph.run(seed=seed).samples
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
