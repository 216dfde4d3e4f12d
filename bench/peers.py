"""Peers: other libraries' samplers run on the same model and the same noise as ours, so errors compare directly.

A provider `provider(model, field) -> list[PeerRun]` offers the peers that can drive a model (none when they
cannot); `PEER_PROVIDERS` lists them. diffusers' schedulers drive discrete VP eps / v models.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from diffsolve.schedules import VPDiscrete


@dataclass
class PeerRun:
    """One peer sampler: `run(noise, nfe) -> samples` (noise standard normal, as our Sampler takes it).

    Attributes:
        name: The peer's name, e.g. 'diffusers:DPMSolverMultistepScheduler'.
        ours: The diffsolve solver it is compared with at equal NFE.
        run: Takes the standard-normal noise and an NFE budget, returns the samples.
    """

    name: str                   # e.g. 'diffusers:DPMSolverMultistepScheduler'
    ours: str                   # the diffsolve solver it is compared with at equal NFE
    run: Callable[[torch.Tensor, int], torch.Tensor]


# Providers: provider(model, field) -> list[PeerRun] (empty when the model is not one the peer library can drive).
PEER_PROVIDERS: list[Callable[[Any, Any], list[PeerRun]]] = []


# diffusers scheduler class, its options, the diffsolve solver it implements, steps for an NFE budget.
DIFFUSERS_PEERS = (
    ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, "ddim", lambda n: n),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}, "euler", lambda n: n),
    ("HeunDiscreteScheduler", {}, "heun", lambda n: (n + 1) // 2),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "zero"}, "dpmpp_2m", lambda n: n),
    ("UniPCMultistepScheduler", {"final_sigmas_type": "zero"}, "unipc_bh2", lambda n: n),
    ("DEISMultistepScheduler", {}, "deis", lambda n: n),
)


def _diffusers_provider(model: Any, field: Any) -> list[PeerRun]:
    """diffusers' schedulers on a discrete VP eps / v model: their documented loop, trailing timesteps.

    Trailing spacing starts at the last training timestep, the same noise level as the reference, and the loop
    starts from the same x_T = sigma(t_max) * noise (in the scheduler's own variable: x_T, or x_T / alpha for the
    Euler family, whose init_noise_sigma then cancels), so both libraries are measured against the same solution.
    """
    sch = field.schedule
    if not isinstance(sch, VPDiscrete) or field.prediction not in ("eps", "v") or field.time_convention != "diffusion":
        return []
    if getattr(field, "evals_per_call", 1) != 1:
        return []
    try:
        import diffusers
    except ImportError:
        return []
    ac = sch.alphas_cumprod
    betas = torch.cat([1.0 - ac[:1], 1.0 - ac[1:] / ac[:-1]]).numpy()
    pred = {"eps": "epsilon", "v": "v_prediction"}[field.prediction]
    peers = []
    for cls_name, opts, ours, steps_of in DIFFUSERS_PEERS:
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)     # numpy 2 notices from inside diffusers
            scheduler = cls(num_train_timesteps=sch.N, trained_betas=betas, prediction_type=pred,
                            timestep_spacing="trailing", **opts)
        peers.append(PeerRun(f"diffusers.{cls_name}", ours, _diffusers_loop(scheduler, field, steps_of)))
    return peers


def _diffusers_loop(scheduler: Any, field: Any, steps_of: Callable[[int], int]):
    sch = field.schedule

    def run(noise: torch.Tensor, nfe: int) -> torch.Tensor:
        s = copy.deepcopy(scheduler)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            s.set_timesteps(max(int(steps_of(nfe)), 1))
        x_T = noise * sch.prior_std(sch.t_max)
        init = float(getattr(s, "init_noise_sigma", 1.0))
        x = x_T if init == 1.0 else x_T / float(sch.alpha(sch.t_max))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for t in s.timesteps:
                inp = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
                tm = float(sch.model_time(sch.t_from_index(float(t))))
                out = field.model(inp, torch.full((x.shape[0],), tm, dtype=x.dtype, device=x.device),
                                  **field.model_kwargs)
                x = s.step(out, t, x).prev_sample
        return x

    return run


PEER_PROVIDERS.append(_diffusers_provider)
