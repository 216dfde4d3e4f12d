"""Issue 4 benchmark: adaptive ODE solvers (error vs NFE) and SDE samplers (distribution distance vs NFE).

On GaussianMixtureProblem.default() (16-D, 8 components, EDM schedule, exact denoiser):
  * ODE: endpoint RMSE against a tight reference solve (torchdiffeq dopri5, rtol 1e-9, log-SNR frame) from the
    same noise, for DPM-Solver-12/23, dopri5 and bosh3 at several tolerances (atol = rtol / 10).
  * SDE: sliced W1 (bench.metrics.sliced_wasserstein) to exact data samples and the mean exact log-likelihood,
    against NFE; the noise floor is the sliced W1 between two independent exact sample sets of the same size.

Run: `python -m diffsolve.bench.issue4_table [--quick]` (CPU, float64; a few minutes on one core).
"""
from __future__ import annotations

import argparse
import time

import torch

from ..sampler import Sampler
from .problems import GaussianMixtureProblem

try:
    from .metrics import sliced_wasserstein
except ImportError:     # the metrics module belongs to another issue; a local fallback keeps this script usable
    def sliced_wasserstein(x, y, n_proj=256, seed=0, p=1):
        g = torch.Generator().manual_seed(seed)
        x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
        d = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=0, keepdim=True)
        px, py = (x @ d).sort(0).values, (y @ d).sort(0).values
        return float((px - py).abs().pow(p).mean(0).mean().pow(1 / p))


def ode_table(prob, n: int, rtols) -> list[dict]:
    noise = torch.randn(n, prob.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = Sampler(prob, "odeint_dopri5", grid="karras", rtol=1e-9, atol=1e-10, progress=False).run(noise=noise)
    rows = [{"solver": "reference dopri5", "tol": 1e-9, "nfe": ref.nfe, "acc": ref.stats["accepted"],
             "rej": ref.stats["rejected"], "rmse": 0.0, "sec": float("nan")}]
    configs = [("DPM-Solver-12", "dpm_adaptive", {"order": 2}), ("DPM-Solver-23", "dpm_adaptive", {"order": 3}),
               ("dopri5", "odeint_dopri5", {}), ("bosh3", "odeint_bosh3", {})]
    for label, solver, opts in configs:
        for rtol in rtols:
            t0 = time.perf_counter()
            res = Sampler(prob, solver, grid="karras", rtol=rtol, atol=rtol / 10, progress=False,
                          **opts).run(noise=noise)
            sec = time.perf_counter() - t0
            err = float((res.samples - ref.samples).pow(2).mean(dim=1).sqrt().mean())
            rows.append({"solver": label, "tol": rtol, "nfe": res.nfe, "acc": res.stats["accepted"],
                         "rej": res.stats["rejected"], "rmse": err, "sec": sec})
    # The paper's default tolerances for DPM-Solver (rtol 0.05, atol 0.0078).
    for order in (2, 3):
        res = Sampler(prob, "dpm_adaptive", grid="karras", order=order, progress=False).run(noise=noise)
        rows.append({"solver": f"DPM-Solver-{order - 1}{order} defaults", "tol": 0.05, "nfe": res.nfe,
                     "acc": res.stats["accepted"], "rej": res.stats["rejected"],
                     "rmse": float((res.samples - ref.samples).pow(2).mean(dim=1).sqrt().mean()), "sec": float("nan")})
    return rows


def sde_table(prob, n: int, steps_list, torchsde_steps) -> tuple[list[dict], float]:
    data = prob.sample_data(n, generator=torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(prob.sample_data(n, generator=torch.Generator().manual_seed(2)), data)
    seeds = list(range(n))
    configs = [("dpmpp_2m (ODE baseline)", "dpmpp_2m", {}), ("euler_ancestral", "euler_ancestral", {}),
               ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", {}), ("edm_churn (S_churn=40)", "edm_churn", {}),
               ("restart (0.06,0.30,K=2,3)", "restart", {}), ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
               ("dpmpp_3m_sde", "dpmpp_3m_sde", {})]
    rows = []
    for label, solver, opts in configs:
        for steps in steps_list:
            smp = Sampler(prob, solver, grid="karras", progress=False, **opts)
            t0 = time.perf_counter()
            res = smp.run(steps, seed=seeds, batch_size=n, dtype=torch.float64)
            rows.append({"sampler": label, "steps": steps, "nfe": res.nfe, "sw1": sliced_wasserstein(res.samples, data),
                         "loglik": float(prob.log_prob(res.samples).mean()), "sec": time.perf_counter() - t0})
    for method in ("euler", "srk"):
        for steps in torchsde_steps:
            smp = Sampler(prob, f"torchsde_{method}", grid="karras", brownian="batch", progress=False)
            t0 = time.perf_counter()
            res = smp.run(steps, seed=seeds, batch_size=n, dtype=torch.float64)
            rows.append({"sampler": f"torchsde_{method} (log-SNR steps)", "steps": steps, "nfe": res.nfe,
                         "sw1": sliced_wasserstein(res.samples, data),
                         "loglik": float(prob.log_prob(res.samples).mean()), "sec": time.perf_counter() - t0})
    return rows, floor


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and settings")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prob = GaussianMixtureProblem.default()
    n_ode, n_sde = (64, 1000) if args.quick else (256, 2000)
    rtols = (0.05, 1e-2, 1e-3, 1e-4) if not args.quick else (1e-2, 1e-3)
    print(f"# Issue 4 table on GaussianMixtureProblem.default() (dim {prob.dim}, EDM schedule, karras span, "
          f"float64, CPU 1 thread)\n")
    print(f"## Adaptive ODE solvers: mean per-sample endpoint RMSE vs reference ({n_ode} samples, atol = rtol/10)\n")
    print("| solver | rtol | NFE | accepted | rejected | RMSE | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in ode_table(prob, n_ode, rtols):
        print(f"| {r['solver']} | {r['tol']:.0e} | {r['nfe']} | {r['acc']} | {r['rej']} | {r['rmse']:.2e} | "
              f"{r['sec']:.2f} |")
    steps_list = (5, 10, 20, 40) if not args.quick else (10, 20)
    rows, floor = sde_table(prob, n_sde, steps_list, (16, 32, 64) if not args.quick else (16,))
    own = float(prob.log_prob(prob.sample_data(n_sde, generator=torch.Generator().manual_seed(1))).mean())
    print(f"\n## SDE samplers: sliced W1 to {n_sde} exact data samples (256 directions) and mean exact "
          f"log-likelihood (data's own: {own:.3f})\n")
    print(f"Noise floor (two independent exact sets of {n_sde}): sliced W1 = {floor:.4f}\n")
    print("| sampler | steps | NFE | sliced W1 | log-lik | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['sw1']:.4f} | {r['loglik']:.3f} | {r['sec']:.2f} |")


if __name__ == "__main__":
    main()
