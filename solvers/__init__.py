"""Solvers: stateless steps over a precomputed plan, and the registry that names them.

Importing a module registers its solvers; `available_solvers()` lists them and `get_solver(name, **options)`
builds one.
"""
from . import euler, runge_kutta, dpm_solver, unipc, deis, ipndm, lms, amed, learned_multistep  # noqa: F401,E501
from . import sde, adaptive, torchdiffeq_bridge, torchsde_bridge  # noqa: F401  (stochastic and adaptive)
from . import consistency  # noqa: F401  (few-step model families)
from .base import Plan, Solver, available_solvers, get_solver, register, registry_entries
from .dpm_solver import DPMSolverPP2M, DPMSolverPP3M
from .euler import Euler
from .multistep import MultistepSolver
from .runge_kutta import TABLEAUX, ButcherTableau, RungeKutta

__all__ = ["Plan", "Solver", "MultistepSolver", "available_solvers", "get_solver", "register", "registry_entries",
           "Euler", "RungeKutta", "ButcherTableau", "TABLEAUX", "DPMSolverPP2M", "DPMSolverPP3M"]
