"""Learned corrections against the best un-learned solver on the built-in MNIST UNet: endpoint RMSE against a
float64 reference (bench/reference.py, dopri5 at rtol = atol = 1e-5, cached on disk) on held-out noise seeds
(100000 and up; training uses seeds below 1000000 * (seed + 1) from 0, and the held-out range is never used there).

    python scripts/corrections_report.py [--nfe 3,5,7,9] [--n 64] [--json out.json]

Un-learned: every listed solver on every listed grid (the named grids and the AMED grid, which is the EDM grid to
sigma_min with its last point moved to 0), best per NFE. Learned: every shipped correction (LEARNED): AMED-Solver,
AMED-Plugin(iPNDM / DEIS), iPNDM on the GITS and learned grids, DEIS on its learned grid, learned DEIS weights.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
from diffsolve.field import as_field
from diffsolve.files import atomic_write_bytes
from diffsolve.models import load_mnist_unet
from diffsolve.models.builtin import load_feature_stats, load_mnist_classifier
from diffsolve.models.classifier import feature_stats, featurize, frechet_distance
from diffsolve.sampler import Sampler
from diffsolve.corrections.io import SHIPPED, amed_grid
from diffsolve.corrections.teacher import noise_for, teacher_states

BASELINE_SOLVERS = (("ipndm", {}), ("ipndm_v", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("unipc_bh2", {}),
                    ("deis", {}))
BASELINE_GRIDS = ("karras", "logsnr_uniform", "time_quadratic", "amed")
# (label, solver, options, grid, shipped file that holds the correction)
LEARNED = (("AMED-Solver", "amed", {}, None, "amed-mnist-unet"),
           ("AMED-Plugin(iPNDM)", "amed_plugin", {"base": "ipndm"}, None, "amed-ipndm-mnist-unet"),
           ("AMED-Plugin(DEIS)", "amed_plugin", {"base": "deis"}, None, "amed-deis-mnist-unet"),
           ("iPNDM + GITS", "ipndm", {}, "gits", "gits-ipndm-mnist-unet"),
           ("iPNDM + learned grid", "ipndm", {}, "learned", "learned-ipndm-mnist-unet"),
           ("DEIS + learned grid", "deis", {}, "learned", "learned-deis-mnist-unet"),
           ("DEIS + learned weights", "learned_multistep", {"base": "deis"}, None, "weights-deis-mnist-unet"))


def shipped_learned() -> list[tuple]:
    """The LEARNED entries whose correction ships, each with its training cost in wall seconds (sidecar meta).

    Returns:
        (label, solver, options, grid, seconds) per shipped correction; seconds is None when not recorded.
    """
    out = []
    for label, name, opts, grid, stem in LEARNED:
        side = SHIPPED / f"{stem}.safetensors.json"
        if side.is_file():
            meta = json.loads(side.read_text()).get("meta", {})
            out.append((label, name, opts, grid, meta.get("build_seconds", meta.get("seconds"))))
    return out
EVAL_SEED = 100_000


def _label(name: str, opts: dict) -> str:
    return name + ("+afs" if opts.get("afs") else "")


def evaluate(nfes: Sequence[int] = (3, 5, 7, 9), n: int = 64, log=print, baseline_cache: str | None = None,
             learned: bool = True) -> dict:
    """Endpoint RMSE against the float64 reference of every baseline (solver x grid) and every shipped correction.

    On `n` held-out seeds from EVAL_SEED on the built-in MNIST UNet; per NFE the best of each side and their ratio.

    Args:
        nfes: The model-call budgets to compare at.
        n: Number of held-out samples.
        log: Progress printer; None is silent.
        baseline_cache: A JSON file of the baselines' results: read when it holds the same `n` and every NFE,
            written otherwise; None computes them every time.
        learned: Also evaluate the learned corrections (False returns the baselines alone).

    Returns:
        "rows" per NFE ("baselines", "learned", "best_baseline", "best_learned", "ratio"), with the model, the
        held-out seed range, `n`, the training seconds and the wall seconds; only "rows" when `learned` is False.
    """
    torch.set_num_threads(1)
    field = as_field(load_mnist_unet())
    seeds = list(range(EVAL_SEED, EVAL_SEED + n))
    noise = noise_for(field, seeds)
    start = time.perf_counter()
    ref = solve_reference(field, noise, [field.schedule.t_max, 0.0], seeds=seeds,
                          settings=ReferenceSettings(method="dopri5", rtol=1e-5, atol=1e-5)).endpoint.float()
    if log:
        log(f"reference: {n} held-out samples in {time.perf_counter() - start:.0f}s")

    def rmse(sampler: Sampler, nfe: int) -> tuple[float, int]:
        out = sampler.run(nfe=nfe, noise=noise)
        return float((out.samples - ref).pow(2).flatten(1).mean(1).sqrt().mean()), out.nfe

    rows: dict = {str(k): {"baselines": {}, "learned": {}} for k in nfes}
    cached = None
    if baseline_cache and Path(baseline_cache).is_file():
        cached = json.loads(Path(baseline_cache).read_text())
        if cached.get("n") != n or any(str(k) not in cached["rows"] for k in nfes):
            cached = None
    for k in (nfes if cached else ()):
        rows[str(k)]["baselines"] = cached["rows"][str(k)]
    for name, opts in (BASELINE_SOLVERS if cached is None else ()):
        for grid in BASELINE_GRIDS:
            s = Sampler(field, name, grid=amed_grid if grid == "amed" else grid, progress=False, **opts)
            for k in nfes:
                try:
                    e, used = rmse(s, k)
                except Exception as exc:  # noqa: BLE001 - a solver that cannot run at this budget is skipped
                    if log:
                        log(f"skip {name} {grid} nfe {k}: {exc}")
                    continue
                rows[str(k)]["baselines"][f"{_label(name, opts)} / {grid}"] = {"rmse": e, "nfe": used}
    if cached is None and baseline_cache:
        atomic_write_bytes(baseline_cache, json.dumps(
            {"n": n, "rows": {k: r["baselines"] for k, r in rows.items()}}, indent=1).encode())
    if not learned:
        return {"rows": rows}
    learned_rows = shipped_learned()
    for label, name, opts, grid, _ in learned_rows:
        s = Sampler(field, name, grid=grid, progress=False, **opts)
        for k in nfes:
            e, used = rmse(s, k)
            rows[str(k)]["learned"][label] = {"rmse": e, "nfe": used}
    for k, row in rows.items():
        b = min(row["baselines"].items(), key=lambda kv: kv[1]["rmse"])
        lrn = min(row["learned"].items(), key=lambda kv: kv[1]["rmse"])
        row["best_baseline"] = {"name": b[0], **b[1]}
        row["best_learned"] = {"name": lrn[0], **lrn[1]}
        row["ratio"] = lrn[1]["rmse"] / b[1]["rmse"]
    return {"model": "built-in MNIST UNet", "held_out_seeds": [seeds[0], seeds[-1]], "n": n, "rows": rows,
            "train_seconds": {label: sec for label, *_, sec in learned_rows},
            "seconds": round(time.perf_counter() - start, 1)}


def fd_at(nfe: int, result: dict, n: int = 1000, log=print) -> dict:
    """FD (built-in classifier) at `nfe` on n held-out seeds from EVAL_SEED, of every un-learned baseline and the best
    learned run.

    To the held-out real digits, and to the exact ODE samples from the same noise (a fine DPM-Solver++(3M) solve, the
    teachers' 'fine' mode). The exact samples' own FD to the digits is the floor no solver of this ODE can go far
    below; FD to the exact samples measures the solver's error alone.

    Args:
        nfe: The model-call budget.
        result: What `evaluate` returned (it names the baselines and the best learned run at `nfe`).
        n: Number of held-out samples (default 1000).
        log: Progress printer; None is silent.

    Returns:
        The FDs of the exact samples, of each baseline and of the learned run, the best un-learned ones and the ratios.
    """

    classifier, digits = load_mnist_classifier(), load_feature_stats()
    field = as_field(load_mnist_unet())
    seeds = list(range(EVAL_SEED, EVAL_SEED + n))
    noise = noise_for(field, seeds)

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return feature_stats(featurize(classifier, x.clamp(-1.0, 1.0))[0])

    start = time.perf_counter()
    exact = stats(torch.cat([teacher_states(field, noise[i:i + 250], [field.t_max, 0.0], mode="fine")[-1]
                             for i in range(0, n, 250)]))
    if log:
        log(f"exact samples ({n}, fine DPM-Solver++(3M)) in {time.perf_counter() - start:.0f}s")

    def fds(sampler: Sampler) -> dict:
        x = torch.cat([sampler.run(nfe=nfe, noise=noise[i:i + 250]).samples for i in range(0, n, 250)])
        mu, cov = stats(x)
        return {"fd": frechet_distance(mu, cov, digits["heldout_mu"], digits["heldout_cov"]),
                "fd_to_exact": frechet_distance(mu, cov, *exact)}

    row = result["rows"][str(nfe)]
    out: dict = {"n": n, "exact": {"fd": frechet_distance(*exact, digits["heldout_mu"], digits["heldout_cov"])},
                 "baselines": {}}
    for name in row["baselines"]:
        solver, _, grid = name.partition(" / ")
        out["baselines"][name] = fds(Sampler(field, solver, grid=amed_grid if grid == "amed" else grid,
                                             progress=False))
        if log:
            log(f"FD at NFE {nfe}, {name}: {out['baselines'][name]['fd']:.1f} "
                f"(to exact samples {out['baselines'][name]['fd_to_exact']:.1f})")
    learned = {lab: (name, opts, grid) for lab, name, opts, grid, _ in shipped_learned()}
    label = row["best_learned"]["name"]
    name, opts, grid = learned[label]
    out["learned"] = {"name": label, **fds(Sampler(field, name, grid=grid, progress=False, **opts))}
    for key in ("fd", "fd_to_exact"):
        best = min(out["baselines"].items(), key=lambda kv: kv[1][key])
        out[f"best_un-learned_{key}"] = {"name": best[0], key: best[1][key]}
        out[f"ratio_{key}"] = out["learned"][key] / best[1][key]
    return out


def fd_lines(nfe: int, f: dict) -> str:
    """Two readable lines of an `fd_at` result: FD to the digits and FD to the exact samples, best learned against best
    un-learned.

    Args:
        nfe: The model-call budget the result is for.
        f: What `fd_at` returned.

    Returns:
        The two lines.
    """
    a, b = f["best_un-learned_fd"], f["best_un-learned_fd_to_exact"]
    return (f"FD at NFE {nfe} ({f['n']} held-out samples), to held-out digits: exact ODE samples {f['exact']['fd']:.1f} "
            f"(the floor); best learned ({f['learned']['name']}) {f['learned']['fd']:.1f}; best un-learned "
            f"({a['name']}) {a['fd']:.1f}; ratio {f['ratio_fd']:.2f}x\n"
            f"FD at NFE {nfe} to the exact samples from the same noise: best learned {f['learned']['fd_to_exact']:.1f}; "
            f"best un-learned ({b['name']}) {b['fd_to_exact']:.1f}; ratio {f['ratio_fd_to_exact']:.2f}x")


def table(result: dict) -> str:
    """The Markdown table of an `evaluate` result: per NFE the best un-learned run, each learned one, and the ratio.

    Args:
        result: What `evaluate` returned (with learned runs).

    Returns:
        The table, with a first row of training seconds.
    """
    learned_names = list(result.get("train_seconds", {}))
    head = ("| NFE | best un-learned (solver / grid) | RMSE | " + " | ".join(learned_names)
            + " | best learned / best un-learned |")
    lines = [head, "|" + "---|" * (4 + len(learned_names))]
    secs = result.get("train_seconds", {})
    lines.append("| training (s, wall) | | | " + " | ".join(
        f"{secs[lab]:.0f}" if secs.get(lab) is not None else "?" for lab in learned_names) + " | |")
    for k, row in result["rows"].items():
        b = row["best_baseline"]
        cells = [f"{row['learned'][lab]['rmse']:.4f}" for lab in learned_names]
        lines.append(f"| {k} | {b['name']} | {b['rmse']:.4f} | " + " | ".join(cells) + f" | {row['ratio']:.2f}x |")
    return "\n".join(lines)
