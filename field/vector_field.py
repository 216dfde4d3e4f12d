"""VectorField: a network (eps, x0, v, score, velocity or EDM denoiser) called at an EvalPoint and converted to
the data prediction or the ODE slope; `as_field` builds one from a model (or asks the registered adapters)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice, check_float, check_int
from diffsolve.field.base import EvalPoint, Field, FieldOutput, ModelSpec, per_sample
from diffsolve.field.identity import identity_of_kwargs, model_identity
from diffsolve.field.source import check_source, describe_source, source_identity
from diffsolve.kernels import lincomb
from diffsolve.predictions import PathPoint, canonical_prediction, to_x0
from diffsolve.schedules import NoiseSchedule, get_schedule

TIME_CONVENTIONS = ("diffusion", "flow")


def model_spec_of(model: Any) -> ModelSpec | None:
    """The ModelSpec a model declares (`model.diffsolve_spec`, an attribute or a method), or None.

    Args:
        model: the network or callable.

    Returns:
        The ModelSpec, or None.
    """
    spec = getattr(model, "diffsolve_spec", None)
    if callable(spec):
        spec = spec()
    return spec if isinstance(spec, ModelSpec) else None


def floating_dtype_of(model: Any) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter or buffer (None for plain functions).

    Args:
        model: the network or callable.

    Returns:
        The dtype, or None.
    """
    for attr in ("parameters", "buffers"):
        fn = getattr(model, attr, None)
        if callable(fn):
            for p in fn():
                if p.is_floating_point():
                    return p.dtype
    return None


def device_of(model: Any) -> torch.device | None:
    """The device of a module's first parameter, or None (plain functions, parameterless modules).

    Args:
        model: the network or callable.

    Returns:
        The torch.device, or None.
    """
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return None


def unwrap_output(out: Any) -> torch.Tensor:
    """The declared rule for what a network may return: a tensor, an object or dict with a `sample` tensor
    (diffusers' outputs), or a tuple/list whose first item is the prediction (the rest, e.g. features, ignored).

    Args:
        out: what the network returned.

    Returns:
        The prediction tensor.

    Raises:
        InvalidArgument: no prediction tensor can be found.
    """
    if isinstance(out, torch.Tensor):
        return out
    sample = out.get("sample") if isinstance(out, Mapping) else getattr(out, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise InvalidArgument(
        f"the model returned {type(out).__name__}; it must return a tensor, an object or dict with a `sample` "
        "tensor, or a tuple whose first item is the prediction")


def step_input_given(keyword: str, value: Any) -> InvalidArgument:
    """A caller passed the step-size keyword a shortcut model takes from the solver."""
    return InvalidArgument(
        f"{keyword}={value!r}: this shortcut model takes the step size {keyword!r} from the solver, which sets it "
        f"to the step it takes (d = 1/K with solver='shortcut', d = 0, the instantaneous velocity, with any other "
        f"solver); a {keyword}= that disagrees with the step would make the model jump by one length while the "
        f"solver moves by another. Choose the step size with steps=K, not {keyword}=")


def check_sample_shape(sample_shape: Any) -> tuple[int, ...] | None:
    """None, or a sequence of positive integers (numpy integers are integers; a string is not a shape).

    Args:
        sample_shape: the shape to check.

    Returns:
        A tuple of ints, or None.

    Raises:
        InvalidArgument: not a sequence of positive integers.
    """
    if sample_shape is None:
        return None
    if isinstance(sample_shape, (str, bytes)) or not isinstance(sample_shape, (Sequence, torch.Size)):
        raise InvalidArgument(f"sample_shape={sample_shape!r}: must be a tuple of positive integers (one sample's "
                              "shape, without the batch)")
    return tuple(check_int(f"sample_shape[{i}]", v, 1) for i, v in enumerate(sample_shape))


class VectorField(Field):
    """`VectorField(model, prediction=..., schedule=...)`: the common form of a network (DPM-Solver model_wrapper).

    `model(x, t_model, **kwargs)` is called with a 1-D tensor of model times (one per sample). With
    `schedule=None` and `prediction="velocity"` the model is a plain ODE `dx/dt = f(x, t)` on t in [0, 1]; only
    the generic integrators (Euler, Heun, Runge-Kutta, torchdiffeq) accept such a field. `clip_x0=(low, high)`
    clamps the data prediction (diffusers' `clip_sample`). `model_dtype=` overrides the dtype the network is
    called in (by default that of its first floating parameter, or the state's for a plain function).

    Args:
        model: the network, `model(x, t_model, **kwargs)`. Missing settings are read from its ModelSpec.
        prediction: "eps", "x0", "v", "score", "velocity" or "denoiser" (aliases accepted); required unless the model
            declares it.
        schedule: a NoiseSchedule or its name; None only for prediction="velocity" (a plain ODE).
        time_convention: "diffusion" (default: t = 0 is data) or "flow" (t = 0 is noise; the velocity is negated).
        sample_shape: one sample's shape, without the batch.
        model_kwargs: keywords passed at every call.
        clip_x0: (low, high) to clamp the data prediction.
        model_dtype: the network's dtype (None: detected).
        step_input: the keyword for the step size (shortcut models); None: from the spec, or none.
        source: where trajectories start, for a plain velocity field trained from another distribution than
            N(0, I): a torch.distributions.Distribution or a callable `source(n, generator) -> [n, *sample_shape]`
            (see `diffsolve.field.source`); None: from the spec, or the standard normal. Its sample shape is the
            model's when `sample_shape` is not given.

    Raises:
        InvalidArgument: a model that is not callable, a missing prediction or schedule, or a bad setting.
    """

    def __init__(self, model: Callable[..., Any], prediction: str | None = None,
                 schedule: NoiseSchedule | str | None = None, *, time_convention: str | None = None,
                 sample_shape: tuple[int, ...] | None = None, model_kwargs: Mapping[str, Any] | None = None,
                 clip_x0: tuple[float, float] | None = None, model_dtype: torch.dtype | None = None,
                 step_input: str | None = None, source: Any = None):
        if not callable(model):
            raise InvalidArgument(f"model must be callable, got {type(model).__name__}")
        spec = model_spec_of(model)
        if prediction is None and spec is not None:
            prediction = spec.prediction
        if schedule is None and spec is not None:
            schedule = spec.schedule
        if time_convention is None:
            time_convention = spec.time_convention if spec is not None else "diffusion"
        if sample_shape is None and spec is not None:
            sample_shape = spec.sample_shape
        if prediction is None:
            raise InvalidArgument(
                "prediction= is missing: this model does not declare what it predicts; pass one of "
                "'eps', 'x0', 'v', 'score', 'velocity', 'denoiser' (and schedule=)")
        self.prediction = canonical_prediction(prediction)
        check_choice("time_convention", time_convention, TIME_CONVENTIONS)
        self.time_convention = time_convention
        self.schedule = get_schedule(schedule) if schedule is not None else None
        if self.schedule is None and self.prediction != "velocity":
            raise InvalidArgument(
                f"schedule= is missing: prediction={self.prediction!r} needs a noise schedule (for example "
                "'edm', 'vp_linear', 'rectified_flow' or a NoiseSchedule); only prediction='velocity' may go without")
        self.model = model
        if source is None and spec is not None:
            source = spec.source
        self.source, self.sample_shape = _checked_source(source, check_sample_shape(sample_shape), self.schedule)
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise InvalidArgument(f"model_kwargs={model_kwargs!r}: must be a mapping of keyword -> value")
        self.model_kwargs = dict(model_kwargs or {})
        self.spec = spec
        if clip_x0 is not None:
            if not (isinstance(clip_x0, (tuple, list)) and len(clip_x0) == 2):
                raise InvalidArgument(f"clip_x0={clip_x0!r}: must be a pair (low, high) with low < high")
            clip_x0 = (check_float("clip_x0[0]", clip_x0[0]), check_float("clip_x0[1]", clip_x0[1]))
            if not clip_x0[0] < clip_x0[1]:
                raise InvalidArgument(f"clip_x0={clip_x0!r}: must be a pair (low, high) with low < high")
        self.clip_x0 = clip_x0
        if model_dtype is not None and not (isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point):
            raise InvalidArgument(f"model_dtype={model_dtype!r}: must be a floating torch dtype or None")
        self.model_dtype = model_dtype
        if step_input is None and spec is not None:
            step_input = spec.step_input
        if step_input is not None and not (isinstance(step_input, str) and step_input.isidentifier()):
            raise InvalidArgument(f"step_input={step_input!r}: must be the model's keyword for the step size, or None")
        self.step_input = step_input
        if step_input is not None and step_input in self.model_kwargs:
            raise step_input_given(step_input, self.model_kwargs[step_input])

    @property
    def data_range(self) -> tuple[float, float] | None:
        """The data's (low, high) from the model's spec, or None."""
        return self.spec.data_range if self.spec is not None else None

    # --- inside the loop: network calls only ------------------------------------------------------
    def call_model(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """The network's raw output at p, in the state's dtype (EDM Precond's casts).

        Args:
            x: the state.
            p: the point.
            **kwargs: keyword arguments for the network.

        Returns:
            The raw output, in x's shape and dtype.

        Raises:
            InvalidArgument: the output's shape differs from x's, or a step-size keyword given by the caller.
        """
        mdtype = self.model_dtype or floating_dtype_of(self.model) or x.dtype
        # Half-precision time inputs round (bf16 turns timestep 999 into 1000): float32 or better, always.
        tdtype = torch.float64 if (x.dtype == torch.float64 and mdtype == torch.float64) else torch.float32
        if p.per_sample:
            t_in = p.model_time.to(device=x.device, dtype=tdtype).reshape(-1).expand(x.shape[0])
        else:
            t_in = torch.full((x.shape[0],), p.model_time, dtype=tdtype, device=x.device)
        # a denoiser sees x / alpha (EDM's frame); on the EDM path alpha is exactly 1 and the division a wasted pass
        scaled = self.prediction == "denoiser" and (isinstance(p.alpha, torch.Tensor) or p.alpha != 1.0)
        x_in = x / per_sample(p.alpha, x) if scaled else x
        if self.step_input is not None:
            # A shortcut model takes the step it is asked to jump; any other solver asks for d = 0, the
            # instantaneous velocity (Frans et al. 2024), so every ODE solver still applies.
            if self.step_input in kwargs:
                raise step_input_given(self.step_input, kwargs[self.step_input])
            step = p.step if p.step is not None else 0.0
            kwargs = {**kwargs, self.step_input: (step.to(device=x.device, dtype=tdtype).reshape(-1).expand(x.shape[0])
                                                  if isinstance(step, torch.Tensor) else
                                                  torch.full((x.shape[0],), step, dtype=tdtype, device=x.device))}
        out = unwrap_output(self.model(x_in.to(mdtype), t_in, **{**self.model_kwargs, **kwargs}))
        if out.shape != x.shape:
            raise InvalidArgument(f"the model returned shape {tuple(out.shape)} for an input of shape "
                                  f"{tuple(x.shape)}; its output must have the input's shape")
        return out.to(x.dtype)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """The network at `x`, `p`, converted to the data prediction or the velocity.
        Args:
            x: the state, `(batch, *sample_shape)`.
            p: the point (path scalars) to evaluate at.
            kind: "x0" (the data prediction) or "velocity" (dx/dt in diffusion time).
            **kwargs: keyword arguments for the network.

        Returns:
            A FieldOutput.
        """
        out = self.call_model(x, p, **kwargs)
        if self.prediction == "velocity" and self.time_convention == "flow":
            out = -out
        if kind == "velocity" and self.prediction == "velocity":
            return FieldOutput(out)
        self.require_schedule("denoise")
        path = p.path_for(x)
        x0 = to_x0(self.prediction, out, x, path)
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
        return FieldOutput(x0 if kind == "x0" else velocity_from_x0(x, x0, path))

    def identity(self) -> str | None:
        """The model's identity, prediction, schedule, time convention, clip, keywords and source; None if
        unknown."""
        model = model_identity(self.model)
        sch = self.schedule.identity() if self.schedule is not None else "none"
        if model is None or sch is None:
            return None
        kwargs = identity_of_kwargs(self.model_kwargs)
        if kwargs is None:
            return None
        step = f", step_input={self.step_input}" if self.step_input is not None else ""
        # the standard normal adds nothing, so the identities (and caches) of existing fields stay as they were
        source = source_identity(self.source)
        if source is None:
            return None
        start = f", source={source}" if self.source is not None else ""
        return (f"VectorField(model={model}, prediction={self.prediction}, schedule={sch}, "
                f"time={self.time_convention}, clip={self.clip_x0}, kwargs={kwargs}{step}{start})")


def _checked_source(source: Any, sample_shape: tuple[int, ...] | None,
                    schedule: NoiseSchedule | None) -> tuple[Any, tuple[int, ...] | None]:
    """`check_source`, and a source other than the standard normal only on a plain velocity field."""
    source, sample_shape = check_source(source, sample_shape)
    if source is not None and schedule is not None:
        raise InvalidArgument(
            f"source={describe_source(source)} is for a plain velocity field (prediction='velocity', "
            "schedule=None): on a Gaussian path the path fixes the start, N(0, prior_std^2 I); drop schedule= "
            "to integrate the model's velocity from its own source")
    return source, sample_shape


def with_source(model_or_field: Any, source: Any) -> Field:
    """The field of a model drawing its starts from `source`: `as_field(model, source=source)`, or a copy of a
    field (and of the wrappers around it) with the source set; the model and the field given are left unchanged.

    Args:
        model_or_field: a network or a Field (a VectorField, or wrappers around one).
        source: as VectorField's `source=` (None: the standard normal).

    Returns:
        The Field.

    Raises:
        InvalidArgument: a bad source (naming `source=`), a source on a Gaussian-path field, or a field that
            holds no VectorField.
    """
    if not isinstance(model_or_field, Field):
        return as_field(model_or_field, source=source)
    if isinstance(model_or_field, VectorField):
        field = copy.copy(model_or_field)
        field.source, field.sample_shape = _checked_source(source, field.sample_shape, field.schedule)
        return field
    inner = getattr(model_or_field, "inner", None)
    if not isinstance(inner, Field):
        raise InvalidArgument(f"source= cannot be set on a {type(model_or_field).__name__}: it holds no VectorField; "
                              "build the field with VectorField(model, ..., source=)")
    wrapper = copy.copy(model_or_field)
    wrapper.inner = with_source(inner, source)
    return wrapper


def velocity_from_x0(x: torch.Tensor, x0: torch.Tensor, p: PathPoint) -> torch.Tensor:
    """Probability-flow dx/dt = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) x0_hat.

    Args:
        x: the state.
        x0: the data prediction.
        p: the path scalars at the point.

    Returns:
        dx/dt.
    """
    ratio = p.d_sigma / p.sigma
    cx0 = p.d_alpha - ratio * p.alpha
    if isinstance(ratio, torch.Tensor) or isinstance(cx0, torch.Tensor):
        return ratio * x + cx0 * x0
    return lincomb((ratio, cx0), (x, x0))


# Adapters (k-diffusion, EDM) register how they recognise a network; the core never imports them.
_MODEL_ADAPTERS: list[Callable[..., "Field | None"]] = []


def register_model_adapter(adapter: Callable[..., "Field | None"]) -> None:
    """`adapter(model, **given) -> Field`, or None if not its kind of model; `as_field` (hence `Sampler(model)`)
    asks each registered adapter, in order, about a model that declares no ModelSpec.

    Args:
        adapter: `adapter(model, **given) -> Field | None`; registering twice is a no-op.
    """
    if adapter not in _MODEL_ADAPTERS:
        _MODEL_ADAPTERS.append(adapter)


def as_field(model_or_field: Any, **kwargs: Any) -> Field:
    """A Field from a model: the field itself, a registered adapter's, or a VectorField.

    Args:
        model_or_field: a Field (returned as is), or a network or callable.
        **kwargs: VectorField's settings (None values are left out).

    Returns:
        The Field.

    Raises:
        InvalidArgument: settings given with a Field, or VectorField's refusals.
    """
    given = {k: v for k, v in kwargs.items() if v is not None}
    if isinstance(model_or_field, Field):
        if given:
            raise InvalidArgument(f"{sorted(given)} given together with a VectorField; set them on the field")
        return model_or_field
    if model_spec_of(model_or_field) is None:
        for adapter in _MODEL_ADAPTERS:
            found = adapter(model_or_field, **given)
            if found is not None:
                return found
    return VectorField(model_or_field, **given)
