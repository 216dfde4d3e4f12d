"""Solvers: stateless steps over a precomputed plan, and the registry that names them."""
from .base import Plan, Solver, available_solvers, get_solver, register, registry_entries
from . import euler, runge_kutta, dpm_solver  # noqa: F401  (registration)
from .euler import Euler
from .runge_kutta import TABLEAUX, ButcherTableau, RungeKutta
from .dpm_solver import DPMSolverPP2M

__all__ = ["Plan", "Solver", "available_solvers", "get_solver", "register", "registry_entries", "Euler",
           "RungeKutta", "ButcherTableau", "TABLEAUX", "DPMSolverPP2M"]
from . import multistep, unipc, deis, ipndm, lms  # noqa: F401,E402  (registration: fast ODE solvers)
from . import sde  # noqa: F401  (issue 4: stochastic samplers)
from . import adaptive  # noqa: F401  (issue 4: adaptive ODE solvers)
from . import torchdiffeq_bridge  # noqa: F401  (issue 4: torchdiffeq odeint bridge)
from . import torchsde_bridge  # noqa: F401  (issue 4: torchsde reverse-SDE bridge)
