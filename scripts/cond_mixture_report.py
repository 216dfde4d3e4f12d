"""Learned corrections on the class-conditional 2-D mixture (diffsolve.models.cond_mixture) under classifier-free
guidance, against k-diffusion's samplers and diffsolve's un-learned solvers on the same guided field.

    python scripts/cond_mixture_report.py [--nfe 3,5] [--n 512] [--scale 2] [--json out.json]

The field: Conditioned(ClassifierFreeGuidance(model, scale, null label), labels). Training (seeded) draws its labels
from `draw_labels(n, Generator(seed 0))`, one per training sample, and the trainers' own noise seeds; evaluation
uses noise seeds 900000 and up and labels drawn with generator seed 4242 (never trained on). Endpoint RMSE (root
mean square over all coordinates) against the float64 adaptive reference solve (the 'reference' teacher's). NFE
counts guided denoiser evaluations (each two network calls), as the trainers' budgets do.
Peers: k-diffusion's ODE samplers (euler, heun, dpm_2, lms, dpmpp_2m; the formulas of k_diffusion/sampling.py,
written out here since the package is not installed) on its karras, exponential and polyexponential sigmas.
Un-learned diffsolve: every fast solver on five grids. Learned: `learn_grid` (iPNDM and DEIS), `train_amed`
(AMED-Plugin(DEIS), AMED-Solver) and `learn_coefficients` (DEIS weights), with the tuners' default settings; the
training seconds include the reference teacher's solves, which trainers drawing the same seeds share through the
reference cache (DEIS's grid reuses iPNDM's endpoints, AMED-Solver AMED-Plugin's trajectories). Set
DIFFSOLVE_CACHE to an empty folder to time them from scratch.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Callable, Sequence

import torch

from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.corrections.io import amed_grid
from diffsolve.corrections.teacher import noise_for, teacher_states
from diffsolve.corrections.train import train_amed
from diffsolve.field import ClassifierFreeGuidance, Conditioned, VectorField
from diffsolve.files import atomic_write_bytes
from diffsolve.models.cond_mixture import draw_labels, load_cond_mixture, null_labels
from diffsolve.sampler import Sampler

EVAL_SEED, EVAL_LABEL_SEED, TRAIN_LABEL_SEED = 900_000, 4242, 0
SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "deis", "ipndm", "ipndm_v", "dpm_solver_2",
           "dpm_solver_3", "lms")
GRIDS = ("karras", "logsnr_uniform", "time_quadratic", "time_uniform", amed_grid)


def guided(model, scale: float, labels: dict):
    """The conditioned, guided field."""
    return Conditioned(ClassifierFreeGuidance(VectorField(model), scale, null_labels()), labels)


# --- k-diffusion's samplers (k_diffusion/sampling.py, deterministic ones) -----------------------------------------
def karras(n: int, lo: float = 0.002, hi: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros([1])])


def exponential(n: int, lo: float = 0.002, hi: float = 80.0) -> torch.Tensor:
    s = torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64).exp()
    return torch.cat([s, s.new_zeros([1])])


def polyexponential(n: int, lo: float = 0.002, hi: float = 80.0, rho: float = 1.0) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    s = torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo))
    return torch.cat([s, s.new_zeros([1])])


def k_euler(D, x, sig):
    for i in range(len(sig) - 1):
        d = (x - D(x, sig[i])) / sig[i]
        x = x + d * (sig[i + 1] - sig[i])
    return x


def k_heun(D, x, sig):
    for i in range(len(sig) - 1):
        d = (x - D(x, sig[i])) / sig[i]
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = (x2 - D(x2, sig[i + 1])) / sig[i + 1]
            x = x + (d + d2) / 2 * dt
    return x


def k_dpm_2(D, x, sig):
    for i in range(len(sig) - 1):
        d = (x - D(x, sig[i])) / sig[i]
        if sig[i + 1] == 0:
            x = x + d * (sig[i + 1] - sig[i])
        else:
            mid = math.exp((math.log(sig[i]) + math.log(sig[i + 1])) / 2)
            x2 = x + d * (mid - sig[i])
            d2 = (x2 - D(x2, mid)) / mid
            x = x + d2 * (sig[i + 1] - sig[i])
    return x


def _lms_coeff(order, t, i, j):
    from scipy import integrate

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod
    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def k_lms(D, x, sig, order=4):
    ds = []
    for i in range(len(sig) - 1):
        ds.append((x - D(x, sig[i])) / sig[i])
        ds = ds[-order:]
        cur = min(i + 1, order)
        coeffs = [_lms_coeff(cur, sig, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def k_dpmpp_2m(D, x, sig):
    old = None
    for i in range(len(sig) - 1):
        den = D(x, sig[i])
        t, t_next = -math.log(sig[i]), (-math.log(sig[i + 1]) if sig[i + 1] > 0 else math.inf)
        h = t_next - t
        if old is None or sig[i + 1] == 0:
            dd = den
        else:
            r = (t - (-math.log(sig[i - 1]))) / h
            dd = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        x = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * dd if sig[i + 1] > 0 else dd
        old = den
    return x


K_SAMPLERS = {"euler": (k_euler, lambda n: n), "heun": (k_heun, lambda n: 2 * n - 1),
              "dpm_2": (k_dpm_2, lambda n: 2 * n - 1), "lms": (k_lms, lambda n: n),
              "dpmpp_2m": (k_dpmpp_2m, lambda n: n)}
K_SIGMAS = {"karras": karras, "exponential": exponential, "polyexponential": polyexponential}


def peer_rows(field, noise, ref, nfes) -> dict:
    """k-diffusion sampler / sigmas -> {nfe: RMSE} at the most steps within each budget."""
    def D(x, s):
        return field.denoise(x, field.at(float(s)))
    rows = {}
    for name, (fn, cost) in K_SAMPLERS.items():
        for sname, sigmas in K_SIGMAS.items():
            row = {}
            for k in nfes:
                steps = max((m for m in range(1, k + 1) if cost(m) <= k), default=None)
                if steps is None:
                    continue
                sig = [float(v) for v in sigmas(steps)]
                with torch.no_grad():
                    row[k] = rmse(fn(D, noise * sig[0], sig), ref)
            rows[f"k-diffusion {name} / {sname}"] = row
    return rows


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def ours_rows(field, noise, ref, nfes) -> dict:
    calls = field.evals_per_call            # NFE counts guided evaluations (two network calls each)
    rows = {}
    for solver in SOLVERS:
        for grid in GRIDS:
            gname = grid if isinstance(grid, str) else "amed"
            row = {}
            for k in nfes:
                try:
                    with torch.no_grad():
                        r = Sampler(field, solver, grid, progress=False).run(nfe=k * calls, noise=noise)
                except Exception:  # noqa: BLE001 - a solver that cannot run at this budget has no cell
                    continue
                if r.nfe <= k * calls:
                    row[k] = rmse(r.samples, ref)
            rows[f"{solver} / {gname}"] = row
    return rows


def train_all(model, scale: float, nfes: Sequence[int], log: Callable | None) -> tuple[dict, dict]:
    """The learned corrections (tuners' default settings), each with its wall seconds."""
    labels = draw_labels(128, torch.Generator().manual_seed(TRAIN_LABEL_SEED))
    field = guided(model, scale, labels)
    jobs = {
        "iPNDM + learned grid": lambda: learn_grid(field, base="ipndm", nfe=nfes, log=log),
        "DEIS + learned grid": lambda: learn_grid(field, base="deis", nfe=nfes, log=log),
        "AMED-Plugin(DEIS)": lambda: train_amed(field, base="deis", nfe=nfes, log=log),
        "AMED-Solver": lambda: train_amed(field, base="amed", nfe=nfes, log=log),
        "DEIS + learned weights": lambda: learn_coefficients(field, base="deis", nfe=nfes, log=log),
    }
    got, secs = {}, {}
    for name, job in jobs.items():
        start = time.perf_counter()
        got[name] = job()
        secs[name] = round(time.perf_counter() - start, 1)
        if log:
            log(f"{name}: trained in {secs[name]}s")
    return got, secs


def learned_rows(field, noise, ref, nfes, corr: dict) -> dict:
    rows = {}
    for name, c in corr.items():
        if "grid" in name:
            s = Sampler(field, c.base, grid=c.grid_function(), progress=False)
        elif "AMED-Solver" in name:
            s = Sampler(field, "amed", predictor=c, progress=False)
        elif "AMED" in name:
            s = Sampler(field, "amed_plugin", base="deis", predictor=c, progress=False)
        else:
            s = Sampler(field, "learned_multistep", base="deis", coefficients=c, progress=False)
        with torch.no_grad():
            rows[name] = {k: rmse(s.run(nfe=k * field.evals_per_call, noise=noise).samples, ref) for k in nfes}
    return rows


def evaluate(nfes: Sequence[int], n: int, scale: float, log: Callable | None = print) -> dict:
    torch.set_num_threads(1)
    model = load_cond_mixture()
    labels = draw_labels(n, torch.Generator().manual_seed(EVAL_LABEL_SEED))
    field = guided(model, scale, labels)
    seeds = list(range(EVAL_SEED, EVAL_SEED + n))
    noise = noise_for(field, seeds)
    start = time.perf_counter()
    ref = teacher_states(field, noise.double(), [field.t_max, 0.0], seeds=seeds)[-1]
    if log:
        log(f"reference: {n} held-out samples in {time.perf_counter() - start:.0f}s")
    corr, secs = train_all(model, scale, nfes, log)
    parts = {"peer": peer_rows(field, noise, ref, nfes), "ours": ours_rows(field, noise, ref, nfes),
             "learned": learned_rows(field, noise, ref, nfes, corr)}
    rows = {}
    for k in nfes:
        row = {}
        for part, table in parts.items():
            cells = {name: r[k] for name, r in table.items() if k in r}
            best = min(cells.items(), key=lambda kv: kv[1])
            row[part] = cells
            row[f"best_{part}"] = {"name": best[0], "rmse": best[1]}
        rows[str(k)] = row
    return {"n": n, "scale": scale, "rows": rows, "train_seconds": secs,
            "seconds": round(time.perf_counter() - start, 1)}


def table(result: dict) -> str:
    """The markdown table of a result."""
    names = list(result["train_seconds"])
    lines = ["| NFE | best peer | RMSE | best un-learned diffsolve | RMSE | " + " | ".join(names)
             + " | best learned / best peer | best learned / best un-learned |", "|" + "---|" * (7 + len(names))]
    lines.append("| training (s, wall) | | | | | " + " | ".join(f"{result['train_seconds'][k]:.0f}" for k in names)
                 + " | | |")
    for k, row in result["rows"].items():
        p, o = row["best_peer"], row["best_ours"]
        cells = [f"{row['learned'][m]:.4f}" for m in names]
        best = row["best_learned"]["rmse"]
        lines.append(f"| {k} | {p['name']} | {p['rmse']:.4f} | {o['name']} | {o['rmse']:.4f} | " + " | ".join(cells)
                     + f" | {best / p['rmse']:.2f}x | {best / o['rmse']:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/cond_mixture_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfe", default="3,5")
    p.add_argument("--n", type=int, default=512, help="held-out samples (default 512)")
    p.add_argument("--scale", type=float, default=2.0, help="guidance scale (default 2)")
    p.add_argument("--json", default=None, help="also write the full result here")
    args = p.parse_args(argv)
    result = evaluate([int(v) for v in args.nfe.split(",")], args.n, args.scale)
    print(table(result))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
