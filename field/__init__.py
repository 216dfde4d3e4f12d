"""The model boundary: any network (eps, x0, v, score, velocity or EDM denoiser) as one vector field.

The field is the only place where a network is called. Solvers ask it for the data prediction x0_hat (or the
ODE slope) at an `EvalPoint`: the path scalars at one time, either host floats that a solver's plan computed
before the loop, or per-sample tensors on the device (a solver that picks its times per sample). Dtypes follow
EDM's `Precond`: the network gets `x` in its own dtype and its time input in float32 or better; what it returns
comes back in the state's dtype. Wrappers (guidance, per-step model options, feature capture) hold the field
they wrap and change one thing.

Modules: base (ModelSpec, EvalPoint, FieldOutput, Field), vector_field (VectorField, as_field and the model
adapters' registry), wrappers (guidance, per-step options, feature capture), conditioning (per-sample conditions),
identity (cache keys), source (a plain velocity field's start distribution when it is not N(0, I)).
"""
from diffsolve.field.base import EvalPoint, Field, FieldOutput, ModelSpec, per_sample
from diffsolve.field.identity import identity_of_kwargs, model_identity, state_dict_digest
from diffsolve.field.source import Source, check_source, source_identity
from diffsolve.field.vector_field import (TIME_CONVENTIONS, VectorField, as_field, check_sample_shape, device_of,
                                          floating_dtype_of, model_spec_of, register_model_adapter, unwrap_output,
                                          velocity_from_x0, with_source)
from diffsolve.field.wrappers import ClassifierFreeGuidance, FeatureCapture, FieldWrapper, StepOptions
from diffsolve.field.conditioning import Conditioned, check_conditions
from diffsolve.field.wrappers import _network_of  # noqa: F401  (the corrections reach the bare network)

__all__ = ["ModelSpec", "EvalPoint", "FieldOutput", "Field", "VectorField", "FieldWrapper", "ClassifierFreeGuidance",
           "StepOptions", "FeatureCapture", "Conditioned", "check_conditions",
           "as_field", "register_model_adapter", "model_spec_of", "model_identity",
           "state_dict_digest", "identity_of_kwargs", "device_of", "floating_dtype_of", "unwrap_output",
           "velocity_from_x0", "per_sample", "TIME_CONVENTIONS", "check_sample_shape", "Source", "check_source",
           "source_identity", "with_source"]
