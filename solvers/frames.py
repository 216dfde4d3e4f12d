"""Which variable an integrator steps in: native time, the EDM frame (s = sigma / alpha) or log-SNR.

One rule for every integrator (Runge-Kutta, the torchdiffeq bridge, the reference solver): a Gaussian-path field
is integrated in the EDM frame, where dy/ds = (y - D) / s (Karras et al. 2022), unless the model predicts a
velocity or the span starts at pure noise (alpha = 0, where s is infinite): then in native time, dx/dt = v.
"""
from __future__ import annotations

from diffsolve.errors import InvalidArgument
from diffsolve.field import Field

FRAMES = ("time", "edm", "logsnr")


def integration_frame(field: Field, t_start: float, requested: str | None = None, preferred: str = "edm") -> str:
    """The frame to integrate in: `requested` after checking it can work, else 'time' or `preferred`.

    Args:
        field: the field.
        t_start: the span's noisier end.
        requested: the caller's frame ("time", "edm", "logsnr") or None.
        preferred: the frame for a Gaussian-path field when none is requested (default "edm").

    Returns:
        "time", "edm" or "logsnr".

    Raises:
        InvalidArgument: an unknown frame, a non-time frame on a plain field, or one that is singular at pure noise.
    """
    if requested is not None and requested not in FRAMES:
        raise InvalidArgument(f"frame={requested!r}; allowed values: {', '.join(map(repr, FRAMES))}")
    if not field.has_schedule:
        if requested not in (None, "time"):
            raise InvalidArgument(f"frame={requested!r} needs a Gaussian noise schedule; this is a plain velocity "
                                  "field: use frame='time'")
        return "time"
    at_pure_noise = float(field.schedule.alpha(float(t_start))) == 0.0
    if requested is not None:
        if requested != "time" and at_pure_noise:
            raise InvalidArgument(f"frame={requested!r} is singular at pure noise (alpha = 0); use frame='time' or "
                                  "start below t_max")
        return requested
    if field.prediction == "velocity" or at_pure_noise:
        return "time"
    return preferred
