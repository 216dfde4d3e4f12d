"""Which peer implementation each solver reproduces, and to what tolerance the suite checks it.

One table, read by the peer tests themselves (tests/adapters/test_k_diffusion.py is parametrized by its rows; the
diffusers and torchdiffeq tests take their tolerance from it with `peer_tolerance`, which refuses a pair that is
not listed) and by the docs' generated solver table. Tolerances are on the relative difference of the final
samples, `||ours - theirs|| / ||theirs||`, in float32 unless a row says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from diffsolve.errors import InvalidArgument

DIFFUSERS_TEST = "tests/adapters/diffusers/test_against_schedulers.py"
DIFFUSERS_NOISE_TEST = "tests/adapters/diffusers/test_scheduler_mapping.py"
K_DIFFUSION_TEST = "tests/adapters/test_k_diffusion.py"
TORCHDIFFEQ_TEST = "tests/solvers/test_adaptive.py"


@dataclass(frozen=True)
class PeerMatch:
    """One solver checked against one peer implementation.

    Attributes:
        solver: the registered diffsolve solver name.
        library: the peer's package: "diffusers", "k-diffusion" or "torchdiffeq".
        peer: the peer's scheduler class, function or method name.
        rtol: the largest relative difference of the final samples the suite accepts.
        options: diffsolve solver options the match needs.
        peer_options: the peer's own options in the check.
        same_noise: True for stochastic samplers checked with the peer's own noise draws.
        test: the test file that checks it.
    """
    solver: str
    library: str
    peer: str
    rtol: float
    options: dict = field(default_factory=dict)
    peer_options: dict = field(default_factory=dict)
    same_noise: bool = False
    test: str = ""


def _diffusers(solver, peer, rtol=1e-5, **options):
    return PeerMatch(solver, "diffusers", peer, rtol, options, test=DIFFUSERS_TEST)


def _diffusers_noise(solver, peer):
    return PeerMatch(solver, "diffusers", peer, 1e-5, same_noise=True, test=DIFFUSERS_NOISE_TEST)


def _k_diffusion(solver, function, same_noise=False, **peer_options):
    return PeerMatch(solver, "k-diffusion", function, 1e-5, peer_options=peer_options, same_noise=same_noise,
                     test=K_DIFFUSION_TEST)


PEER_MATCHES: tuple[PeerMatch, ...] = (
    _diffusers("ddim", "DDIMScheduler"),
    _diffusers("euler", "DDIMScheduler"),                   # v and sample prediction
    _diffusers("euler", "EulerDiscreteScheduler"),
    _diffusers("euler", "FlowMatchEulerDiscreteScheduler"),
    _diffusers("heun", "HeunDiscreteScheduler"),
    _diffusers("dpmpp_2m", "DPMSolverMultistepScheduler"),
    _diffusers("dpmpp_3m", "DPMSolverMultistepScheduler", third_order="reference"),
    _diffusers("dpmpp_2s", "DPMSolverSinglestepScheduler"),      # on diffsolve's intermediate points
    _diffusers("dpm_solver_2", "DPMSolverSinglestepScheduler"),  # on diffsolve's intermediate points
    _diffusers("unipc_bh1", "UniPCMultistepScheduler"),
    _diffusers("unipc_bh2", "UniPCMultistepScheduler"),
    _diffusers("deis", "DEISMultistepScheduler"),
    _diffusers("ipndm", "IPNDMScheduler", rtol=1e-4),       # its float32 sigmas on an angular path
    _diffusers_noise("ddpm", "DDPMScheduler"),
    _diffusers_noise("euler_ancestral", "EulerAncestralDiscreteScheduler"),
    _diffusers_noise("dpmpp_2m_sde", "DPMSolverMultistepScheduler"),
    _diffusers_noise("consistency", "LCMScheduler"),
    _diffusers_noise("tcd", "TCDScheduler"),
    _k_diffusion("euler", "sample_euler"),
    _k_diffusion("heun", "sample_heun"),
    _k_diffusion("lms", "sample_lms"),
    _k_diffusion("dpm_solver_2", "sample_dpm_2"),
    _k_diffusion("dpmpp_2m", "sample_dpmpp_2m"),
    _k_diffusion("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", eta=0.0),
    _k_diffusion("dpmpp_2m_sde", "sample_dpmpp_2m_sde", same_noise=True),
    _k_diffusion("dpmpp_2m_sde", "sample_dpmpp_2m_sde", same_noise=True, solver_type="heun"),
    _k_diffusion("dpmpp_3m_sde", "sample_dpmpp_3m_sde", same_noise=True),
    _k_diffusion("euler_ancestral", "sample_euler_ancestral", same_noise=True),
    PeerMatch("rk38", "torchdiffeq", "odeint", 1e-12, peer_options={"method": "rk4"}, test=TORCHDIFFEQ_TEST),  # f64
)


def peers_of(solver: str) -> tuple[PeerMatch, ...]:
    """The peer checks of one solver.

    Args:
        solver: a registered solver name.

    Returns:
        Its rows of `PEER_MATCHES`, in table order (empty when no peer is checked).
    """
    return tuple(m for m in PEER_MATCHES if m.solver == solver)


def peer_tolerance(solver: str, peer: str) -> float:
    """The tolerance the suite checks a solver against a peer to.

    Args:
        solver: a registered solver name.
        peer: the peer's scheduler class, function or method name.

    Returns:
        The relative tolerance of that pair in `PEER_MATCHES` (the loosest, where the pair has several rows).

    Raises:
        InvalidArgument: when the pair is not in the table (a peer check must be listed to run).
    """
    rtols = {m.rtol for m in PEER_MATCHES if m.solver == solver and m.peer == peer}
    if not rtols:
        listed = sorted({f"{m.solver}/{m.peer}" for m in PEER_MATCHES})
        raise InvalidArgument(f"peer={peer!r} for solver={solver!r} is not a listed peer match; listed: {listed}")
    return max(rtols)
