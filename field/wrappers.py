"""Field wrappers: each holds the field it wraps and changes one thing (classifier-free guidance, per-step model
options, features captured from named submodules)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field.base import EvalPoint, Field, FieldOutput
from diffsolve.field.identity import identity_of_kwargs
from diffsolve.schedules import NoiseSchedule


class FieldWrapper(Field):
    """Base of wrappers: everything not overridden is the inner field's (schedule, shape, points, ...).

    Args:
        inner: the field wrapped (a VectorField or another wrapper).

    Raises:
        InvalidArgument: `inner` is not a Field.
    """

    def __init__(self, inner: Field):
        if not isinstance(inner, Field):
            raise InvalidArgument(f"a field wrapper wraps a VectorField or another wrapper, got {type(inner).__name__}")
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper does not define: the wrapped field answers.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def evals_per_call(self) -> int:
        """The inner field's evaluations per call."""
        return self.inner.evals_per_call

    @property
    def schedule(self) -> NoiseSchedule | None:
        """The inner field's schedule."""
        return self.inner.schedule

    @property
    def source(self) -> Any:
        """The inner field's source (None: the standard normal)."""
        return self.inner.source

    @property
    def condition_rows(self) -> int | None:
        """The inner field's number of per-sample conditions (None: any batch)."""
        return self.inner.condition_rows

    def select(self, index: Any) -> Field:
        """This wrapper around the inner field's `select(index)` (itself when the inner field has no rows).

        Args:
            index: the rows.

        Returns:
            The wrapper bound to those rows.
        """
        inner = self.inner.select(index)
        if inner is self.inner:
            return self
        out = copy.copy(self)
        out.inner = inner
        return out

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner field's evaluation, unchanged (subclasses change one thing)."""
        return self.inner.evaluate(x, p, kind, **kwargs)

    # True for wrappers a correction trained on the bare network applies through (see Field.correction_identity)
    stacks_on_corrections = False

    def identity(self) -> str | None:
        """The wrapper's identity around the inner field's, or None if either is unknown."""
        return self._compose(self.inner.identity())

    def correction_identity(self) -> str | None:
        """As Field.correction_identity; wrappers that stack on corrections drop out."""
        inner = self.inner.correction_identity()
        return inner if self.stacks_on_corrections else self._compose(inner)

    def _compose(self, inner: str | None) -> str | None:
        mine = self.own_identity()
        return None if inner is None or mine is None else f"{type(self).__name__}({mine}, {inner})"

    def own_identity(self) -> str | None:
        """What this wrapper adds to the identity; None when it cannot be stated (callables)."""
        return ""


def _scalar_or_callable(name: str, value: Any) -> Any:
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name}={value!r}: must be a number or a function of the EvalPoint")
    return float(value)


class ClassifierFreeGuidance(FieldWrapper):
    """Classifier-free guidance on the converted prediction: x0 = x0_u + w (x0_c - x0_u) (Ho & Salimans 2022).

    `scale` is a number or a function `scale(p: EvalPoint)` of the point (guidance that changes per step).

    Each call evaluates the inner field twice (conditional and unconditional): `evals_per_call` doubles. An
    unconditional keyword tensor of one row is repeated over the batch (one null label or empty-prompt embedding
    for all samples). Per-sample conditions go in a `Conditioned` wrapper around this one.

    Args:
        field: the field to guide.
        scale: the guidance weight w, a number or `scale(p)`.
        uncond_kwargs: the model keywords that make a call unconditional (e.g. `{"class_labels": null_label}`).

    Raises:
        InvalidArgument: a scale that is neither a number nor a function.
    """

    def __init__(self, field: Field, scale: float | Callable[[EvalPoint], float],
                 uncond_kwargs: Mapping[str, Any]):
        super().__init__(field)
        self.scale = _scalar_or_callable("scale", scale)
        self.uncond_kwargs = dict(uncond_kwargs)

    @property
    def evals_per_call(self) -> int:
        """Twice the inner field's: a conditional and an unconditional call."""
        return 2 * self.inner.evals_per_call

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """x0_u + w (x0_c - x0_u) (or the same for velocities); aux from the conditional call."""
        cond = self.inner.evaluate(x, p, kind, **kwargs)
        # one unconditional row (the null label, the empty prompt's embedding) serves the whole batch: a network
        # that reads the batch size off its conditioning (cross-attention) must get one row per sample
        rows = {k: v.expand(x.shape[0], *v.shape[1:]) if isinstance(v, torch.Tensor) and v.dim() > 0
                and v.shape[0] == 1 else v for k, v in self.uncond_kwargs.items()}
        uncond = self.inner.evaluate(x, p, kind, **{**kwargs, **rows})
        w = self.scale(p) if callable(self.scale) else self.scale
        return FieldOutput(uncond.value + w * (cond.value - uncond.value), cond.aux)

    def own_identity(self) -> str | None:
        """The scale and unconditional keywords; None for a scale function."""
        if callable(self.scale):
            return None
        uncond = identity_of_kwargs(self.uncond_kwargs)
        return None if uncond is None else f"scale={self.scale!r}, uncond={uncond}"


class StepOptions(FieldWrapper):
    """Model keyword arguments that change along the trajectory: `options(p) -> dict` is merged into every call
    at the point p (skip scales per noise level, a per-step conditioning, ...).

    Args:
        field: the field to wrap.
        options: `options(p) -> dict` of model keywords at the point p.
        identity: a string naming `options` for caches; None: the field has no identity.

    Raises:
        InvalidArgument: `options` is not callable.
    """

    def __init__(self, field: Field, options: Callable[[EvalPoint], Mapping[str, Any]], identity: str | None = None):
        super().__init__(field)
        if not callable(options):
            raise InvalidArgument(f"options must be a function of the EvalPoint returning a dict, got {options!r}")
        self.options = options
        self.options_identity = identity

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner evaluation with `options(p)` merged in (a call's own keywords win)."""
        return self.inner.evaluate(x, p, kind, **{**self.options(p), **kwargs})

    def own_identity(self) -> str | None:
        """The identity string given, or None."""
        return self.options_identity


class FeatureCapture(FieldWrapper):
    """Features of the network for the solver: forward hooks on named submodules, active only during the call.

    `modules={"bottleneck": "mid"}` maps an output name to a submodule path of the network (`model.mid`, a
    diffusers `UNet2DModel`'s `"mid_block"`, any module of yours). Each evaluation's `aux[name]` holds that
    module's output (its first tensor when it returns a tuple), passed through `reduce` when given.

    Args:
        field: the field whose network is hooked.
        modules: `{output name: submodule path}`.
        reduce: applied to each captured tensor (e.g. a mean over space); None: kept whole.

    Raises:
        InvalidArgument: the network is not an nn.Module, `modules` is empty, or a path is not a submodule.
    """

    def __init__(self, field: Field, modules: Mapping[str, str],
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__(field)
        net = _network_of(field)
        if not isinstance(net, torch.nn.Module):
            raise InvalidArgument("FeatureCapture needs a torch.nn.Module network to hook; this field's model is "
                                  f"{type(net).__name__}")
        if not isinstance(modules, Mapping) or not modules:
            raise InvalidArgument(f"modules={modules!r}: must be a non-empty dict {{output name: module path}}")
        known = dict(net.named_modules())
        for name, path in modules.items():
            if path not in known:
                near = [k for k in known if k.endswith(path.split(".")[-1])][:5]
                raise InvalidArgument(f"modules[{name!r}]={path!r} is not a submodule of the network"
                                      + (f"; similar names: {near}" if near else ""))
        self.targets = {name: known[path] for name, path in modules.items()}
        self.paths = dict(modules)
        self.reduce = reduce

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The inner evaluation with the hooked modules' outputs added to `aux`."""
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name, module in self.targets.items():
            def hook(_m, _inp, out, name=name):
                t = out if isinstance(out, torch.Tensor) else out[0]
                captured[name] = self.reduce(t) if self.reduce is not None else t
            handles.append(module.register_forward_hook(hook))
        try:
            out = self.inner.evaluate(x, p, kind, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return FieldOutput(out.value, {**out.aux, **captured})

    def own_identity(self) -> str | None:
        """The captured module paths (features do not change the values)."""
        return f"features={sorted(self.paths.items())}"   # features do not change the values


def _network_of(field: Field) -> Any:
    while isinstance(field, FieldWrapper):
        field = field.inner
    return getattr(field, "model", None)
