"""`diffsolve bench`: every solver at every NFE on the same noise, measured against a float64 reference solve.

`run_bench(model, solvers, nfe, ...)` is the whole benchmark as a function (the command line is a thin layer over
it): it returns the report as a dict and, with `out=`, writes bench.json, bench.csv and PNG plots there (each file
written atomically). Its options are the fields of `BenchSettings`, given either as one object
(`settings=BenchSettings(...)`) or as keywords.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from diffsolve.analysis.straightness import straightness
from diffsolve.bench.assembly import assemble
from diffsolve.bench.cells import run_chunk
from diffsolve.bench.models import BenchModel, resolve_model
from diffsolve.bench.planning import Job, prepare
from diffsolve.bench.report import format_report, write_outputs
from diffsolve.bench.settings import BenchSettings, OutputError, check_settings, progress_mode
from diffsolve.distributed import Dist, chunk_bounds, sample_seeds
from diffsolve.progress import Progress
from diffsolve.errors import DiffsolveError, InvalidArgument, unknown_name
from diffsolve.noise import draw_start

__all__ = ["BenchSettings", "OutputError", "STRAIGHTNESS_SAMPLES", "STRAIGHTNESS_STEPS", "run_bench"]


def run_bench(model: Any = "gmm", solvers: Sequence[str] | str | None = None, nfe: Sequence[int] | None = None,
              settings: BenchSettings | None = None, **options: Any) -> dict:
    """Benchmark solvers x NFE on one model and the same noise; returns the report (see bench.json).

    `options` are `BenchSettings` fields and override those of `settings`.

    Args:
        model: A bench model name, a 'module:attr' path, a `BenchModel` or a model object (see `resolve_model`).
        solvers: Solver names or one comma-separated string; "all" takes every deterministic solver; None takes
            the model's defaults.
        nfe: NFE budgets; None takes the model's defaults.
        settings: How to run; None takes `BenchSettings()`.
        **options: `BenchSettings` fields overriding those of `settings`.

    Returns:
        The report: settings, one result row per solver x NFE, peers, fitted orders.

    Raises:
        InvalidArgument: An unknown option, a settings object of the wrong type, or an invalid value.
        OutputError: The bench finished but writing its files to `out` failed (the error holds the report).
    """
    fields = {f.name for f in dataclasses.fields(BenchSettings)}
    for key in options:
        if key not in fields:
            raise unknown_name("run_bench option", key, sorted(fields))
    if settings is not None and not isinstance(settings, BenchSettings):
        raise InvalidArgument(f"settings must be a BenchSettings, got {type(settings).__name__}")
    cfg = dataclasses.replace(settings if settings is not None else BenchSettings(), **options)
    check_settings(cfg)
    entry, net = resolve_model(model)
    dist = Dist.from_env(cfg.device)
    threads = entry.threads if cfg.threads is None else cfg.threads
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(entry, net, dist, solvers, nfe, cfg)
    finally:
        torch.set_num_threads(before)
        dist.close()


def _run(entry: BenchModel, net: Any, dist: Dist, solvers, nfe, cfg: BenchSettings) -> dict:
    wall_start = time.perf_counter()
    job = prepare(entry, net, dist, solvers, nfe, cfg)
    seeds = sample_seeds(cfg.seed, job.batch)
    bounds = chunk_bounds(job.batch, job.chunk)
    mine = dist.my_chunks(len(bounds))
    n_work = len(mine) * (len(job.ref_times) + len(job.ok) + len(job.peers) * len(job.nfes))
    mode = progress_mode(cfg.progress) if dist.is_main else "none"
    if cfg.verbose and dist.is_main:
        # what runs, first: the full header (with the reference's timings) comes with the tables at the end
        print(f"diffsolve bench: model={entry.name}, {job.batch} samples, {len(job.ok)} solver x NFE cells, "
              f"reference {job.reference.method} rtol={job.reference.rtol:g}; progress on stderr", flush=True)
    bar = Progress(f"bench {entry.name}", n_work, unit="cells", bar=mode == "bar", enabled=mode != "none",
                   leave=False)
    with bar:       # closed (its heartbeat stopped) also when a cell raises
        results = {c: run_chunk(job, seeds[bounds[c][0]:bounds[c][1]], bar,
                                f"chunk {c + 1}/{len(bounds)}" if len(bounds) > 1 else "") for c in mine}
    chunks = dist.gather_chunks(results)

    report = assemble(job, chunks)
    if cfg.straightness and dist.is_main:
        report["straightness"] = _straightness(job, seeds)
    report["seconds_total"] = time.perf_counter() - wall_start
    if dist.is_main:
        failure = None
        if cfg.out is not None:
            try:
                report["files"] = write_outputs(report, Path(cfg.out), chunks, plots=cfg.plots, nfes=job.nfes,
                                                names=job.names)
            except Exception as e:  # noqa: BLE001 - the finished table is printed whatever broke the files
                failure = e
        if cfg.verbose:
            print(format_report(report), flush=True)
        if failure is not None:
            raise OutputError(f"the bench finished (table above) but writing its files to --out {str(cfg.out)!r} "
                              f"failed: {type(failure).__name__}: {failure}", report)
    return report


STRAIGHTNESS_SAMPLES, STRAIGHTNESS_STEPS = 128, 32


def _straightness(job: Job, seeds: list[int]) -> dict:
    """Straightness of the model's trajectories (Liu et al. 2023) on the bench's first samples: how few steps it
    can take. Heun on the bench grid; the slope on each interval is the chord of the solved trajectory."""
    n = min(len(seeds), STRAIGHTNESS_SAMPLES)
    t0 = time.perf_counter()
    noise = draw_start((n, *job.field.sample_shape), source=job.field.source, seed=seeds[:n], dtype=torch.float64,
                       device=job.device)
    grid = job.cfg.grid if job.cfg.grid is not None else None
    try:
        r = straightness(job.field, noise, steps=STRAIGHTNESS_STEPS, solver="heun", grid=grid,
                         grid_options=job.cfg.grid_options)
    except DiffsolveError as e:
        return {"status": f"failed: {e}"}
    return {"status": "ok", **r.as_dict(), "samples": n, "steps": STRAIGHTNESS_STEPS, "solver": "heun",
            "seconds": time.perf_counter() - t0}

