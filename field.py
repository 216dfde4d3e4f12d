"""The model boundary: any network (eps, x0, v, score, velocity or EDM denoiser) as one vector field.

The field is the only place where a network is called. Solvers ask it for the data prediction x0_hat (or the
ODE slope) at an `EvalPoint`: the path scalars at one time, either host floats that a solver's plan computed
before the loop, or per-sample tensors on the device (a solver that picks its times per sample). Dtypes follow
EDM's `Precond`: the network gets `x` in its own dtype and its time input in float32 or better; what it returns
comes back in the state's dtype. Wrappers (guidance, per-step model options, feature capture) hold the field
they wrap and change one thing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.kernels import lincomb
from diffsolve.predictions import PathPoint, canonical_prediction, to_x0
from diffsolve.schedules import NoiseSchedule, get_schedule

TIME_CONVENTIONS = ("diffusion", "flow")
KINDS = ("x0", "velocity")


@dataclass(frozen=True)
class ModelSpec:
    """What a model says about itself so that `Sampler(model)` needs no other argument."""

    prediction: str
    schedule: NoiseSchedule | None
    sample_shape: tuple[int, ...] | None = None
    time_convention: str = "diffusion"
    data_range: tuple[float, float] | None = None
    solver: str | None = None          # the sampler this model family needs (consistency, shortcut), else None
    step_input: str | None = None      # keyword under which the model takes the step size (shortcut models)


@dataclass(frozen=True)
class EvalPoint:
    """Path scalars at schedule time t (s = sigma / alpha is the EDM noise level).

    Each value is a host float (the same for the whole batch; float64 precision) or a tensor with one value per
    sample, on the device, for solvers that choose their times per sample.
    """

    t: Any
    model_time: Any
    alpha: Any = 1.0
    sigma: Any = 0.0
    d_alpha: Any = 0.0
    d_sigma: Any = 0.0
    step: Any = None        # step size in model time this evaluation serves (shortcut models' d); None: 0

    @property
    def per_sample(self) -> bool:
        return isinstance(self.t, torch.Tensor)

    @property
    def s(self) -> Any:
        if self.per_sample:
            return self.sigma / self.alpha
        return self.sigma / self.alpha if self.alpha != 0 else float("inf")

    @property
    def path(self) -> PathPoint:
        return PathPoint(self.alpha, self.sigma, self.d_alpha, self.d_sigma)

    def path_for(self, x: torch.Tensor) -> PathPoint:
        """The path scalars broadcastable against x (per-sample tensors become [batch, 1, ...] in x's dtype)."""
        if not self.per_sample:
            return self.path
        return PathPoint(*(per_sample(v, x) for v in (self.alpha, self.sigma, self.d_alpha, self.d_sigma)))


def per_sample(v: Any, x: torch.Tensor) -> Any:
    """A host float as is; a tensor of one value per sample as [batch, 1, ..., 1] in x's dtype and device."""
    if not isinstance(v, torch.Tensor):
        return v
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class FieldOutput:
    """What one evaluation returns: the data prediction (or velocity, for `kind='velocity'`) and auxiliary outputs
    that a caller asked for (features captured from named modules, keyed by the name the caller gave)."""

    value: torch.Tensor
    aux: Mapping[str, Any] = dc_field(default_factory=dict)


def model_spec_of(model: Any) -> ModelSpec | None:
    spec = getattr(model, "diffsolve_spec", None)
    if callable(spec):
        spec = spec()
    return spec if isinstance(spec, ModelSpec) else None


def floating_dtype_of(model: Any) -> torch.dtype | None:
    """The dtype of a module's first floating-point parameter or buffer (None for plain functions)."""
    for attr in ("parameters", "buffers"):
        fn = getattr(model, attr, None)
        if callable(fn):
            for p in fn():
                if p.is_floating_point():
                    return p.dtype
    return None


def device_of(model: Any) -> torch.device | None:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return None


def _plain(value: Any) -> bool:
    """Plain data whose repr is a faithful, stable description (no addresses, no tensors)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's class name, its state_dict (names, dtypes, shapes and bytes) and the plain settings
    its submodules hold outside it (a UNet's `skip_scales`), which change the output as surely as the weights."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for prefix, sub in module.named_modules():
        for attr, value in sorted(vars(sub).items()):
            # None is left out with tensors: a slot filled by a forward pass must not change the key.
            if attr.startswith("_") or attr == "training" or value is None or not _plain(value):
                continue
            h.update(f"{prefix}.{attr}={value!r};".encode())
    state = module.state_dict()
    for name in sorted(state):
        v = state[name]
        h.update(name.encode())
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().contiguous()
            h.update(f"{v.dtype}{tuple(v.shape)}".encode())
            h.update((v.view(torch.int16) if v.dtype == torch.bfloat16 else v).numpy().tobytes())
        else:
            h.update(repr(v).encode())
    return f"sha256:{h.hexdigest()}"


def model_identity(model: Any) -> str | None:
    """A stable identity of a network: its `identity()` when it has one, else a digest of an nn.Module's
    state_dict; None for callables that cannot be identified (they are never cached)."""
    ident = getattr(model, "identity", None)
    if callable(ident):
        value = ident()
        return None if value is None else f"{type(model).__qualname__}:{value}"
    if isinstance(model, torch.nn.Module):
        return f"{type(model).__qualname__}:{state_dict_digest(model)}"
    return None


def unwrap_output(out: Any) -> torch.Tensor:
    """The declared rule for what a network may return: a tensor, an object or dict with a `sample` tensor
    (diffusers' outputs), or a tuple/list whose first item is the prediction (the rest, e.g. features, ignored)."""
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


class Field:
    """What every field and wrapper offers: `evaluate(x, p, kind)` and the two views of it solvers use."""

    evals_per_call = 1

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """The data prediction x0_hat = E[x0 | x_t] at the point p."""
        return self.evaluate(x, p, "x0", **kwargs).value

    def velocity(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """dx/dt in the schedule's diffusion time (t decreasing towards data)."""
        return self.evaluate(x, p, "velocity", **kwargs).value

    # --- host-side, before the loop ---------------------------------------------------------------
    @property
    def has_schedule(self) -> bool:
        return self.schedule is not None

    @property
    def t_max(self) -> float:
        return self.schedule.t_max if self.schedule is not None else 1.0

    def require_schedule(self, who: str) -> None:
        if self.schedule is None:
            raise InvalidArgument(
                f"solver {who!r} needs a Gaussian noise schedule, but this field is a plain velocity field "
                "(schedule=None); use 'euler', 'heun', 'rk4' or another Runge-Kutta solver, the Adams-Bashforth "
                "solvers 'ipndm', 'ipndm_v' or 'lms', or pass schedule=")

    def at(self, t: Any) -> EvalPoint:
        """Path scalars at schedule time t: host floats for a number, per-sample device tensors for a tensor."""
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return self._at_tensor(t)
        return self._at_host(float(t))

    def _at_host(self, t: float) -> EvalPoint:
        sch = self.schedule
        if sch is None:
            return EvalPoint(t=t, model_time=(1.0 - t) if self.time_convention == "flow" else t)
        tt = torch.tensor(t, dtype=torch.float64)
        alpha, sigma = float(sch.alpha(tt)), float(sch.sigma(tt))
        d_alpha = float(sch.d_alpha(tt)) if t > 0 else 0.0
        d_sigma = float(sch.d_sigma(tt)) if t > 0 else 0.0
        if alpha == 0.0 and self.prediction in ("eps", "score", "denoiser"):
            raise InvalidArgument(
                f"prediction={self.prediction!r} gives no data prediction at pure noise (alpha = 0 at t={t:g}); "
                f"start the grid below it, e.g. grid_options={{'t_max': {0.999 * t:g}}}")
        if self.prediction == "denoiser":
            mt = sigma / alpha
        else:
            mt = float(sch.model_time(1.0 - tt if self.time_convention == "flow" else tt))
        return EvalPoint(t=t, model_time=mt, alpha=alpha, sigma=sigma, d_alpha=d_alpha, d_sigma=d_sigma)

    def _at_tensor(self, t: torch.Tensor) -> EvalPoint:
        # Per-sample times stay on their device: no host read, so a solver may compute them inside the loop.
        sch = self.schedule
        if sch is None:
            return EvalPoint(t=t, model_time=(1.0 - t) if self.time_convention == "flow" else t)
        alpha, sigma = sch.alpha(t), sch.sigma(t)
        d_alpha = torch.where(t > 0, sch.d_alpha(t), torch.zeros_like(t))
        d_sigma = torch.where(t > 0, sch.d_sigma(t), torch.zeros_like(t))
        if self.prediction == "denoiser":
            mt = sigma / alpha
        else:
            mt = sch.model_time(1.0 - t if self.time_convention == "flow" else t)
        return EvalPoint(t=t, model_time=mt, alpha=alpha, sigma=sigma, d_alpha=d_alpha, d_sigma=d_sigma)

    def identity(self) -> str | None:
        """A stable string naming what this field computes (the reference cache's key), or None if unknown."""
        return None

    def correction_identity(self) -> str | None:
        """The identity a learned correction (AMED predictor, optimized grid) is matched against: `identity()`
        without the wrappers that change sampling on purpose and stack on a correction (Skip-Tuning)."""
        return self.identity()


class VectorField(Field):
    """`VectorField(model, prediction=..., schedule=...)`: the common form of a network (DPM-Solver model_wrapper).

    `model(x, t_model, **kwargs)` is called with a 1-D tensor of model times (one per sample). With
    `schedule=None` and `prediction="velocity"` the model is a plain ODE `dx/dt = f(x, t)` on t in [0, 1]; only
    the generic integrators (Euler, Heun, Runge-Kutta, torchdiffeq) accept such a field. `clip_x0=(low, high)`
    clamps the data prediction (diffusers' `clip_sample`). `model_dtype=` overrides the dtype the network is
    called in (by default that of its first floating parameter, or the state's for a plain function).
    """

    def __init__(self, model: Callable[..., Any], prediction: str | None = None,
                 schedule: NoiseSchedule | str | None = None, *, time_convention: str | None = None,
                 sample_shape: tuple[int, ...] | None = None, model_kwargs: Mapping[str, Any] | None = None,
                 clip_x0: tuple[float, float] | None = None, model_dtype: torch.dtype | None = None,
                 step_input: str | None = None):
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
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None
        self.model_kwargs = dict(model_kwargs or {})
        self.spec = spec
        if clip_x0 is not None and not (isinstance(clip_x0, (tuple, list)) and len(clip_x0) == 2
                                        and float(clip_x0[0]) < float(clip_x0[1])):
            raise InvalidArgument(f"clip_x0={clip_x0!r}: must be a pair (low, high) with low < high")
        self.clip_x0 = (float(clip_x0[0]), float(clip_x0[1])) if clip_x0 is not None else None
        if model_dtype is not None and not (isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point):
            raise InvalidArgument(f"model_dtype={model_dtype!r}: must be a floating torch dtype or None")
        self.model_dtype = model_dtype
        if step_input is None and spec is not None:
            step_input = spec.step_input
        if step_input is not None and not (isinstance(step_input, str) and step_input.isidentifier()):
            raise InvalidArgument(f"step_input={step_input!r}: must be the model's keyword for the step size, or None")
        self.step_input = step_input

    @property
    def data_range(self) -> tuple[float, float] | None:
        return self.spec.data_range if self.spec is not None else None

    # --- inside the loop: network calls only ------------------------------------------------------
    def call_model(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """The network's raw output at p, in the state's dtype (EDM Precond's casts)."""
        mdtype = self.model_dtype or floating_dtype_of(self.model) or x.dtype
        # Half-precision time inputs round (bf16 turns timestep 999 into 1000): float32 or better, always.
        tdtype = torch.float64 if (x.dtype == torch.float64 and mdtype == torch.float64) else torch.float32
        if p.per_sample:
            t_in = p.model_time.to(device=x.device, dtype=tdtype).reshape(-1).expand(x.shape[0])
        else:
            t_in = torch.full((x.shape[0],), p.model_time, dtype=tdtype, device=x.device)
        x_in = x / per_sample(p.alpha, x) if self.prediction == "denoiser" else x
        if self.step_input is not None:
            # A shortcut model takes the step it is asked to jump; any other solver asks for d = 0, the
            # instantaneous velocity (Frans et al. 2024), so every ODE solver still applies.
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
        model = model_identity(self.model)
        sch = self.schedule.identity() if self.schedule is not None else "none"
        if model is None or sch is None:
            return None
        kwargs = identity_of_kwargs(self.model_kwargs)
        if kwargs is None:
            return None
        step = f", step_input={self.step_input}" if self.step_input is not None else ""
        return (f"VectorField(model={model}, prediction={self.prediction}, schedule={sch}, "
                f"time={self.time_convention}, clip={self.clip_x0}, kwargs={kwargs}{step})")


def identity_of_kwargs(kwargs: Mapping[str, Any]) -> str | None:
    """Model keyword arguments as a stable string: tensors by content hash; None if a value has no stable form."""
    parts = []
    for k in sorted(kwargs):
        v = kwargs[k]
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            t = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
            v = f"tensor:{t.dtype}{tuple(t.shape)}:{hashlib.sha256(t.numpy().tobytes()).hexdigest()}"
        elif not isinstance(v, (int, float, str, bool, type(None), tuple)):
            return None
        parts.append(f"{k}={v!r}")
    return ",".join(parts)


def velocity_from_x0(x: torch.Tensor, x0: torch.Tensor, p: PathPoint) -> torch.Tensor:
    """Probability-flow dx/dt = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) x0_hat."""
    ratio = p.d_sigma / p.sigma
    cx0 = p.d_alpha - ratio * p.alpha
    if isinstance(ratio, torch.Tensor) or isinstance(cx0, torch.Tensor):
        return ratio * x + cx0 * x0
    return lincomb((ratio, cx0), (x, x0))


# ------------------------------------------------------------------------------------------------
# Wrappers: each holds the field it wraps and changes one thing
# ------------------------------------------------------------------------------------------------
class FieldWrapper(Field):
    """Base of wrappers: everything not overridden is the inner field's (schedule, shape, points, ...)."""

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
        return self.inner.evals_per_call

    @property
    def schedule(self) -> NoiseSchedule | None:
        return self.inner.schedule

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        return self.inner.evaluate(x, p, kind, **kwargs)

    # True for wrappers a correction trained on the bare network applies through (see Field.correction_identity)
    stacks_on_corrections = False

    def identity(self) -> str | None:
        return self._compose(self.inner.identity())

    def correction_identity(self) -> str | None:
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
    """

    def __init__(self, field: Field, scale: float | Callable[[EvalPoint], float],
                 uncond_kwargs: Mapping[str, Any]):
        super().__init__(field)
        self.scale = _scalar_or_callable("scale", scale)
        self.uncond_kwargs = dict(uncond_kwargs)

    @property
    def evals_per_call(self) -> int:
        return 2 * self.inner.evals_per_call

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        cond = self.inner.evaluate(x, p, kind, **kwargs)
        uncond = self.inner.evaluate(x, p, kind, **{**kwargs, **self.uncond_kwargs})
        w = self.scale(p) if callable(self.scale) else self.scale
        return FieldOutput(uncond.value + w * (cond.value - uncond.value), cond.aux)

    def own_identity(self) -> str | None:
        if callable(self.scale):
            return None
        uncond = identity_of_kwargs(self.uncond_kwargs)
        return None if uncond is None else f"scale={self.scale!r}, uncond={uncond}"


class StepOptions(FieldWrapper):
    """Model keyword arguments that change along the trajectory: `options(p) -> dict` is merged into every call
    at the point p (skip scales per noise level, a per-step conditioning, ...)."""

    def __init__(self, field: Field, options: Callable[[EvalPoint], Mapping[str, Any]], identity: str | None = None):
        super().__init__(field)
        if not callable(options):
            raise InvalidArgument(f"options must be a function of the EvalPoint returning a dict, got {options!r}")
        self.options = options
        self.options_identity = identity

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        return self.inner.evaluate(x, p, kind, **{**self.options(p), **kwargs})

    def own_identity(self) -> str | None:
        return self.options_identity


class FeatureCapture(FieldWrapper):
    """Features of the network for the solver: forward hooks on named submodules, active only during the call.

    `modules={"bottleneck": "mid"}` maps an output name to a submodule path of the network (`model.mid`, a
    diffusers `UNet2DModel`'s `"mid_block"`, any module of yours). Each evaluation's `aux[name]` holds that
    module's output (its first tensor when it returns a tuple), passed through `reduce` when given.
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
        return f"features={sorted(self.paths.items())}"   # features do not change the values


def _network_of(field: Field) -> Any:
    while isinstance(field, FieldWrapper):
        field = field.inner
    return getattr(field, "model", None)


# Adapters (k-diffusion, EDM) register how they recognise a network; the core never imports them.
_MODEL_ADAPTERS: list[Callable[..., "Field | None"]] = []


def register_model_adapter(adapter: Callable[..., "Field | None"]) -> None:
    """`adapter(model, **given) -> Field`, or None if not its kind of model; `as_field` (hence `Sampler(model)`)
    asks each registered adapter, in order, about a model that declares no ModelSpec."""
    if adapter not in _MODEL_ADAPTERS:
        _MODEL_ADAPTERS.append(adapter)


def as_field(model_or_field: Any, **kwargs: Any) -> Field:
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
