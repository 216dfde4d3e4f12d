"""VectorField: any network (eps, x0, v, score, velocity or EDM denoiser) as one data-prediction field.

The field is the only place where a network is called. Solvers ask it for the data prediction x0_hat (or the
ODE slope) at an `EvalPoint`, a bundle of float64 path scalars that the solver computed on the host before the
sampling loop, so nothing inside the loop evaluates the schedule or syncs with the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping

import torch

from .errors import InvalidArgument, check_choice
from .predictions import PathPoint, canonical_prediction, to_x0
from .schedules import NoiseSchedule, get_schedule

TIME_CONVENTIONS = ("diffusion", "flow")


@dataclass(frozen=True)
class ModelSpec:
    """What a model says about itself so that `Sampler(model)` needs no other argument."""

    prediction: str
    schedule: NoiseSchedule | None
    sample_shape: tuple[int, ...] | None = None
    time_convention: str = "diffusion"
    data_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class EvalPoint:
    """Float64 path scalars at schedule time t, precomputed on the host (s = sigma / alpha, the EDM noise level)."""

    t: float
    model_time: float
    alpha: float = 1.0
    sigma: float = 0.0
    d_alpha: float = 0.0
    d_sigma: float = 0.0

    @property
    def s(self) -> float:
        return self.sigma / self.alpha if self.alpha != 0 else float("inf")

    @property
    def path(self) -> PathPoint:
        return PathPoint(self.alpha, self.sigma, self.d_alpha, self.d_sigma)


def model_spec_of(model: Any) -> ModelSpec | None:
    spec = getattr(model, "diffsolve_spec", None)
    if callable(spec):
        spec = spec()
    return spec if isinstance(spec, ModelSpec) else None


class VectorField:
    """`VectorField(model, prediction=..., schedule=...)`: the common form of a network (DPM-Solver model_wrapper).

    `clip_x0=(low, high)` clamps the data prediction (diffusers' `clip_sample`); off by default.

    `model(x, t_model, **kwargs)` is called with a 1-D tensor of model times (one per sample). With
    `schedule=None` and `prediction="velocity"` the model is a plain ODE `dx/dt = f(x, t)` on t in [0, 1]; only
    the generic integrators (Euler, Heun, Runge-Kutta, torchdiffeq) accept such a field.
    """

    evals_per_call = 1

    def __init__(self, model: Callable[..., torch.Tensor], prediction: str | None = None,
                 schedule: NoiseSchedule | str | None = None, *, time_convention: str | None = None,
                 sample_shape: tuple[int, ...] | None = None, model_kwargs: Mapping[str, Any] | None = None,
                 clip_x0: tuple[float, float] | None = None):
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
        # diffusers' clip_sample: the data prediction is clamped to the data range before each update
        self.clip_x0 = (float(clip_x0[0]), float(clip_x0[1])) if clip_x0 is not None else None

    # --- host-side, before the loop ---------------------------------------------------------------
    @property
    def has_schedule(self) -> bool:
        return self.schedule is not None

    @property
    def t_max(self) -> float:
        return self.schedule.t_max if self.schedule is not None else 1.0

    def at(self, t: float) -> EvalPoint:
        """Path scalars at schedule time t, in float64 on the host."""
        t = float(t)
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

    def require_schedule(self, who: str) -> None:
        if self.schedule is None:
            raise InvalidArgument(
                f"solver {who!r} needs a Gaussian noise schedule, but this field is a plain velocity field "
                "(schedule=None); use 'euler', 'heun', 'rk4' or another Runge-Kutta solver, or pass schedule=")

    # --- inside the loop: network calls only ------------------------------------------------------
    def call_model(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        t_in = torch.full((x.shape[0],), p.model_time, dtype=x.dtype, device=x.device)
        if self.prediction == "denoiser":
            x = x / p.alpha
        return self.model(x, t_in, **{**self.model_kwargs, **kwargs})

    def denoise(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """The data prediction x0_hat = E[x0 | x_t] at the point p."""
        self.require_schedule("denoise")
        out = self.call_model(x, p, **kwargs)
        if self.prediction == "velocity" and self.time_convention == "flow":
            out = -out
        x0 = to_x0(self.prediction, out, x, p.path)
        return x0.clamp(*self.clip_x0) if self.clip_x0 is not None else x0

    def velocity(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """dx/dt in the schedule's diffusion time (t decreasing towards data)."""
        if self.prediction == "velocity":
            out = self.call_model(x, p, **kwargs)
            return -out if self.time_convention == "flow" else out
        x0 = self.denoise(x, p, **kwargs)
        return velocity_from_x0(x, x0, p)


def velocity_from_x0(x: torch.Tensor, x0: torch.Tensor, p: EvalPoint) -> torch.Tensor:
    """Probability-flow dx/dt = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) x0_hat."""
    ratio = p.d_sigma / p.sigma
    return ratio * x + (p.d_alpha - ratio * p.alpha) * x0


class ClassifierFreeGuidance(VectorField):
    """Classifier-free guidance on the converted prediction: x0 = x0_u + w (x0_c - x0_u) (Ho & Salimans 2022)."""

    evals_per_call = 2

    def __init__(self, field: VectorField, scale: float, uncond_kwargs: Mapping[str, Any]):
        self.__dict__.update(field.__dict__)
        self.inner = field
        self.scale = float(scale)
        self.uncond_kwargs = dict(uncond_kwargs)

    def denoise(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        cond = self.inner.denoise(x, p, **kwargs)
        uncond = self.inner.denoise(x, p, **{**kwargs, **self.uncond_kwargs})
        return uncond + self.scale * (cond - uncond)

    def velocity(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        cond = self.inner.velocity(x, p, **kwargs)
        uncond = self.inner.velocity(x, p, **{**kwargs, **self.uncond_kwargs})
        return uncond + self.scale * (cond - uncond)


def as_field(model_or_field: Any, **kwargs: Any) -> VectorField:
    if isinstance(model_or_field, VectorField):
        given = {k: v for k, v in kwargs.items() if v is not None}
        if given:
            raise InvalidArgument(f"{sorted(given)} given together with a VectorField; set them on the field")
        return model_or_field
    return VectorField(model_or_field, **{k: v for k, v in kwargs.items() if v is not None})
