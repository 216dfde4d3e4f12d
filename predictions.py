"""Every network parameterization to and from the data prediction x0_hat, in one place (DPM-Solver model_wrapper).

All conversions take the path scalars at one time: alpha, sigma and their time derivatives (Python floats or
float64 tensors broadcastable to x). `velocity` is dx/dt in the schedule's own (diffusion) time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from diffsolve.errors import check_choice
from diffsolve.kernels import lincomb

PREDICTIONS = ("eps", "x0", "v", "score", "velocity", "denoiser")
ALIASES = {"epsilon": "eps", "noise": "eps", "sample": "x0", "data": "x0", "v_prediction": "v",
           "flow": "velocity", "edm": "denoiser"}


def canonical_prediction(name: str) -> str:
    """The canonical name of a parameterization ("epsilon" -> "eps", "v_prediction" -> "v", ...).

    Args:
        name: a name in PREDICTIONS or ALIASES.

    Returns:
        A name in PREDICTIONS.

    Raises:
        InvalidArgument: an unknown name.
    """
    name = ALIASES.get(name, name) if isinstance(name, str) else name    # a list is no name (nor hashable)
    check_choice("prediction", name, PREDICTIONS + tuple(ALIASES))
    return name


@dataclass(frozen=True)
class PathPoint:
    """Path scalars at one time t: x_t = alpha x0 + sigma eps.

    Attributes:
        alpha: the data scale.
        sigma: the noise scale.
        d_alpha: d alpha / dt (default 0).
        d_sigma: d sigma / dt (default 0).
    """

    alpha: float
    sigma: float
    d_alpha: float = 0.0
    d_sigma: float = 0.0


def x0_coefficients(prediction: str, p: PathPoint) -> tuple:
    """(c_x, c_out) with x0_hat = c_x x + c_out out: every parameterization is linear in (x, out) (notes table 2).

    Args:
        prediction: a name in PREDICTIONS.
        p: the path scalars.

    Returns:
        (c_x, c_out), floats or tensors like p's scalars.

    Raises:
        InvalidArgument: an unknown prediction.
    """
    a, s = p.alpha, p.sigma
    if prediction in ("x0", "denoiser"):
        return 0.0, 1.0
    if prediction == "eps":
        return 1.0 / a, -s / a
    if prediction == "v":
        n = a * a + s * s
        return a / n, -s / n
    if prediction == "score":
        return 1.0 / a, s * s / a
    if prediction == "velocity":
        den = s * p.d_alpha - p.d_sigma * a
        return -p.d_sigma / den, s / den
    check_choice("prediction", prediction, PREDICTIONS)
    raise AssertionError


def to_x0(prediction: str, out: torch.Tensor, x: torch.Tensor, p: PathPoint) -> torch.Tensor:
    """Network output `out` at state `x` -> data prediction x0_hat (notes table 2), as one update.

    Args:
        prediction: a name in PREDICTIONS.
        out: the network's output.
        x: the state.
        p: the path scalars.

    Returns:
        x0_hat, in x's shape.
    """
    if prediction in ("x0", "denoiser"):
        return out
    cx, co = x0_coefficients(prediction, p)
    if isinstance(cx, torch.Tensor) or isinstance(co, torch.Tensor):
        return cx * x + co * out           # per-sample scalars, already broadcast against x
    return lincomb((cx, co), (x, out))


def from_x0(prediction: str, x0: torch.Tensor, x: torch.Tensor, p: PathPoint) -> torch.Tensor:
    """The inverse of to_x0: what a network of this parameterization would output given x0_hat.

    Args:
        prediction: a name in PREDICTIONS.
        x0: the data prediction.
        x: the state.
        p: the path scalars.

    Returns:
        The network output that maps to x0.

    Raises:
        InvalidArgument: an unknown prediction.
    """
    a, s = p.alpha, p.sigma
    if prediction in ("x0", "denoiser"):
        return x0
    eps = (x - a * x0) / s
    if prediction == "eps":
        return eps
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "score":
        return -eps / s
    if prediction == "velocity":
        return p.d_alpha * x0 + p.d_sigma * eps
    check_choice("prediction", prediction, PREDICTIONS)
    raise AssertionError
