"""Which diffsolve solver does what each diffusers scheduler class does (`SCHEDULER_SOLVERS`), and why the
classes without one have none (`UNMATCHED_SCHEDULERS`)."""
from __future__ import annotations

from typing import Any, Mapping

from diffsolve.errors import InvalidArgument
from diffsolve.pretrained_adapters.diffusers.config import config_of
from diffsolve.solvers.base import Solver


class UnmatchedScheduler(InvalidArgument):
    """A diffusers scheduler (or setting) that no diffsolve solver reproduces."""


def _dpmsolver_multistep(cfg: Mapping) -> tuple[str, dict]:
    algo, order = cfg.get("algorithm_type", "dpmsolver++"), int(cfg.get("solver_order", 2))
    if algo == "dpmsolver++":
        options = {"third_order": "reference"} if order == 3 else {}
        if order > 1 and not cfg.get("lower_order_final", True):
            # diffusers then lowers only a step into zero noise, which diffsolve's multistep steps always do
            options["lower_order_final"] = False
        return {1: "euler", 2: "dpmpp_2m", 3: "dpmpp_3m"}[order], options
    if algo == "sde-dpmsolver++" and order == 2:
        return "dpmpp_2m_sde", {"solver_type": cfg.get("solver_type", "midpoint")}
    raise UnmatchedScheduler(f"DPMSolverMultistepScheduler(algorithm_type={algo!r}, solver_order={order}) has no "
                             "diffsolve match (matched: dpmsolver++ orders 1-3, sde-dpmsolver++ order 2)")


def _dpmsolver_singlestep(cfg: Mapping) -> tuple[str, dict]:
    algo, order = cfg.get("algorithm_type", "dpmsolver++"), int(cfg.get("solver_order", 2))
    table = {"dpmsolver++": {1: "euler", 2: "dpmpp_2s", 3: "dpmpp_3s"},
             "dpmsolver": {1: "euler", 2: "dpm_solver_2", 3: "dpm_solver_3"}}
    if algo in table and order in table[algo]:
        return table[algo][order], {}
    raise UnmatchedScheduler(f"DPMSolverSinglestepScheduler(algorithm_type={algo!r}, solver_order={order}) has no "
                             "diffsolve match (matched: dpmsolver++ and dpmsolver, orders 1-3)")


def _ddpm(cfg: Mapping) -> tuple[str, dict]:
    vt = cfg.get("variance_type", "fixed_small")
    if vt == "fixed_small":
        return "ddpm", {}       # the posterior variance: DDIM with eta = 1 (Song et al. 2021, eq. 16)
    raise UnmatchedScheduler(f"DDPMScheduler(variance_type={vt!r}) has no diffsolve match (matched: 'fixed_small', "
                             "which is diffsolve's ancestral 'ddpm')")


def _unipc(cfg: Mapping) -> tuple[str, dict]:
    return ("unipc_bh1" if cfg.get("solver_type", "bh2") == "bh1" else "unipc_bh2"), {}


def _diffsolve(cfg: Mapping) -> tuple[str, dict]:
    return str(cfg.get("solver", "dpmpp_2m")), dict(cfg.get("solver_options") or {})


# diffusers scheduler class -> (diffsolve solver, options): a pair, or a function of the config giving one.
SCHEDULER_SOLVERS: dict[str, Any] = {
    "DDIMScheduler": ("ddim", {}),
    "DDPMScheduler": _ddpm,
    "EulerDiscreteScheduler": ("euler", {}),
    "EulerAncestralDiscreteScheduler": ("euler_ancestral", {}),
    "HeunDiscreteScheduler": ("heun", {}),
    "LMSDiscreteScheduler": ("lms", {}),
    "KDPM2DiscreteScheduler": ("dpm_solver_2", {}),
    "DPMSolverMultistepScheduler": _dpmsolver_multistep,
    "DPMSolverSinglestepScheduler": _dpmsolver_singlestep,
    "UniPCMultistepScheduler": _unipc,
    "DEISMultistepScheduler": lambda cfg: ("deis", {"order": int(cfg.get("solver_order", 2))}),
    "IPNDMScheduler": ("ipndm", {}),
    "FlowMatchEulerDiscreteScheduler": ("euler", {}),
    "FlowMatchHeunDiscreteScheduler": ("heun", {}),
    "LCMScheduler": ("consistency", {}),
    "TCDScheduler": ("tcd", {}),
    "DiffsolveScheduler": _diffsolve,
}
# Classes with no diffsolve counterpart, and why (refused with the list of supported classes).
UNMATCHED_SCHEDULERS = {
    "PNDMScheduler": "PNDM's pseudo-numerical warm start has no exact counterpart (solver='ipndm' is the closest)",
    "KDPM2AncestralDiscreteScheduler": "k-diffusion's dpm_2_ancestral is not implemented in diffsolve",
    "DPMSolverSDEScheduler": "k-diffusion's dpmpp_sde (Brownian-tree midpoint SDE) is not implemented in diffsolve",
    "EDMEulerScheduler": "EDM-parameterised diffusers configs are not read by this adapter",
    "EDMDPMSolverMultistepScheduler": "EDM-parameterised diffusers configs are not read by this adapter",
}


def solver_and_options_of(scheduler_or_config: Any) -> tuple[str, dict]:
    """(registered diffsolve solver, options) that do what this diffusers scheduler does. A config with no class
    name (a partial dict) gets the default, dpmpp_2m.

    Args:
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.

    Returns:
        The solver's registry name and a new dict of its options.

    Raises:
        UnmatchedScheduler: the scheduler (or its setting) has no match; the message lists the supported classes.
        InvalidArgument: not a diffusers scheduler or config.
    """
    cfg = config_of(scheduler_or_config)
    name = str(cfg.get("_class_name", ""))
    if not name:
        return "dpmpp_2m", {}
    entry = SCHEDULER_SOLVERS.get(name)
    if entry is None:
        why = UNMATCHED_SCHEDULERS.get(name, "no diffsolve solver reproduces it")
        raise UnmatchedScheduler(
            f"scheduler {name}: {why}. Supported scheduler classes: {', '.join(SCHEDULER_SOLVERS)}; or keep its path "
            "and timesteps and choose the update yourself: Sampler(unet, scheduler=..., solver='<name>')")
    solver, options = entry(cfg) if callable(entry) else entry
    return solver, dict(options)


def solver_of(scheduler_or_config: Any) -> str:
    """The registered diffsolve solver that does what this diffusers scheduler does (see SCHEDULER_SOLVERS).

    Args:
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.

    Returns:
        The solver's registry name.

    Raises:
        UnmatchedScheduler: the scheduler has no match.
    """
    return solver_and_options_of(scheduler_or_config)[0]


def solver_options_of(scheduler_or_config: Any) -> dict:
    """Options that make `solver_of`'s solver take the scheduler's exact update (diffusers' 3M halves the x0'' term).

    Args:
        scheduler_or_config: a diffusers scheduler, its config, or a config mapping.

    Returns:
        A dict of solver keywords.

    Raises:
        UnmatchedScheduler: the scheduler has no match.
    """
    return solver_and_options_of(scheduler_or_config)[1]


class UnmatchedSolver(Solver):
    """Stands in for the solver of an unmatched scheduler: `Sampler(unet, scheduler=X)` raises the mapping's error
    when it looks at the solver, while `Sampler(unet, scheduler=X, solver=...)` never does.

    Args:
        error: the UnmatchedScheduler (or other InvalidArgument) to raise.
    """

    name = "unmatched"

    def __init__(self, error: InvalidArgument):
        self.error = error

    @property
    def needs_schedule(self) -> bool:       # the first thing Sampler asks of its solver
        """Raises the stored error (the first thing Sampler asks of its solver)."""
        raise self.error

    def plan(self, field: Any, t: Any) -> Any:
        """Raises the stored error; `field` and `t` are not looked at.

        Raises:
            InvalidArgument: always, the error given to the constructor.
        """
        raise self.error


__all__ = ["UnmatchedScheduler", "SCHEDULER_SOLVERS", "UNMATCHED_SCHEDULERS", "solver_and_options_of", "solver_of",
           "solver_options_of", "UnmatchedSolver"]
