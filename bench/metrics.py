"""Deprecated alias of `diffsolve.evaluation.metrics`, where this module moved; it goes away in the next release."""
import warnings as _warnings

from diffsolve.evaluation import metrics as _moved

_warnings.warn("diffsolve.bench.metrics moved to diffsolve.evaluation.metrics; import it from there", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
