"""Deprecated alias of `diffsolve.analysis.straightness`, where this module moved; it goes away in the next release."""
import warnings as _warnings

from diffsolve.analysis import straightness as _moved

_warnings.warn("diffsolve.diagnostics moved to diffsolve.analysis.straightness; import it from there", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
