"""Skip-Tuning against the same solvers untuned, on the built-in MNIST UNets (`diffsolve bench --preset skip`).

For each model and solver, rho_bottom is tuned once (`diffsolve.corrections.skip.search_rho`: golden section on the
classifier FD of `tune_n` samples from tuning seeds at NFE `tune_nfe`), then every NFE is scored on held-out seeds
that the search never saw, with and without the tuned skips: FD of the built-in classifier's features to the real
held-out digits, mean classifier confidence (`n` samples), and endpoint RMSE against the float64 reference
(`rmse_n` samples) -- Skip-Tuning leaves the ODE on purpose, so its FD can fall while its RMSE rises.
AMED rows use the predictors shipped for that model (none ships for the deep UNet: its rows say so).

    diffsolve bench --preset skip [--quick] [--nfe 3,5,7,9,19] [--solvers euler,dpmpp_2m] [--models mnist-unet]
                                  [--out DIR]
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from diffsolve.bench.models import resolve_model
from diffsolve.corrections.skip import search_rho, skip_samples
from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
from diffsolve.field import as_field, model_spec_of
from diffsolve.files import atomic_write_bytes
from diffsolve.models.builtin import load_feature_stats, load_mnist_classifier
from diffsolve.models.quality import fd_metric, save_grid, score, to_unit_range
from diffsolve.noise import draw_start
from diffsolve.sampler import Sampler

SKIP_NFES = (3, 5, 7, 9, 19)
SKIP_SOLVERS = ("euler", "dpmpp_2m", "unipc_bh2", "ipndm", "amed", "amed_plugin", "amed_plugin[deis]")
SKIP_MODELS = ("mnist-unet", "mnist-unet-deep")
TUNE_SEED, EVAL_SEED = 7_000_000, 9_000_000       # as `diffsolve tune skip`: disjoint tuning and held-out noise


def _solver_options(name: str) -> dict:
    """`amed_plugin[deis]` names AMED-Plugin on DEIS; plain `amed_plugin` is on iPNDM."""
    if name.startswith("amed_plugin"):
        return {"base": name[len("amed_plugin["):-1] if name.endswith("]") else "ipndm"}
    return {}


def _solver(name: str) -> str:
    return "amed_plugin" if name.startswith("amed_plugin") else name


def _label(name: str) -> str:
    return f"amed_plugin[{_solver_options(name)['base']}]" if name.startswith("amed_plugin") else name


def _runnable(model: Any, name: str, nfe: int) -> str | None:
    """None, or why this solver cannot run at this NFE on this model (a learned solver without its predictor)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")       # an AMED solver without its predictor warns and runs untrained
            Sampler(model, _solver(name), progress=False, **_solver_options(name)).run(nfe=nfe, seed=[0])
    except Exception as e:  # noqa: BLE001 - the row says why it is missing
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None


def skip_rows(model_name: str, solvers: Sequence[str], nfes: Sequence[int], *, n: int = 1000, tune_n: int = 500,
              rmse_n: int = 64, tune_nfe: int = 5, evaluations: int = 6, rho_range: tuple[float, float] = (0.5, 1.0),
              log: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (solver, NFE): rho, FD / confidence / RMSE untuned and tuned, tuning seconds.

    Args:
        model_name: A bench model name (a built-in MNIST UNet).
        solvers: Solver names; `amed_plugin[deis]` names AMED-Plugin on DEIS.
        nfes: NFE budgets scored on held-out seeds.
        n: Held-out samples scored by FD and confidence.
        tune_n: Samples whose FD the rho search minimizes.
        rmse_n: Samples compared with the float64 reference.
        tune_nfe: NFE the search tunes at.
        evaluations: FD evaluations of the golden-section search.
        rho_range: Interval of rho_bottom searched.
        log: Takes one progress line; None prints it.

    Returns:
        The rows; a solver that cannot run gets rows whose `status` says why.
    """
    log = log or (lambda line: print(line, flush=True))
    entry, model = resolve_model(model_name)
    spec = model_spec_of(model)
    data_range = spec.data_range or (-1.0, 1.0)
    metric = fd_metric(data_range)
    classifier, stats = load_mnist_classifier(), load_feature_stats()
    held = list(range(EVAL_SEED, EVAL_SEED + n))
    tune = list(range(TUNE_SEED, TUNE_SEED + tune_n))
    field = as_field(model)
    t0 = time.perf_counter()
    ref_noise = draw_start((rmse_n, *field.sample_shape), source=field.source, seed=held[:rmse_n], dtype=torch.float32)
    ref = solve_reference(field, ref_noise, [field.schedule.t_max, 0.0], seeds=held[:rmse_n],
                          settings=ReferenceSettings(method="dopri5", rtol=1e-5, atol=1e-5)).endpoint.float()
    log(f"[{model_name}] reference for {rmse_n} held-out samples: {time.perf_counter() - t0:.0f}s")

    def measure(name: str, k: int, rho: float) -> dict:
        x = skip_samples(model, _solver(name), k, held, rho, solver_options=_solver_options(name))
        sc = score(classifier, to_unit_range(x, data_range), stats)
        rmse = float((x[:rmse_n] - ref).pow(2).flatten(1).mean(1).sqrt().mean())
        return {"fd": sc["fd"], "confidence": sc["confidence"], "rmse": rmse, "samples": x[:10]}

    rows = []
    for name in solvers:
        why = _runnable(model, name, tune_nfe)
        if why is not None:
            log(f"[{model_name}] {_label(name)}: not run ({why})")
            rows += [{"model": model_name, "solver": _label(name), "nfe": k, "status": f"n/a: {why}"} for k in nfes]
            continue
        start = time.perf_counter()
        rho, tuned_fd, untuned_fd, history = search_rho(
            model, _solver(name), tune_nfe, metric, tune_seeds=tune, rho_range=rho_range, evaluations=evaluations,
            progress=lambda s, _m=model_name, _n=name: log(f"[{_m}] {_label(_n)}: {s}"),
            solver_options=_solver_options(name))
        tune_s = time.perf_counter() - start
        log(f"[{model_name}] {_label(name)}: rho_bottom {rho:.3f} (tuning FD {tuned_fd:.1f}, untuned "
            f"{untuned_fd:.1f}) in {tune_s:.0f}s")
        for k in nfes:
            why = _runnable(model, name, k)
            if why is not None:
                rows.append({"model": model_name, "solver": _label(name), "nfe": k, "status": f"n/a: {why}"})
                continue
            base = measure(name, k, 1.0)
            tuned = measure(name, k, rho) if rho != 1.0 else base
            rows.append({"model": model_name, "solver": _label(name), "nfe": k, "status": "ok", "rho_bottom": rho,
                         "tune_seconds": tune_s, "tune_nfe": tune_nfe, "history": history,
                         **{f"{m}_untuned": base[m] for m in ("fd", "confidence", "rmse")},
                         **{f"{m}_tuned": tuned[m] for m in ("fd", "confidence", "rmse")},
                         "grid_untuned": base["samples"], "grid_tuned": tuned["samples"]})
            r = rows[-1]
            log(f"[{model_name}] {_label(name)} NFE {k}: FD {r['fd_untuned']:.1f} -> {r['fd_tuned']:.1f}, "
                f"RMSE {r['rmse_untuned']:.4f} -> {r['rmse_tuned']:.4f}")
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown: one line per model x solver x NFE.

    Args:
        rows: The rows from `skip_rows`.

    Returns:
        The table.
    """
    lines = ["| model | solver | NFE | rho_bottom | FD untuned | FD tuned | ratio | confidence untuned -> tuned | "
             "RMSE untuned -> tuned | tuning s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['solver']} | {r['nfe']} | {r['status'][:60]} | | | | | | |")
            continue
        lines.append(f"| {r['model']} | {r['solver']} | {r['nfe']} | {r['rho_bottom']:.3f} | {r['fd_untuned']:.1f} | "
                     f"{r['fd_tuned']:.1f} | {r['fd_tuned'] / r['fd_untuned']:.3f} | "
                     f"{r['confidence_untuned']:.3f} -> {r['confidence_tuned']:.3f} | "
                     f"{r['rmse_untuned']:.4f} -> {r['rmse_tuned']:.4f} | {r['tune_seconds']:.0f} |")
    return "\n".join(lines)


def write(rows: list[dict], out: Path) -> list[Path]:
    """rows as JSON and a sample grid (10 held-out digits untuned and tuned per solver at NFE 5), atomically.

    Args:
        rows: The rows from `skip_rows`.
        out: Folder to write skip_tuning.json and skip_tuning_nfe5.png to (created if missing).

    Returns:
        The paths written (no grid when no row at NFE 5 ran).
    """
    out.mkdir(parents=True, exist_ok=True)
    plain = [{k: v for k, v in r.items() if not k.startswith("grid_")} for r in rows]
    path = out / "skip_tuning.json"
    atomic_write_bytes(path, json.dumps(plain, indent=1).encode())
    written = [path]
    shown = [r for r in rows if r["status"] == "ok" and r["nfe"] == 5]
    if shown:
        png = out / "skip_tuning_nfe5.png"
        tmp = png.with_name(png.stem + ".tmp.png")
        save_grid([g for r in shown for g in (r["grid_untuned"], r["grid_tuned"])],
                  [f"{r['model'][6:]} {r['solver']} {tag}" for r in shown
                   for tag in ("rho 1", f"rho {r['rho_bottom']:.2f}")], tmp)
        tmp.replace(png)
        written.append(png)
    return written


def skip_report(nfes: Sequence[int] | None, solvers: Sequence[str] | None, models: Sequence[str] | None,
                quick: bool, out: str | Path | None) -> str:
    """The skip table (markdown) over models x solvers x NFE; with `out`, its JSON and sample grid written there.

    Args:
        nfes: NFE budgets; None or empty takes `SKIP_NFES` (5 alone with `quick`).
        solvers: Solver names; None or empty takes `SKIP_SOLVERS` (euler, dpmpp_2m with `quick`).
        models: Bench model names; None or empty takes `SKIP_MODELS`.
        quick: Fewer samples and search evaluations.
        out: Folder for the JSON and grid; None writes nothing.

    Returns:
        The table.
    """
    nfes = tuple(nfes) if nfes else ((5,) if quick else SKIP_NFES)
    solvers = tuple(solvers) if solvers else (("euler", "dpmpp_2m") if quick else SKIP_SOLVERS)
    models = tuple(models) if models else SKIP_MODELS
    opts = dict(n=200, tune_n=100, rmse_n=8, evaluations=3) if quick else {}
    rows = []
    for m in models:
        rows += skip_rows(m, solvers, nfes, **opts)
    table = format_table(rows)
    if out is not None:
        for p in write(rows, Path(out)):
            print(f"wrote {p}", flush=True)
    return table
