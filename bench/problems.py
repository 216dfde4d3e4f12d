"""Deprecated alias of `diffsolve.problems`, where this module moved; it goes away in the next release."""
import warnings as _warnings

from diffsolve import problems as _moved

_warnings.warn("diffsolve.bench.problems moved to diffsolve.problems; import it from there", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
