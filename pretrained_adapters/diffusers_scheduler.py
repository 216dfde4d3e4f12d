"""Deprecated alias of `diffsolve.pretrained_adapters.diffusers.scheduler`, where this module moved; it goes away in the next release."""
import warnings as _warnings

from diffsolve.pretrained_adapters.diffusers import scheduler as _moved

_warnings.warn("diffsolve.pretrained_adapters.diffusers_scheduler moved to diffsolve.pretrained_adapters.diffusers.scheduler; import it from there", DeprecationWarning, stacklevel=2)
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
