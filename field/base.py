"""What every field is: the model's self-description (ModelSpec), the point a field is evaluated at (EvalPoint),
what one evaluation returns (FieldOutput), and the Field interface with its host-side path scalars."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.predictions import PathPoint
from diffsolve.schedules import NoiseSchedule


@dataclass(frozen=True)
class ModelSpec:
    """What a model says about itself so that `Sampler(model)` needs no other argument.

    A model declares it as `model.diffsolve_spec` (an attribute or a method returning it).

    Attributes:
        prediction: what the network predicts ("eps", "x0", "v", "score", "velocity", "denoiser").
        schedule: its noise schedule, or None for a plain velocity field.
        sample_shape: one sample's shape, without the batch; None: not declared.
        time_convention: "diffusion" (t = 0 is data) or "flow" (t = 0 is noise).
        data_range: the data's (low, high), or None.
        solver: the sampler this model family needs (consistency, shortcut), else None.
        step_input: the keyword under which the model takes the step size (shortcut models), else None.
        source: where a plain velocity field's trajectories start (a Distribution or a callable
            `source(n, generator)`, see `diffsolve.field.source`); None: the standard normal.
    """

    prediction: str
    schedule: NoiseSchedule | None
    sample_shape: tuple[int, ...] | None = None
    time_convention: str = "diffusion"
    data_range: tuple[float, float] | None = None
    solver: str | None = None          # the sampler this model family needs (consistency, shortcut), else None
    step_input: str | None = None      # keyword under which the model takes the step size (shortcut models)
    source: Any = None                 # the start distribution of a plain velocity field; None: standard normal


@dataclass(frozen=True)
class EvalPoint:
    """Path scalars at schedule time t (s = sigma / alpha is the EDM noise level).

    Each value is a host float (the same for the whole batch; float64 precision) or a tensor with one value per
    sample, on the device, for solvers that choose their times per sample.

    Attributes:
        t: schedule time.
        model_time: the network's time input at t.
        alpha: the path's data scale.
        sigma: the path's noise scale.
        d_alpha: d alpha / dt.
        d_sigma: d sigma / dt.
        step: the step size in model time this evaluation serves (shortcut models' d); None: 0.
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
        """Whether the scalars are per-sample device tensors (else host floats)."""
        return isinstance(self.t, torch.Tensor)

    @property
    def s(self) -> Any:
        """The EDM noise level sigma / alpha (inf at alpha = 0 for host floats)."""
        if self.per_sample:
            return self.sigma / self.alpha
        return self.sigma / self.alpha if self.alpha != 0 else float("inf")

    @property
    def path(self) -> PathPoint:
        """The path scalars as a PathPoint (alpha, sigma and their derivatives)."""
        return PathPoint(self.alpha, self.sigma, self.d_alpha, self.d_sigma)

    def path_for(self, x: torch.Tensor) -> PathPoint:
        """The path scalars broadcastable against x (per-sample tensors become [batch, 1, ...] in x's dtype).

        Args:
            x: the state the scalars will multiply.

        Returns:
            A PathPoint.
        """
        if not self.per_sample:
            return self.path
        return PathPoint(*(per_sample(v, x) for v in (self.alpha, self.sigma, self.d_alpha, self.d_sigma)))


def per_sample(v: Any, x: torch.Tensor) -> Any:
    """A host float as is; a tensor of one value per sample as [batch, 1, ..., 1] in x's dtype and device.

    Args:
        v: a path scalar (float or per-sample tensor).
        x: the state it will multiply.

    Returns:
        v, or the tensor reshaped to broadcast against x.
    """
    if not isinstance(v, torch.Tensor):
        return v
    return v.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True)
class FieldOutput:
    """What one evaluation returns: the data prediction (or velocity, for `kind='velocity'`) and auxiliary outputs
    that a caller asked for (features captured from named modules, keyed by the name the caller gave).

    Attributes:
        value: the data prediction or velocity, in the state's shape and dtype.
        aux: auxiliary outputs by name (empty unless a FeatureCapture asked).
    """

    value: torch.Tensor
    aux: Mapping[str, Any] = dc_field(default_factory=dict)


class Field:
    """What every field and wrapper offers: `evaluate(x, p, kind)` and the two views of it solvers use.

    Attributes:
        evals_per_call: network evaluations per `evaluate` call (2 under classifier-free guidance).
        source: where trajectories start (`diffsolve.field.source`); None: the standard normal.
    """

    evals_per_call = 1
    source: Any = None
    # How many per-sample conditions the field is bound to (Conditioned); None: it takes any batch.
    condition_rows: int | None = None

    def select(self, index: Any) -> "Field":
        """The field for the samples `index` of the batch its per-sample conditions describe (see Conditioned).

        Trainers draw n starts, solve a teacher on all n and fit on minibatches: `field.select(idx)` is the field
        of the minibatch `idx`, its conditions following the samples. A field without per-sample conditions is the
        same for every sample and returns itself.

        Args:
            index: the rows, a 1-D integer tensor (or anything a tensor can be indexed with).

        Returns:
            The field bound to those rows (here: this field).
        """
        return self

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0", **kwargs: Any) -> FieldOutput:
        """One evaluation of the field at `x`, point `p`.
        Args:
            x: the state, `(batch, *sample_shape)`.
            p: the point (path scalars) to evaluate at.
            kind: "x0" (the data prediction) or "velocity" (dx/dt in diffusion time).
            **kwargs: keyword arguments for the network.

        Returns:
            A FieldOutput.
        """
        raise NotImplementedError

    def denoise(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """The data prediction x0_hat = E[x0 | x_t] at the point p.

        Args:
            x: the state.
            p: the point.
            **kwargs: keyword arguments for the network.

        Returns:
            x0_hat, in x's shape and dtype.
        """
        return self.evaluate(x, p, "x0", **kwargs).value

    def velocity(self, x: torch.Tensor, p: EvalPoint, **kwargs: Any) -> torch.Tensor:
        """dx/dt in the schedule's diffusion time (t decreasing towards data).

        Args:
            x: the state.
            p: the point.
            **kwargs: keyword arguments for the network.

        Returns:
            dx/dt, in x's shape and dtype.
        """
        return self.evaluate(x, p, "velocity", **kwargs).value

    # --- host-side, before the loop ---------------------------------------------------------------
    @property
    def has_schedule(self) -> bool:
        """Whether the field has a Gaussian noise schedule (False: a plain velocity field)."""
        return self.schedule is not None

    @property
    def t_max(self) -> float:
        """The schedule's t_max, or 1 for a plain velocity field."""
        return self.schedule.t_max if self.schedule is not None else 1.0

    def require_schedule(self, who: str) -> None:
        """Refuse a field without a noise schedule for a solver that needs one.

        Args:
            who: the solver's name, for the message.

        Raises:
            InvalidArgument: the field is a plain velocity field (naming the solvers that take one).
        """
        if self.schedule is None:
            raise InvalidArgument(
                f"solver {who!r} needs a Gaussian noise schedule, but this field is a plain velocity field "
                "(schedule=None); use 'euler', 'heun', 'rk4' or another Runge-Kutta solver, the Adams-Bashforth "
                "solvers 'ipndm', 'ipndm_v' or 'lms', or pass schedule=")

    def at(self, t: Any) -> EvalPoint:
        """Path scalars at schedule time t: host floats for a number, per-sample device tensors for a tensor.

        Args:
            t: a time (host scalars) or a 1-D tensor of per-sample times (no host read).

        Returns:
            The EvalPoint.

        Raises:
            InvalidArgument: an eps, score or denoiser model at pure noise (alpha = 0), where it predicts no data.
        """
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
