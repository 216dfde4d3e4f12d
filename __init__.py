"""diffsolve: any pretrained diffusion or flow network as one vector field, sampled fast and accurately."""
from .errors import BudgetExceeded, DiffsolveError, InvalidArgument, NonFiniteError
from .schedules import (CustomSchedule, EDMSchedule, NoiseSchedule, RectifiedFlow, VESchedule, VPContinuous,
                        VPDiscrete, get_schedule)
from .field import ClassifierFreeGuidance, EvalPoint, ModelSpec, VectorField
from .grids import GRIDS, make_grid
from .solvers import available_solvers, get_solver
from .sampler import SampleResult, Sampler, StepInfo

__version__ = "0.1.0"

__all__ = [
    "Sampler", "SampleResult", "StepInfo", "VectorField", "ModelSpec", "EvalPoint", "ClassifierFreeGuidance",
    "NoiseSchedule", "VPDiscrete", "VPContinuous", "VESchedule", "EDMSchedule", "RectifiedFlow", "CustomSchedule",
    "get_schedule", "GRIDS", "make_grid", "available_solvers", "get_solver", "DiffsolveError", "InvalidArgument",
    "NonFiniteError", "BudgetExceeded",
]
