"""Model output -> data prediction, fused with the update that consumes it (DPM-Solver's model_wrapper, folded).

Every conversion in `predictions.to_x0` is linear in (x, out) for fixed path scalars: x0_hat = cx x + co out.
So x' = a x + b x0_hat + sum_k c_k D_k = (a + b cx) x + (b co) out + sum_k c_k D_k, and one pass over
(x, out, D_1..) writes both x0_hat (kept by multistep solvers) and x'.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import check_choice
from ..predictions import PREDICTIONS, PathPoint, canonical_prediction, to_x0
from .lincomb import lincomb_pair, lincomb_reference


def prediction_coefficients(prediction: str, p: PathPoint, *, flow_time: bool = False) -> tuple[float, float]:
    """(cx, co) with to_x0(prediction, out, x, p) = cx x + co out (notes table 2), in float64 on the host.

    flow_time: the model is a velocity in flow time (t_flow = 1 - t), whose output the field negates first.
    """
    prediction = canonical_prediction(prediction)
    a, s = p.alpha, p.sigma
    if prediction in ("x0", "denoiser"):
        cx, co = 0.0, 1.0
    elif prediction == "eps":
        cx, co = 1.0 / a, -s / a
    elif prediction == "v":
        cx, co = a / (a * a + s * s), -s / (a * a + s * s)
    elif prediction == "score":
        cx, co = 1.0 / a, s * s / a
    elif prediction == "velocity":
        den = s * p.d_alpha - p.d_sigma * a
        cx, co = -p.d_sigma / den, s / den
    else:
        check_choice("prediction", prediction, PREDICTIONS)
        raise AssertionError
    return (cx, -co) if flow_time and prediction == "velocity" else (cx, co)


def _rows(conv: tuple[float, float], coeffs: Sequence[float], n_others: int):
    cx, co = conv
    a, b, *rest = coeffs
    if len(rest) != n_others:
        raise ValueError(f"{len(rest)} coefficients for {n_others} extra tensors")
    return [cx, co] + [0.0] * n_others, [a + b * cx, b * co, *rest]


def denoise_update_reference(prediction: str, out: torch.Tensor, x: torch.Tensor, p: PathPoint,
                             coeffs: Sequence[float], others: Sequence[torch.Tensor] = ()):
    """Reference: x0_hat = to_x0(prediction, out, x, p); x' = coeffs[0] x + coeffs[1] x0_hat + sum coeffs[2+k] others[k]."""
    x0 = to_x0(canonical_prediction(prediction), out, x, p)
    return lincomb_reference(coeffs, [x, x0, *others]), x0


def denoise_update(prediction: str, out: torch.Tensor, x: torch.Tensor, p: PathPoint, coeffs: Sequence[float],
                   others: Sequence[torch.Tensor] = (), *, flow_time: bool = False,
                   backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x', x0_hat) from the raw model output in one fused pass; x' = a x + b x0_hat + sum_k c_k others[k]."""
    conv = prediction_coefficients(prediction, p, flow_time=flow_time)
    row_x0, row_next = _rows(conv, coeffs, len(others))
    x0, x_next = lincomb_pair([row_x0, row_next], [x, out, *others], backend=backend)
    return x_next, x0
