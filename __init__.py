"""diffsolve: any pretrained diffusion or flow network as one vector field, sampled fast and accurately."""
from .errors import BudgetExceeded, DiffsolveError, InvalidArgument, NonFiniteError
from .schedules import (CustomSchedule, EDMSchedule, NoiseSchedule, RectifiedFlow, VESchedule, VPContinuous,
                        VPDiscrete, get_schedule)
from .field import (ClassifierFreeGuidance, EvalPoint, FeatureCapture, Field, FieldOutput, FieldWrapper, ModelSpec,
                    StepOptions, VectorField)
from .grids import GRIDS, make_grid
from .solvers import available_solvers, get_solver
from .sampler import SampleResult, Sampler, StepInfo
from .loop import integrate
from .skip_tuning import skip_tuned
from .likelihood import LikelihoodResult, likelihood
from .diagnostics import Straightness, straightness
from . import pretrained_adapters  # noqa: F401,E402  (registers the scheduler adapters; core modules never import it)

__version__ = "0.1.0"

__all__ = [
    "Sampler", "SampleResult", "StepInfo", "VectorField", "ModelSpec", "EvalPoint", "ClassifierFreeGuidance",
    "Field", "FieldOutput", "FieldWrapper", "FeatureCapture", "StepOptions", "integrate", "skip_tuned",
    "likelihood", "LikelihoodResult", "straightness", "Straightness",
    "NoiseSchedule", "VPDiscrete", "VPContinuous", "VESchedule", "EDMSchedule", "RectifiedFlow", "CustomSchedule",
    "get_schedule", "GRIDS", "make_grid", "available_solvers", "get_solver", "DiffsolveError", "InvalidArgument",
    "NonFiniteError", "BudgetExceeded",
]
