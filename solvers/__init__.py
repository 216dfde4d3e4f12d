"""Solvers: stateless steps over a precomputed plan, and the registry that names them.

Importing a module registers its solvers; `available_solvers()` lists them and `get_solver(name, **options)`
builds one.
"""
from diffsolve.solvers import euler, runge_kutta, dpm_solver, unipc, deis, ipndm, lms  # noqa: F401
from diffsolve.solvers import sde, adaptive, torchdiffeq_bridge, torchsde_bridge  # noqa: F401  (stochastic, adaptive)
from diffsolve.solvers import consistency  # noqa: F401  (few-step model families)
from diffsolve.solvers.base import Plan, Solver, available_solvers, get_solver, register, registry_entries
from diffsolve.solvers.dpm_solver import DPMSolverPP2M, DPMSolverPP3M
from diffsolve.solvers.euler import Euler
from diffsolve.solvers.multistep import MultistepSolver
from diffsolve.solvers.runge_kutta import TABLEAUX, ButcherTableau, RungeKutta

__all__ = ["Plan", "Solver", "MultistepSolver", "available_solvers", "get_solver", "register", "registry_entries",
           "Euler", "RungeKutta", "ButcherTableau", "TABLEAUX", "DPMSolverPP2M", "DPMSolverPP3M"]
