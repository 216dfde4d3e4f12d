"""The checks `likelihood` runs before any work: the model has a probability flow, the data is a finite batch of
the model's sample shape, and every number is of its type and range (numpy integers are integers; a string is not
a number; zero is a value, refused where it is not meaningful)."""
from __future__ import annotations

from typing import Any

import torch

from diffsolve.errors import InvalidArgument, check_choice, check_float, check_int
from diffsolve.field import Field
from diffsolve.sampler import as_dtype
from diffsolve.solvers import get_solver
from diffsolve.solvers.runge_kutta import TABLEAUX

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
FRAMES = ("auto", "logs", "time")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "adaptive_heun")
FIXED = ("euler", *TABLEAUX)
# Below this the float64 step-size control cannot meet the tolerance (torchdiffeq's step underflows).
MIN_RTOL = 1e-13


def check_flow(field: Field) -> None:
    """Refuse a model family without a probability-flow ODE (a consistency model maps noise to data directly).

    Args:
        field: The model's field; its spec's `solver` names the model family's sampler, if any.

    Raises:
        InvalidArgument: That sampler is stochastic (the model has no probability-flow ODE).
    """
    spec = getattr(field, "spec", None)
    family = getattr(spec, "solver", None)
    if family is not None and not get_solver(family).deterministic:
        raise InvalidArgument(f"this model's spec names the {family!r} sampler: the model maps noise to data "
                              "directly and has no probability-flow ODE, so it defines no likelihood; give a "
                              "denoiser, noise, score or velocity model")


def check_data(field: Field, x: Any, dtype: Any) -> torch.Tensor:
    """x as a finite floating [batch, *sample_shape] tensor on a real device, in `dtype` when given.

    Args:
        field: The model's field (its `sample_shape`, when declared, must match).
        x: The data batch.
        dtype: Dtype to convert `x` to; None keeps its own.

    Returns:
        The checked (and converted) batch.

    Raises:
        InvalidArgument: `x` is not a floating tensor [batch, ...], is on the meta device, is empty, has the
            wrong sample shape or holds NaN or Inf.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidArgument(f"x must be a floating-point tensor [batch, ...]; got {got}")
    if x.device.type == "meta":
        raise InvalidArgument("x is on the meta device (shapes only, no values): give data on cpu or cuda")
    if x.shape[0] == 0:
        raise InvalidArgument("x is an empty batch: give at least one sample")
    shape = getattr(field, "sample_shape", None)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InvalidArgument(f"x has samples of shape {tuple(x.shape[1:])}; this model's samples have shape "
                              f"{tuple(shape)}")
    if dtype is not None:
        run_dtype = as_dtype(dtype)
        x = x.to(run_dtype)
    if not bool(torch.isfinite(x).all()):
        raise InvalidArgument("x holds NaN or Inf values: a likelihood needs finite data")
    return x


def check_numbers(*, divergence: Any, probes: Any, probe: Any, frame: Any, dequantize: Any, solver: Any,
                  steps: Any, rtol: Any, atol: Any, bins: Any) -> tuple[int, int | None, float, float, int]:
    """(probes, steps, rtol, atol, bins) checked; the names checked against their allowed values.

    Args:
        divergence: One of `DIVERGENCES`.
        probes: Hutchinson probes per sample, an integer >= 1.
        probe: One of `PROBES`.
        frame: One of `FRAMES`.
        dequantize: None or 'uniform'.
        solver: An adaptive torchdiffeq method (`ADAPTIVE`) or a fixed-grid tableau (`FIXED`).
        steps: Steps of a fixed-grid solver (needed there, an integer >= 1); ignored for adaptive ones.
        rtol: Relative tolerance in [MIN_RTOL, 1).
        atol: Absolute tolerance, >= 0.
        bins: Quantization bins of the data, an integer >= 2.

    Returns:
        The checked probes, steps, rtol, atol and bins.

    Raises:
        InvalidArgument: A value of the wrong type or outside its allowed values or range.
    """
    check_choice("divergence", divergence, DIVERGENCES)
    check_choice("probe", probe, PROBES)
    check_choice("frame", frame, FRAMES)
    if dequantize not in (None, "uniform"):
        raise InvalidArgument(f"dequantize={dequantize!r}; allowed values: None, 'uniform'")
    probes = check_int("probes", probes, minimum=1)
    bins = check_int("bins", bins, minimum=2)
    if not isinstance(solver, str) or solver not in ADAPTIVE + FIXED:
        raise InvalidArgument(f"solver={solver!r}; allowed values: {', '.join(ADAPTIVE)} (torchdiffeq, adaptive) "
                              f"or a Runge-Kutta tableau with steps=: {', '.join(FIXED)}")
    if solver not in ADAPTIVE:
        if steps is None:
            raise InvalidArgument(f"solver={solver!r} runs a fixed grid: give steps= (an integer >= 1)")
        steps = check_int("steps", steps, minimum=1)
    rtol = check_float("rtol", rtol, positive=True)
    if not MIN_RTOL <= rtol < 1.0:
        raise InvalidArgument(f"rtol={rtol!r}: must lie in [{MIN_RTOL:g}, 1) (float64 cannot resolve less)")
    atol = check_float("atol", atol, nonnegative=True)
    return probes, steps, rtol, atol, bins


def check_span(field: Field, t_start: Any, t_end: Any) -> tuple[float | None, float | None]:
    """t_start and t_end as numbers inside the schedule's [t_min, t_max] (plain fields: [0, 1]).

    Args:
        field: The model's field (its schedule gives the span).
        t_start: Start time of the integration; None keeps the default.
        t_end: End time; None keeps the default.

    Returns:
        The two times as floats, each None where None was given.

    Raises:
        InvalidArgument: A time that is not a number or lies outside the span.
    """
    sch = field.schedule
    lo, hi = (float(sch.t_min), float(sch.t_max)) if sch is not None else (0.0, 1.0)
    out = []
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if value is None:
            out.append(None)
            continue
        v = check_float(name, value)
        if not lo <= v <= hi:
            raise InvalidArgument(f"{name}={v!r}: must lie in the schedule's [t_min, t_max] = [{lo:g}, {hi:g}]")
        out.append(v)
    return out[0], out[1]
