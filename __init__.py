"""diffsolve: any pretrained diffusion or flow network as one vector field, sampled fast and accurately."""
from diffsolve.errors import BudgetExceeded, DiffsolveError, InvalidArgument, NonFiniteError
from diffsolve.schedules import (CustomSchedule, EDMSchedule, NoiseSchedule, RectifiedFlow, VESchedule, VPContinuous,
                        VPDiscrete, get_schedule)
from diffsolve.field import (ClassifierFreeGuidance, Conditioned, EvalPoint, FeatureCapture, Field, FieldOutput,
                             FieldWrapper, ModelSpec, StepOptions, VectorField)
from diffsolve.grids import GRIDS, make_grid
from diffsolve.solvers import Plan, Solver, available_solvers, get_solver, register
from diffsolve.sampler import SampleResult, Sampler, StepInfo
from diffsolve.loop import integrate
from diffsolve.corrections.skip import skip_tuned
from diffsolve.analysis.likelihood import LikelihoodResult, likelihood
from diffsolve.analysis.straightness import Straightness, straightness
from diffsolve import pretrained_adapters  # noqa: F401,E402  (registers the scheduler adapters; core modules never import it)

__version__ = "0.1.0"

__all__ = [
    "Sampler", "SampleResult", "StepInfo", "VectorField", "ModelSpec", "EvalPoint", "ClassifierFreeGuidance",
    "Conditioned", "Field", "FieldOutput", "FieldWrapper", "FeatureCapture", "StepOptions", "integrate", "skip_tuned",
    "likelihood", "LikelihoodResult", "straightness", "Straightness",
    "NoiseSchedule", "VPDiscrete", "VPContinuous", "VESchedule", "EDMSchedule", "RectifiedFlow", "CustomSchedule",
    "get_schedule", "GRIDS", "make_grid", "available_solvers", "get_solver", "Solver", "Plan", "register",
    "DiffsolveError", "InvalidArgument",
    "NonFiniteError", "BudgetExceeded",
]
