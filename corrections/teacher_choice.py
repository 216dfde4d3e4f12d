"""Which teacher a model gets, and how good that teacher is.

The teacher is chosen by what the model is, not by how it was passed: a field whose samples look like images
(three or more dimensions, or more than IMAGE_DIMENSIONS numbers) gets the 'fine' teacher (a fine-grid solve in
the state's dtype) whether it comes as a VectorField, a network with a spec or a bench model; a small vector model
gets the float64 adaptive 'reference' solve. Before training, `teacher_error` measures the teacher against a
tighter solve of its own kind on a few seeds, so the table a tuner prints can be read against the teacher's own
error.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.field import Field
from diffsolve.sampler import Sampler
from diffsolve.corrections.cost import counting_phase
from diffsolve.corrections.teacher import noise_for, teacher_states

IMAGE_DIMENSIONS = 256          # more numbers per sample than this: an image-like model (the 'fine' teacher)
FINE_STEPS, FINE_SOLVER = 96, "dpmpp_3m"        # teacher_states' 'fine' defaults
CHECK_STEPS, CHECK_SEEDS = 400, tuple(range(990_000, 990_004))     # the tight solve the teacher is checked against


def image_shaped(field: Field) -> bool:
    """Whether the field's samples look like images: 3+ dimensions or more than IMAGE_DIMENSIONS numbers.

    Args:
        field: The field.

    Returns:
        True for image-like sample shapes; False for vectors or an undeclared shape.
    """
    shape = getattr(field, "sample_shape", None)
    return shape is not None and (len(shape) >= 3 or math.prod(shape) > IMAGE_DIMENSIONS)


def choose_teacher(field: Field, given: str | None, image: bool = False) -> str:
    """The teacher mode: the one given, else 'fine' for image-like Gaussian-path models, else 'reference'.

    Args:
        field: The field tuned for.
        given: The --teacher option; None chooses.
        image: What the caller knows (a bench model of kind "image").

    Returns:
        "fine" or "reference".
    """
    if given is not None:
        return given
    return "fine" if (image or image_shaped(field)) and field.has_schedule else "reference"


def _span(field: Field) -> list[float]:
    t = Sampler(field, progress=False).times(2)
    return [float(t[0]), float(t[-1])]


def teacher_error(field: Field, mode: str, settings: Any = None, dtype: torch.dtype = torch.float32) -> str:
    """The teacher's own endpoint RMSE against a tighter solve on CHECK_SEEDS, as one line to print.

    'fine' is checked against a CHECK_STEPS-step solve with the same solver, 'reference' against the same method at
    a hundredth of its tolerances. The evaluations count as the "check" phase.

    Args:
        field: The field tuned for.
        mode: "fine" or "reference".
        settings: The reference teacher's ReferenceSettings; None: the defaults.
        dtype: The state's dtype of the 'fine' teacher.

    Returns:
        E.g. "teacher: fine (dpmpp_3m, 96 steps), own RMSE 3.1e-04 vs a 400-step solve on 4 seeds".
    """
    seeds = list(CHECK_SEEDS)
    span = _span(field)
    with counting_phase("check"), torch.no_grad():
        if mode == "fine":
            noise = noise_for(field, seeds, dtype=dtype)
            got = teacher_states(field, noise, span, mode="fine")[-1]
            tight = teacher_states(field, noise, span, mode="fine", fine_steps=CHECK_STEPS)[-1]
            what, against = f"fine ({FINE_SOLVER}, {FINE_STEPS} steps)", f"a {CHECK_STEPS}-step solve"
        else:
            ref = settings or ReferenceSettings()
            tighter = dataclasses.replace(ref, rtol=ref.rtol / 100, atol=ref.atol / 100)
            noise = noise_for(field, seeds, dtype=torch.float64)
            got = teacher_states(field, noise, span, settings=ref, seeds=seeds)[-1]
            tight = teacher_states(field, noise, span, settings=tighter, cache=False)[-1]
            what = f"reference ({ref.method}, rtol {ref.rtol:.0e}, float64)"
            against = f"rtol {tighter.rtol:.0e}"
    rmse = float((got.double() - tight.double()).pow(2).mean().sqrt())
    return f"teacher: {what}, own RMSE {rmse:.2e} vs {against} on {len(seeds)} seeds"
