"""The sampling loop makes no host-device sync: every fixed-step deterministic solver, between plan and the one
finite-check read after the loop (Evaluator.raise_if_bad).

On the CPU a sync cannot be observed directly, so every operation that would sync on a GPU is made to fail:
a TorchFunctionMode, entered when the loop starts (solver.init, called right after the plan) and left by the
finite-check, rejects .item(), .tolist(), .cpu(), bool/float/int/index conversions, .numpy(), nonzero and other
data-dependent-shape ops, and copies to the CPU, on every tensor except the plan's own host tensors (plan.t and
views of it: reading them is a host read). The model itself is exempt: it is the user's, not the loop's.
"""
from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

from diffsolve.problems import GaussianProblem
from diffsolve.loop import Evaluator
from diffsolve.sampler import Sampler
from diffsolve.schedules import VPContinuous
from diffsolve.solvers import available_solvers, get_solver
from diffsolve.solvers.base import Plan, Solver

SYNCING = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.__complex__,
    torch.Tensor.nonzero, torch.nonzero, torch.Tensor.is_nonzero, torch.is_nonzero, torch.equal,
    torch.Tensor.equal, torch.allclose, torch.Tensor.allclose, torch.masked_select, torch.Tensor.masked_select,
    torch.unique, torch.Tensor.unique, torch.unique_consecutive, torch.argwhere, torch.Tensor.argwhere,
    torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.__array__, torch.repeat_interleave,
    torch.Tensor.repeat_interleave, torch.bincount,
}
MOVES = {torch.Tensor.to, torch.Tensor.copy_}


class SyncFound(AssertionError):
    pass


def _storages(obj, out: set, depth: int = 0) -> set:
    """Data pointers of the host tensors a plan holds (grid times, tables)."""
    if depth > 4:
        return out
    if isinstance(obj, torch.Tensor):
        out.add(obj.untyped_storage().data_ptr())
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, out, depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _storages(getattr(obj, f.name), out, depth + 1)
    return out


class NoSyncMode(TorchFunctionMode):
    """Fails on any operation that reads a device tensor's values on the host."""

    def __init__(self, host_storages: set):
        super().__init__()
        self.host = host_storages
        self.exempt = 0
        self.seen: list[str] = []

    def _is_host(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.host

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.exempt:
            first = args[0] if args else None
            name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
            if func in SYNCING and not self._is_host(first):
                raise SyncFound(f"host-device sync inside the sampling loop: {name}")
            if func is torch.Tensor.to and not self._is_host(first):
                dev = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
                if dev is not None and torch.device(dev).type == "cpu" and first.device.type != "cpu":
                    raise SyncFound(f"copy to the host inside the sampling loop: {name}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def guarded_loop(sampler: Sampler):
    """Patch the sampler so that NoSyncMode is active from solver.init (after plan) to Evaluator.raise_if_bad."""
    stack = contextlib.ExitStack()
    modes: list[NoSyncMode] = []
    solver = sampler.solver
    real_init = solver.init
    real_check = Evaluator.raise_if_bad
    model = sampler.field.model

    def init(plan: Plan):
        mode = NoSyncMode(_storages(plan, set()))
        modes.append(mode)
        stack.enter_context(mode)
        return real_init(plan)

    def raise_if_bad(self, t):
        stack.close()           # the one allowed read: after the loop
        return real_check(self, t)

    def user_model(*a, **k):
        for m in modes:
            m.exempt += 1
        try:
            return model(*a, **k)
        finally:
            for m in modes:
                m.exempt -= 1

    solver.init = init
    sampler.field.model = user_model
    Evaluator.raise_if_bad = raise_if_bad
    try:
        yield modes
    finally:
        stack.close()
        Evaluator.raise_if_bad = real_check
        del solver.init
        sampler.field.model = model


def fixed_step_deterministic() -> list[str]:
    return [n for n in available_solvers(deterministic=True) if not getattr(get_solver(n), "adaptive", False)]


def make_sampler(solver) -> Sampler:
    problem = GaussianProblem.default(dim=4, schedule=VPContinuous(t_min=1e-2))
    return Sampler(problem, solver, grid="time_uniform", grid_options={"final": "min"}, progress=False)


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
