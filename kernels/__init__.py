"""Update-step arithmetic: x_next = sum_k c_k T_k. Solvers call `lincomb`, never torch arithmetic, for their updates."""
from .lincomb import lincomb, lincomb_reference

__all__ = ["lincomb", "lincomb_reference"]
