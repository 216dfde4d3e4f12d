"""Deprecated alias of `diffsolve.corrections.skip`, where this module moved; it goes away in the next release."""
import warnings as _warnings

from diffsolve.corrections import skip as _moved

_warnings.warn("diffsolve.skip_tuning moved to diffsolve.corrections.skip; import it from there", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
