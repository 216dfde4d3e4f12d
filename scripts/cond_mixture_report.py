"""Learned corrections on the class-conditional 2-D mixture (diffsolve.models.cond_mixture) under classifier-free
guidance, against k-diffusion's samplers and diffsolve's un-learned solvers on the same guided field.

    python scripts/cond_mixture_report.py [--nfe 3,5] [--n 512] [--scale 2] [--json out.json]

The field: Conditioned(ClassifierFreeGuidance(model, scale, null label), labels). Training (seeded) draws its labels
from `draw_labels(n, Generator(seed 0))`, one per training sample, and the trainers' own noise seeds; evaluation
uses noise seeds 900000 and up and labels drawn with generator seed 4242 (never trained on). Endpoint RMSE (root
mean square over all coordinates) against the float64 adaptive reference solve (the 'reference' teacher's). The
table's NFE counts guided denoiser evaluations (each two network calls); the trainers and the Sampler are given
twice that, in network evaluations.
Peers: k-diffusion's ODE samplers (euler, heun, dpm_2, lms, dpmpp_2m, from its sampling module through
diffsolve.evaluation.k_diffusion_peer) on its karras, exponential and polyexponential sigmas.
Un-learned diffsolve: every fast solver on five grids. Learned: `learn_grid` (iPNDM and DEIS), `train_amed`
(AMED-Plugin(DEIS), AMED-Solver) and `learn_coefficients` (DEIS weights), with the tuners' default settings; the
training seconds include the reference teacher's solves, which trainers drawing the same seeds share through the
reference cache (DEIS's grid reuses iPNDM's endpoints, AMED-Solver AMED-Plugin's trajectories). Set
DIFFSOLVE_CACHE to an empty folder to time them from scratch.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Sequence

import torch

from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.corrections.io import amed_grid
from diffsolve.corrections.teacher import noise_for, teacher_states
from diffsolve.corrections.train import train_amed
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling
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


# k-diffusion's own deterministic samplers and sigma schedules (its sampling module, loaded by the project's peer
# loader), each with its network cost in denoiser calls for n steps.
K = load_k_diffusion_sampling()
K_SAMPLERS = {"euler": (K.sample_euler, lambda n: n), "heun": (K.sample_heun, lambda n: 2 * n - 1),
              "dpm_2": (K.sample_dpm_2, lambda n: 2 * n - 1), "lms": (K.sample_lms, lambda n: n),
              "dpmpp_2m": (K.sample_dpmpp_2m, lambda n: n)}
K_SIGMAS = {"karras": K.get_sigmas_karras, "exponential": K.get_sigmas_exponential,
            "polyexponential": K.get_sigmas_polyexponential}


def peer_rows(field, noise, ref, nfes) -> dict:
    """k-diffusion sampler / sigmas -> {nfe: RMSE} at the most steps within each budget (NFE in guided calls)."""
    def denoiser(x, sigma):                 # k-diffusion passes one sigma per sample; all are equal here
        return field.denoise(x, field.at(float(sigma.reshape(-1)[0])))
    rows = {}
    for name, (fn, cost) in K_SAMPLERS.items():
        for sname, sigmas in K_SIGMAS.items():
            row = {}
            for k in nfes:
                steps = max((m for m in range(1, k + 1) if cost(m) <= k), default=None)
                if steps is None:
                    continue
                sig = sigmas(steps, 0.002, 80.0).to(torch.float64)
                with torch.no_grad():
                    row[k] = rmse(fn(denoiser, noise.double() * sig[0], sig, disable=True), ref)
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
    nfes = [k * field.evals_per_call for k in nfes]         # the trainers count network evaluations
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
