"""Skip-Tuning's mechanism: the factors per skip level, and hooks that scale a network's skips per call.

The scaling reaches the network per call: hooks installed once per module read the factors that the calling
thread has entered (`SkipTuned` as a context manager), so the network is never changed and other threads, other
samplers and plain callers of it see it unscaled. `diffsolve.corrections.skip` builds on this: field wrappers,
settings files and the tuner.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_float
from diffsolve.field import EvalPoint


def depth_scales(levels: int, rho_top: float = 1.0, rho_bottom: float = 0.8) -> list[float]:
    """The factor of each skip level, linear in depth from rho_top to rho_bottom.

    Args:
        levels: the number of skip levels (at least 1).
        rho_top: the factor on the highest-resolution level (index 0).
        rho_bottom: the factor on the deepest level (the only one when `levels` is 1).

    Returns:
        One factor per level, index 0 the highest resolution.

    Raises:
        InvalidArgument: `levels` is below 1.
    """
    if levels < 1:
        raise InvalidArgument(f"a UNet needs at least one skip level, got {levels}")
    if levels == 1:
        return [float(rho_bottom)]
    return [rho_top + (rho_bottom - rho_top) * k / (levels - 1) for k in range(levels)]


def check_skip_settings(rho_bottom: Any, rho_top: Any,
                        active: Any) -> tuple[float, float, tuple[float, float] | None]:
    """Skip-Tuning's factors and active range, checked by type and value.

    Args:
        rho_bottom: the factor on the deepest skip level (a positive number).
        rho_top: the factor on the highest-resolution skip level (a positive number).
        active: a pair (s_lo, s_hi) of EDM noise levels with 0 <= s_lo < s_hi, or None for everywhere.

    Returns:
        (rho_bottom, rho_top, active) as floats and a tuple (or None).

    Raises:
        InvalidArgument: a factor is not a positive number, or `active` is not such a pair.
    """
    rb = check_float("rho_bottom", rho_bottom, positive=True)
    rt = check_float("rho_top", rho_top, positive=True)
    if active is not None:
        if not (isinstance(active, (tuple, list)) and len(active) == 2):
            raise InvalidArgument(f"active={active!r}: must be a pair (s_lo, s_hi) of EDM noise levels, or None")
        lo, hi = check_float("active[0]", active[0], nonnegative=True), float(active[1])
        if not hi > lo:
            raise InvalidArgument(f"active={active!r}: need s_lo < s_hi")
        active = (lo, hi)
    return rb, rt, active


class _Target:
    """How one network kind takes its skip scales: a call keyword or hooks on named modules (top to bottom)."""

    def __init__(self, net: torch.nn.Module, outputs_of: Sequence[str] | None, inputs_of: Sequence[str] | None):
        self.net = net
        modules = dict(net.named_modules())
        if outputs_of is not None or inputs_of is not None:
            if outputs_of is not None and inputs_of is not None:
                raise InvalidArgument("give outputs_of= or inputs_of=, not both")
            names = list(outputs_of if outputs_of is not None else inputs_of)
            missing = [n for n in names if n not in modules]
            if not names or missing:
                raise InvalidArgument(f"{'outputs_of' if outputs_of is not None else 'inputs_of'}={names!r}: "
                                      f"not submodules of the network: {missing}")
            self.kind = "outputs" if outputs_of is not None else "inputs"
            self.modules = [modules[n] for n in names]
        elif hasattr(net, "skip_scales") and hasattr(net, "num_skip_levels"):
            self.kind, self.modules = "keyword", []
        elif hasattr(net, "up_blocks") and hasattr(net, "down_blocks"):
            # diffusers UNets: up_blocks[0] is the deepest level and receives the deepest skips
            self.kind, self.modules = "up_blocks", list(reversed(list(net.up_blocks)))
        else:
            raise InvalidArgument(f"{type(net).__name__} has no known skip connections: name the modules whose "
                                  "outputs are skip features (outputs_of=) or whose inputs receive them (inputs_of=)")

    @property
    def levels(self) -> int:
        return self.net.num_skip_levels if self.kind == "keyword" else len(self.modules)

    def entries(self, scales: Sequence[float]) -> list[tuple[torch.nn.Module, str, Any]]:
        """(module, kind, factor) for each hooked module; levels at rho 1 are left out (no multiply at all)."""
        if self.kind == "keyword":
            return [(self.net, "keyword", list(scales))]
        return [(m, self.kind, rho) for m, rho in zip(self.modules, scales) if rho != 1.0]


# The scaling reaches the network per call: hooks installed once per module (marked on the module, so a deepcopy
# that copies the hooks copies the mark too) read the factors that the calling thread has entered. A network
# shared with other threads, other samplers or plain callers is never changed: outside an active context of the
# calling thread the hooks do nothing.
_LOCAL = threading.local()
_MARK = "_diffsolve_skip_hooks"
_INSTALL = threading.Lock()


def _active(module: torch.nn.Module) -> list:
    table = getattr(_LOCAL, "active", None)
    return table.get(id(module), []) if table else []


def _install(module: torch.nn.Module, post: bool) -> None:
    with _INSTALL:
        marks = module.__dict__.get(_MARK, frozenset())
        want = "post" if post else "pre"
        if want in marks:
            return
        if post:
            module.register_forward_hook(_post_hook)
        else:
            module.register_forward_pre_hook(_pre_hook, with_kwargs=True)
        module.__dict__[_MARK] = marks | {want}


def _pre_hook(module, args, kwargs):
    entries = _active(module)
    if not entries:
        return None
    for _, kind, factor in entries:
        if kind == "keyword":
            given = kwargs.get("skip_scale")
            scales = list(factor) if given is None else [a * b for a, b in zip(given, factor)]
            kwargs = {**kwargs, "skip_scale": scales}
        elif kind == "up_blocks":
            if "res_hidden_states_tuple" in kwargs:
                kwargs = {**kwargs, "res_hidden_states_tuple": tuple(r * factor
                                                                     for r in kwargs["res_hidden_states_tuple"])}
            else:
                args = (args[0], tuple(r * factor for r in args[1]), *args[2:])
        elif kind == "inputs":
            args = (args[0] * factor, *args[1:])
    return args, kwargs


def _post_hook(module, args, out):
    for _, kind, factor in _active(module):
        if kind == "outputs":
            out = out * factor if isinstance(out, torch.Tensor) else (out[0] * factor, *out[1:])
    return out


class SkipTuned:
    """The scaling as a context manager on a torch network (see the module docstring).

    It applies to the network's calls made by the thread that entered it, while it is entered; contexts may nest,
    overlap across threads and exit in any order.

    Args:
        net: the torch network whose skips are scaled (never changed: hooks read the factors per call).
        rho_bottom: the factor on the deepest skip level.
        rho_top: the factor on the highest-resolution skip level.
        rho: one factor per skip level (top to bottom) instead of the linear `rho_top` .. `rho_bottom`.
        outputs_of: names of the modules whose outputs are skip features, for a network diffsolve does not know.
        inputs_of: names of the modules whose first input is a skip feature (instead of `outputs_of`).
        active: EDM noise levels (s_lo, s_hi) where the scaling applies; None is everywhere.

    Raises:
        InvalidArgument: `net` is not a torch module, a factor or `active` is invalid, or the skips are not found.
    """

    def __init__(self, net: Any, rho_bottom: float = 0.8, rho_top: float = 1.0, *, rho: Sequence[float] | None = None,
                 outputs_of: Sequence[str] | None = None, inputs_of: Sequence[str] | None = None,
                 active: tuple[float, float] | None = None):
        if not isinstance(net, torch.nn.Module):
            raise InvalidArgument(f"skip tuning hooks a torch.nn.Module, got {type(net).__name__}")
        self.rho_bottom, self.rho_top, self.active = check_skip_settings(rho_bottom, rho_top, active)
        self.target = _Target(net, outputs_of, inputs_of)
        if rho is not None:
            if isinstance(rho, (str, bytes)) or not hasattr(rho, "__iter__"):
                raise InvalidArgument(f"rho={rho!r}: give one factor per skip level (top to bottom)")
            scales = [check_float(f"rho[{k}]", v, positive=True) for k, v in enumerate(rho)]
            if len(scales) != self.target.levels:
                raise InvalidArgument(f"rho= has {len(scales)} factors; this network has {self.target.levels} "
                                      "skip levels (top to bottom)")
        else:
            scales = depth_scales(self.target.levels, self.rho_top, self.rho_bottom)
        self.scales = scales
        self._entries = self.target.entries(scales)
        for module, kind, _ in self._entries:
            _install(module, post=kind == "outputs")

    @property
    def net(self) -> torch.nn.Module:
        """The tuned network."""
        return self.target.net

    def applies_at(self, p: EvalPoint) -> bool:
        """Whether an evaluation point lies in the active range.

        Args:
            p: the point the field is evaluated at.

        Returns:
            True where the scaling applies (always when `active` is None).

        Raises:
            InvalidArgument: `active` is set and the point has one noise level per sample.
        """
        if self.active is None:
            return True
        if p.per_sample:
            raise InvalidArgument("active= needs one noise level for the batch; this point is per sample")
        return self.active[0] <= p.s <= self.active[1]

    def __enter__(self) -> "SkipTuned":
        if not hasattr(_LOCAL, "active"):
            _LOCAL.active, _LOCAL.tokens = {}, {}
        token = object()
        for module, kind, factor in self._entries:
            _LOCAL.active.setdefault(id(module), []).append((token, kind, factor))
        _LOCAL.tokens.setdefault(id(self), []).append(token)
        return self

    def __exit__(self, *exc) -> None:
        tokens = getattr(_LOCAL, "tokens", {}).get(id(self))
        if not tokens:
            return
        token = tokens.pop()
        if not tokens:
            del _LOCAL.tokens[id(self)]
        for module, _, _ in self._entries:
            kept = [e for e in _LOCAL.active.get(id(module), []) if e[0] is not token]
            if kept:
                _LOCAL.active[id(module)] = kept
            else:
                _LOCAL.active.pop(id(module), None)
