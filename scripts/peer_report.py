"""Learned corrections on the shared MNIST DDPM (../shared/models) against diffusers' schedulers on the same noise.

    python scripts/peer_report.py [--nfe 3,5,7,9] [--n 64] [--out DIR] [--json out.json]

Endpoint RMSE (the bench's peer-table measure: root mean square over all pixels) against DPM-Solver++(3M) on 1,000
log-SNR steps, on held-out noise seeds from 100000. Peers: every scheduler of the bench's diffusers preset at its
default timesteps, best per NFE. Un-learned diffsolve: the bench's fast solvers on the karras, log-SNR and
diffusers grids, best per NFE. Learned, trained here on other seeds (the 'fine' teacher, 200 steps) and kept in
`--out` (reused when present): DEIS on a learned grid, AMED-Plugin(DEIS) (grid learned with the data-mean AFS from
several starting grids, the feature predictor refined with the endpoint loss), and learned DEIS weights.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from diffsolve.bench.presets import MNIST_DDPM, diffusers_rows, rmse, solver_rows
from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.corrections.io import to_amed_table
from diffsolve.corrections.io import load_correction
from diffsolve.corrections.teacher import field_of
from diffsolve.corrections.train import train_amed
from diffsolve.errors import InvalidArgument
from diffsolve.files import atomic_write_bytes
from diffsolve.noise import draw_noise
from diffsolve.pretrained_adapters import load_mnist_ddpm
from diffsolve.pretrained_adapters.diffusers import diffusers_grid
from diffsolve.sampler import Sampler

EVAL_SEED = 100_000
TEACHER = {"fine_steps": 200}       # the 96-step default leaves 0.009 RMSE on this model; 200 steps 0.0007
GRID_FIT = dict(n=64, batch_size=16, epochs=16, lr=0.05)
REFINE = dict(loss="endpoint", n_train=64, batch_size=16, epochs=8, lr=2e-3)
WEIGHTS = dict(n=128, batch_size=16, epochs=30, lr=0.02, weight_lr=5e-3)


def grid_starts() -> tuple:
    """Starting grids of the grid fits: three standard ones and diffusers' DPM-Solver and DDIM timesteps."""

    def diffusers_dpmsolver(steps: int, schedule: Any) -> torch.Tensor:
        return diffusers_grid(steps, schedule, style="dpmsolver")

    def diffusers_ddim(steps: int, schedule: Any) -> torch.Tensor:
        return diffusers_grid(steps, schedule, style="ddim")
    return ("time_uniform", "logsnr_uniform", "karras", diffusers_dpmsolver, diffusers_ddim)


def train_corrections(model: Any, nfes: Sequence[int], out: Path, log: Callable[[str], None] | None = print) -> dict:
    """The three learned corrections for `model` at `nfes`, read from `out` when there, else trained and saved."""

    out.mkdir(parents=True, exist_ok=True)
    tag = "-".join(str(k) for k in nfes)
    files = {"grid": out / f"learned-deis-ddpm-{tag}.safetensors", "afs_grid": out / f"afs-deis-ddpm-{tag}.safetensors",
             "amed": out / f"amed-deis-ddpm-{tag}.safetensors", "weights": out / f"weights-deis-ddpm-{tag}.safetensors"}
    got: dict = {}
    seconds: dict = {}
    common = dict(teacher="fine", teacher_options=TEACHER, seed=0, log=log)
    for key in ("grid", "afs_grid", "amed", "weights"):
        path = files[key]
        if path.is_file():
            got[key] = load_correction(path, field=field_of(model))     # refused if made for another model
            seconds[key] = got[key].meta.get("build_seconds")
            continue
        start = time.perf_counter()
        if key == "grid":
            corr = learn_grid(model, base="deis", nfe=nfes, starts=grid_starts(), **GRID_FIT, **common)
        elif key == "afs_grid":
            corr = learn_grid(model, base="deis", nfe=nfes, afs=True, starts=grid_starts(), **GRID_FIT, **common)
        elif key == "amed":
            corr = train_amed(model, base="deis", init=to_amed_table(got["afs_grid"], model), **REFINE, **common)
        else:
            corr = learn_coefficients(model, base="deis", nfe=nfes, grid=got["afs_grid"], **WEIGHTS, **common)
        # the AMED and weights stages build on the AFS grid: their cost includes it
        extra = (seconds.get("afs_grid") or 0.0) if key in ("amed", "weights") else 0.0
        corr.meta["build_seconds"] = round(time.perf_counter() - start + extra, 1)
        corr.meta["model"] = "mnist-ddpm"
        corr.save(path)
        got[key], seconds[key] = corr, corr.meta["build_seconds"]
    return got


def evaluate(nfes: Sequence[int] = (3, 5, 7, 9), n: int = 64, out: Path | None = None,
             log: Callable[[str], None] | None = print) -> dict:

    if not MNIST_DDPM.is_file():
        raise InvalidArgument(f"{MNIST_DDPM} is missing (the shared model folder)")
    torch.set_num_threads(1)
    model = load_mnist_ddpm(MNIST_DDPM)
    noise = draw_noise((n, 1, 28, 28), seed=list(range(EVAL_SEED, EVAL_SEED + n)), dtype=torch.float32)
    start = time.perf_counter()
    with torch.no_grad():
        ref = Sampler(model, "dpmpp_3m", "logsnr_uniform", progress=False).run(steps=1000, noise=noise).samples
    if log:
        log(f"reference: {n} held-out samples, 1000 steps, in {time.perf_counter() - start:.0f}s")
    rows: dict = {str(k): {"diffusers": {}, "ours": {}, "learned": {}} for k in nfes}

    def collect(part: str, table: dict, suffix: str = "") -> None:
        for name, cells in table.items():
            for k in nfes:
                cell = cells.get(k)
                if cell is not None and cell[1] <= k:
                    rows[str(k)][part][name + suffix] = cell[0]
    collect("diffusers", diffusers_rows(model, noise, ref, nfes))
    for label, g, opts in (("karras", "karras", None), ("logsnr_uniform", "logsnr_uniform", None),
                           ("diffusers", diffusers_grid, {"style": "dpmsolver"})):
        collect("ours", solver_rows(model, noise, ref, nfes, None, g, opts), f" / {label}")
    corr = train_corrections(model, nfes, out or Path.home() / ".cache" / "diffsolve" / "ddpm-corrections", log)
    learned = {"DEIS + learned grid": ("deis", {"grid": corr["grid"].grid_function()}),
               "AMED-Plugin(DEIS)": ("amed_plugin", {"base": "deis", "predictor": corr["amed"]}),
               "DEIS + learned weights": ("learned_multistep", {"base": "deis", "coefficients": corr["weights"]})}
    for label, (solver, opts) in learned.items():
        s = Sampler(model, solver, progress=False, **opts)
        for k in nfes:
            res = s.run(nfe=k, noise=noise)
            rows[str(k)]["learned"][label] = rmse(res.samples, ref)
    for row in rows.values():
        for part in ("diffusers", "ours", "learned"):
            best = min(row[part].items(), key=lambda kv: kv[1])
            row[f"best_{part}"] = {"name": best[0], "rmse": best[1]}
        row["ratio"] = row["best_learned"]["rmse"] / row["best_diffusers"]["rmse"]
    return {"model": "shared MNIST DDPM", "n": n, "held_out_seeds": [EVAL_SEED, EVAL_SEED + n - 1], "rows": rows,
            "train_seconds": {"DEIS + learned grid": corr["grid"].meta.get("build_seconds"),
                              "AMED-Plugin(DEIS)": corr["amed"].meta.get("build_seconds"),
                              "DEIS + learned weights": corr["weights"].meta.get("build_seconds")},
            "seconds": round(time.perf_counter() - start, 1)}


def table(result: dict) -> str:
    names = list(result["train_seconds"])
    lines = ["| NFE | diffusers' best | RMSE | diffsolve un-learned best | RMSE | " + " | ".join(names)
             + " | best learned / diffusers' best |", "|" + "---|" * (6 + len(names))]
    secs = result["train_seconds"]
    lines.append("| training (s, wall) | | | | | " + " | ".join(
        f"{secs[k]:.0f}" if secs.get(k) is not None else "?" for k in names) + " | |")
    for k, row in result["rows"].items():
        d, o = row["best_diffusers"], row["best_ours"]
        cells = [f"{row['learned'][lab]:.4f}" for lab in names]
        lines.append(f"| {k} | {d['name']} | {d['rmse']:.4f} | {o['name']} | {o['rmse']:.4f} | " + " | ".join(cells)
                     + f" | {row['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/peer_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfe", default="3,5,7,9")
    p.add_argument("--samples", "--n", dest="n", type=int, default=64, help="held-out samples (default 64)")
    p.add_argument("--out", default=None, help="folder of the trained corrections (default "
                                               "~/.cache/diffsolve/ddpm-corrections; reused when present)")
    p.add_argument("--json", default=None, help="also write the full result here")
    args = p.parse_args(argv)
    nfes = [int(v) for v in args.nfe.replace(",", " ").split()]
    result = evaluate(nfes, args.n, Path(args.out) if args.out else None)
    print(table(result))
    if args.json:
        atomic_write_bytes(args.json, json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
