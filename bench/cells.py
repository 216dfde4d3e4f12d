"""The bench's work, chunk by chunk (chunks are the unit of sharding): the reference solves, every solver at every
NFE and the peers on one chunk's noise, reported through diffsolve.progress (a bar, or a line per finished cell and
about every 10 s, also during a long reference solve)."""
from __future__ import annotations

import time
from typing import Any

import torch

from diffsolve.bench.planning import Job
from diffsolve.bench.timing import sync
from diffsolve.errors import BudgetExceeded
from diffsolve.evaluation import metrics
from diffsolve.evaluation.reference import solve_reference
from diffsolve.noise import draw_start


def cell_line(name: str, n: int, item: dict, where: str) -> str:
    """One progress line for a finished solver cell.

    Args:
        name: The solver's name.
        n: The NFE requested for the cell.
        item: The cell's result: `budget` when the budget was exceeded, else `nfe`, `wall` and (for ODE
            solvers) `rmse` per sample.
        where: Where the chunk ran (shard or device), appended in brackets; empty adds nothing.

    Returns:
        The line, without a newline.
    """
    if "budget" in item:
        what = "budget exceeded"
    elif "rmse" in item:
        what = f"NFE used {item['nfe']}, endpoint RMSE {float(item['rmse'].mean()):.3e}"
    else:
        what = f"NFE used {item['nfe']}, stochastic (scored by distribution metrics)"
    return f"{name} NFE {n}: {what}, {item['wall']:.2f} s" + (f" [{where}]" if where else "")


def run_chunk(job: Job, seeds: list[int], bar, where: str = "") -> dict:
    """Run one chunk: the reference solves, every solver at every NFE and the peers, on the chunk's noise.

    Args:
        job: The planned bench (settings, samplers, peers, reference times).
        seeds: One seed per sample of the chunk; they draw the initial and the step noise.
        bar: A `diffsolve.progress.Progress` that gets a note and an update per cell.
        where: Where the chunk runs, appended to progress lines; empty adds nothing.

    Returns:
        The chunk's results: `refs` by start time, `runs` by (solver, NFE), `peers` by (peer, NFE).
    """
    cfg, dev = job.cfg, job.device
    noise = draw_start((len(seeds), *job.field.sample_shape), source=job.field.source, seed=seeds, dtype=torch.float32)
    chunk: dict[str, Any] = {"refs": {}, "runs": {}, "peers": {}}
    refs = {}
    for t0, times in job.ref_times.items():
        bar.note("reference")
        ref = solve_reference(job.net, noise.to(dev), times, settings=job.reference, cache=cfg.cache,
                              cache_dir=cfg.cache_dir, seeds=seeds)
        refs[t0] = ref
        chunk["refs"][t0] = {"times": ref.times, "gap_rmse": ref.gap_rmse, "gap_maxabs": ref.gap_maxabs,
                             "nfe": ref.nfe, "seconds": ref.seconds, "cached": ref.cached, "frame": ref.frame,
                             "endpoint": ref.endpoint.cpu()}
        bar.update(1, f"reference from t={t0:.4g}: {len(seeds)} samples, {ref.nfe} NFE, {ref.seconds:.2f} s"
                      + (" (cached)" if ref.cached else "") + (f" [{where}]" if where else ""))
    x_in = noise.to(device=dev, dtype=job.dtype)
    for r in job.ok:
        name, n, kind = r["solver"], r["nfe_requested"], r["kind"]
        bar.note(f"{name} nfe={n}")
        s = job.samplers[name]
        traj = job.trajectory and kind == "ode"
        sync(dev)
        t_start = time.perf_counter()
        try:
            # Stochastic solvers draw their step noise from the same per-sample seeds as the initial noise.
            res = s.run(nfe=n, noise=x_in, seed=seeds if kind == "sde" else None, return_trajectory=traj)
        except BudgetExceeded as e:
            item = {"budget": str(e), "wall": time.perf_counter() - t_start}
            chunk["runs"][(name, n)] = item
            bar.update(1, cell_line(name, n, item, where))
            continue
        sync(dev)
        wall = time.perf_counter() - t_start
        t_plan = r["t"]
        ref = refs[float(t_plan[0])]
        item = {"samples": res.samples.detach().cpu(), "wall": wall, "nfe": res.nfe}
        if kind != "sde":
            # Adaptive solvers step at their own times: only the endpoint is compared.
            end_ref = ref.at(t_plan[-1:])[0].to(res.samples.device)
            item["rmse"] = metrics.rmse_per_sample(res.samples, end_ref).cpu()
            item["maxabs"] = metrics.maxabs_per_sample(res.samples, end_ref).cpu()
        if traj:
            item["traj"] = metrics.trajectory_rmse(res.trajectory, ref.at(res.t).to(res.trajectory.device)).cpu()
        chunk["runs"][(name, n)] = item
        bar.update(1, cell_line(name, n, item, where))
    for peer in job.peers:
        for n in job.nfes:
            bar.note(f"{peer.name} nfe={n}")
            t_start = time.perf_counter()
            try:
                xs = peer.run(x_in, n)
                sync(dev)
                end_ref = refs[job.main_t0].states[-1]
                chunk["peers"][(peer.name, n)] = {
                    "wall": time.perf_counter() - t_start,
                    "rmse": metrics.rmse_per_sample(xs, end_ref.to(xs.device)).cpu(),
                    "samples": xs.detach().cpu()}
                line = f"{peer.name} NFE {n}: endpoint RMSE " \
                       f"{float(chunk['peers'][(peer.name, n)]['rmse'].mean()):.3e}"
            except Exception as e:  # noqa: BLE001 - a failing peer is reported in its row, not raised
                chunk["peers"][(peer.name, n)] = {"error": f"{type(e).__name__}: {e}"}
                line = f"{peer.name} NFE {n}: failed"
            bar.update(1, f"{line}, {time.perf_counter() - t_start:.2f} s" + (f" [{where}]" if where else ""))
    return chunk

