"""The tables of `diffsolve bench --preset adaptive` and `--preset sde` on the Gaussian mixture.

adaptive: DPM-Solver-12/23, dopri5 and bosh3 at several rtol against a tight dopri5 reference (NFE, accepted and
rejected steps, endpoint RMSE, seconds). sde: SDE samplers scored by distribution metrics (sliced W1 to exact
data samples and the exact log-likelihood), since an SDE sample has no single "right" endpoint to compare with.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from diffsolve.evaluation.metrics import sliced_wasserstein
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.sampler import Sampler


def adaptive_rows(prob: GaussianMixtureProblem, n: int, rtols: Sequence[float]) -> list[dict]:
    """Endpoint RMSE against torchdiffeq dopri5 at rtol 1e-9 from the same noise; atol = rtol / 10.

    Args:
        prob: The analytic problem sampled.
        n: Number of samples (noise seed 0).
        rtols: Relative tolerances of each adaptive solver.

    Returns:
        One row per solver and tolerance (reference first, paper defaults last): NFE, steps, RMSE, seconds.
    """
    noise = torch.randn(n, prob.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = Sampler(prob, "odeint_dopri5", grid="karras", rtol=1e-9, atol=1e-10, progress=False).run(noise=noise)
    rows = [{"solver": "reference dopri5", "tol": 1e-9, "nfe": ref.nfe, "acc": ref.stats["accepted"],
             "rej": ref.stats["rejected"], "rmse": 0.0, "sec": float("nan")}]

    def err(res) -> float:
        return float((res.samples - ref.samples).pow(2).mean(dim=1).sqrt().mean())

    configs = [("DPM-Solver-12", "dpm_adaptive", {"order": 2}), ("DPM-Solver-23", "dpm_adaptive", {"order": 3}),
               ("dopri5", "odeint_dopri5", {}), ("bosh3", "odeint_bosh3", {})]
    for label, solver, opts in configs:
        for rtol in rtols:
            t0 = time.perf_counter()
            res = Sampler(prob, solver, grid="karras", rtol=rtol, atol=rtol / 10, progress=False,
                          **opts).run(noise=noise)
            sec = time.perf_counter() - t0
            rows.append({"solver": label, "tol": rtol, "nfe": res.nfe, "acc": res.stats["accepted"],
                         "rej": res.stats["rejected"], "rmse": err(res), "sec": sec})
    # The paper's default tolerances for DPM-Solver (rtol 0.05, atol 0.0078).
    for order in (2, 3):
        res = Sampler(prob, "dpm_adaptive", grid="karras", order=order, progress=False).run(noise=noise)
        rows.append({"solver": f"DPM-Solver-{order - 1}{order} defaults", "tol": 0.05, "nfe": res.nfe,
                     "acc": res.stats["accepted"], "rej": res.stats["rejected"], "rmse": err(res),
                     "sec": float("nan")})
    return rows


def adaptive_report(n: int, rtols: Sequence[float]) -> str:
    """The adaptive preset's markdown report on the Gaussian mixture.

    Args:
        n: number of samples (noise seed 0).
        rtols: relative tolerances of each adaptive solver (atol = rtol / 10).

    Returns:
        The report: a title, what is measured, and one table row per solver and tolerance.
    """
    prob = GaussianMixtureProblem.default()
    lines = [f"# Adaptive ODE solvers on GaussianMixtureProblem.default() (dim {prob.dim}, EDM schedule, karras "
             f"span, float64, CPU 1 thread)", "",
             f"Mean per-sample endpoint RMSE vs reference ({n} samples, atol = rtol/10)", "",
             "| solver | rtol | NFE | accepted | rejected | RMSE | seconds |", "|---|---|---|---|---|---|---|"]
    for r in adaptive_rows(prob, n, rtols):
        lines.append(f"| {r['solver']} | {r['tol']:.0e} | {r['nfe']} | {r['acc']} | {r['rej']} | {r['rmse']:.2e} | "
                     f"{r['sec']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# preset sde: SDE samplers by distribution distance
# ------------------------------------------------------------------------------------------------
def sde_rows(prob: GaussianMixtureProblem, n: int, steps_list: Sequence[int],
             torchsde_steps: Sequence[int]) -> tuple[list[dict], float]:
    """Sliced W1 to n exact data samples and mean exact log-likelihood per sampler and step count.

    Args:
        prob: The analytic problem (exact samples and log-density).
        n: Number of samples (seeds 0..n-1).
        steps_list: Step counts of our samplers.
        torchsde_steps: Step counts of the torchsde samplers.

    Returns:
        (one row per sampler and step count: NFE, sliced W1, log-likelihood, seconds; the noise floor, the sliced
        W1 between two independent exact sample sets of the same size).
    """
    data = prob.sample_data(n, generator=torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(prob.sample_data(n, generator=torch.Generator().manual_seed(2)), data)
    seeds = list(range(n))
    configs = [("dpmpp_2m (ODE baseline)", "dpmpp_2m", {}), ("euler_ancestral", "euler_ancestral", {}),
               ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", {}), ("edm_churn (S_churn=40)", "edm_churn", {}),
               ("restart (0.06,0.30,K=2,3)", "restart", {}), ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
               ("dpmpp_3m_sde", "dpmpp_3m_sde", {})]
    configs += [(f"torchsde_{m} (log-SNR steps)", f"torchsde_{m}", {"brownian": "batch"}) for m in ("euler", "srk")]
    rows = []
    for label, solver, opts in configs:
        for steps in (torchsde_steps if solver.startswith("torchsde_") else steps_list):
            smp = Sampler(prob, solver, grid="karras", progress=False, **opts)
            t0 = time.perf_counter()
            res = smp.run(steps, seed=seeds, batch_size=n, dtype=torch.float64)
            rows.append({"sampler": label, "steps": steps, "nfe": res.nfe, "sw1": sliced_wasserstein(res.samples, data),
                         "loglik": float(prob.log_prob(res.samples).mean()), "sec": time.perf_counter() - t0})
    return rows, floor


def sde_report(n: int, steps_list: Sequence[int], torchsde_steps: Sequence[int]) -> str:
    """The sde preset's markdown report on the Gaussian mixture.

    Args:
        n: Number of samples (seeds 0..n-1).
        steps_list: Step counts of our samplers.
        torchsde_steps: Step counts of the torchsde samplers.

    Returns:
        The report: a title, the data's own log-likelihood, the noise floor and one table row per sampler and
        step count.
    """
    prob = GaussianMixtureProblem.default()
    rows, floor = sde_rows(prob, n, steps_list, torchsde_steps)
    own = float(prob.log_prob(prob.sample_data(n, generator=torch.Generator().manual_seed(1))).mean())
    lines = [f"# SDE samplers on GaussianMixtureProblem.default() (dim {prob.dim}, EDM schedule, karras span, "
             f"float64, CPU 1 thread)", "",
             f"Sliced W1 to {n} exact data samples (256 directions) and mean exact log-likelihood (data's own: "
             f"{own:.3f})", "",
             f"Noise floor (two independent exact sets of {n}): sliced W1 = {floor:.4f}", "",
             "| sampler | steps | NFE | sliced W1 | log-lik | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['sw1']:.4f} | {r['loglik']:.3f} | "
                     f"{r['sec']:.2f} |")
    return "\n".join(lines)
