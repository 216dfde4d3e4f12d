"""A guard that fails the test on any host-device sync inside the sampling loop (the tests of several folders
use it).

On the CPU a sync cannot be observed directly, so every operation that would sync on a GPU is made to fail:
a TorchFunctionMode, entered when the loop starts (solver.init, called right after the plan) and left by the
finite-check, rejects .item(), .tolist(), .cpu(), bool/float/int/index conversions, .numpy(), nonzero and other
data-dependent-shape ops, and copies to the CPU, on every tensor except the plan's own host tensors (plan.t and
views of it: reading them is a host read). The model itself is exempt: it is the user's, not the loop's.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch.overrides import TorchFunctionMode

from diffsolve.loop import Evaluator
from diffsolve.sampler import Sampler
from diffsolve.solvers.base import Plan

SYNCING = {
    torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.__bool__,
    torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.__complex__,
    torch.Tensor.nonzero, torch.nonzero, torch.Tensor.is_nonzero, torch.is_nonzero, torch.equal,
    torch.Tensor.equal, torch.allclose, torch.Tensor.allclose, torch.masked_select, torch.Tensor.masked_select,
    torch.unique, torch.Tensor.unique, torch.unique_consecutive, torch.argwhere, torch.Tensor.argwhere,
    torch.Tensor.__repr__, torch.Tensor.__format__, torch.Tensor.__array__, torch.repeat_interleave,
    torch.Tensor.repeat_interleave, torch.bincount,
}


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
