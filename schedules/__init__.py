"""Noise schedules as sets of float64 functions: alpha(t), sigma(t), lambda(t), its inverse, and the model's time input.

Convention (DPM-Solver, Lu et al. 2022): `x_t = alpha(t) x0 + sigma(t) eps`, time runs the diffusion way
(t = 0 clean data, t = t_max most noise) and `lambda(t) = log(alpha / sigma)` decreases in t. The EDM frame
uses `s = sigma / alpha` (Karras et al. 2022), so `lambda = -log s`. Every function takes and returns float64
tensors (Python floats are accepted); they are evaluated on the host, before a sampling loop, never inside it.
"""
from __future__ import annotations

from diffsolve.errors import unknown_name
from diffsolve.schedules.base import NoiseSchedule, Tensorish, as_f64, interp
from diffsolve.schedules.custom import CustomSchedule
from diffsolve.schedules.exploding import EDMSchedule, VESchedule
from diffsolve.schedules.flow import RectifiedFlow
from diffsolve.schedules.variance_preserving import VPContinuous, VPDiscrete, VPSchedule

__all__ = ["NoiseSchedule", "VPSchedule", "VPDiscrete", "VPContinuous", "VESchedule", "EDMSchedule", "RectifiedFlow",
           "CustomSchedule", "SCHEDULES", "get_schedule", "interp", "as_f64", "Tensorish"]

SCHEDULES = {
    "vp_linear": VPDiscrete.linear,
    "vp_scaled_linear": VPDiscrete.scaled_linear,
    "vp_cosine": VPDiscrete.cosine,
    "vp_geometric": VPDiscrete.geometric,
    "vp_continuous": VPContinuous,
    "ve": VESchedule,
    "edm": EDMSchedule,
    "rectified_flow": RectifiedFlow,
}


def get_schedule(schedule: "str | NoiseSchedule") -> NoiseSchedule:
    """A schedule object from a name in SCHEDULES, or the object itself.

    Args:
        schedule: a NoiseSchedule (returned as is) or a name in SCHEDULES ("vp_linear", "edm", "rectified_flow", ...).

    Returns:
        The schedule, built with its defaults when named.

    Raises:
        InvalidArgument: an unknown name (with the nearest names).
    """
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]()
    raise unknown_name("schedule", schedule, SCHEDULES)
