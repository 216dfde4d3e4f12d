"""The bench report (what bench.json holds), assembled from every chunk's results in chunk order."""
from __future__ import annotations

import copy
from typing import Any

import torch

from diffsolve.bench.models import data_range_of
from diffsolve.bench.planning import Job, solver_kind
from diffsolve.distributed import sample_seeds
from diffsolve.evaluation import metrics
from diffsolve.field import model_identity
from diffsolve.noise import draw_noise

# The numbers of a cell that ran over its NFE budget in some chunk: null, never half an answer.
_BUDGET_NULLS = ("nfe", "rmse_mean", "rmse_median", "rmse_p90", "rmse_max", "maxabs_mean", "maxabs_max",
                 "sw1_reference", "wall_s")
_ENDPOINT_NULLS = ("rmse_mean", "rmse_median", "rmse_p90", "rmse_max", "maxabs_mean", "maxabs_max")


def assemble(job: Job, chunks: list[dict]) -> dict:
    """The report from every chunk's results, in chunk order.

    Args:
        job: The planned bench.
        chunks: Every chunk's results from `run_chunk`, in chunk order.

    Returns:
        The report (see bench.json): header, reference summary, one result row per solver x NFE, peers, orders.
    """
    ref_info, ref_end = _reference_summary(job, chunks)
    problem, data = _exact_metrics(job, ref_info, ref_end)
    ref_sw = metrics.SlicedWasserstein(ref_end, seed=job.cfg.seed)
    rows = [_result_row(job, r, chunks, ref_sw, problem, data) for r in job.runs]
    return {
        **_header(job),
        "reference": ref_info,
        "results": rows,
        "orders": _orders(job.names, rows, floor=10.0 * ref_info["gap_endpoint_rmse"]),
        "peers": _peer_rows(job, chunks, rows),
    }


def _reference_summary(job: Job, chunks: list[dict]) -> tuple[dict, torch.Tensor]:
    """The reference's settings, cost and worst gap over chunks (at the endpoint and along the trajectory), and
    its endpoint over all samples."""
    settings, main_t0 = job.reference, job.main_t0
    ref_info = {"method": settings.method, "rtol": settings.rtol, "atol": settings.atol,
                "check_rtol": settings.rtol * settings.check_factor,
                "check_atol": settings.atol * settings.check_factor,
                "frame": chunks[0]["refs"][main_t0]["frame"],
                "nfe_per_chunk": [ch["refs"][main_t0]["nfe"] for ch in chunks],
                "seconds": sum(ch["refs"][t0]["seconds"] for ch in chunks for t0 in ch["refs"]),
                "cached": all(ch["refs"][t0]["cached"] for ch in chunks for t0 in ch["refs"]),
                "points": int(sum(t.numel() for t in job.ref_times.values()))}
    gap_r = torch.stack([ch["refs"][main_t0]["gap_rmse"] for ch in chunks]).amax(0)
    gap_m = torch.stack([ch["refs"][main_t0]["gap_maxabs"] for ch in chunks]).amax(0)
    ref_info.update(gap_endpoint_rmse=float(gap_r[-1]), gap_endpoint_maxabs=float(gap_m[-1]),
                    gap_trajectory_rmse=float(gap_r.max()), gap_trajectory_maxabs=float(gap_m.max()))
    return ref_info, torch.cat([ch["refs"][main_t0]["endpoint"] for ch in chunks])


def _exact_metrics(job: Job, ref_info: dict, ref_end: torch.Tensor) -> tuple[Any, Any]:
    """Exact-problem metrics of the reference (added to `ref_info`) on a CPU copy of the problem (its
    generator-driven sampling is CPU-only); the problem and its data samples, or (None, None) for a network."""
    net, seed, main_t0 = job.net, job.cfg.seed, job.main_t0
    problem = copy.deepcopy(net).cpu() if isinstance(net, torch.nn.Module) and hasattr(net, "sample_data") else None
    data = None
    if problem is not None:
        g = torch.Generator().manual_seed(int(seed) + 12345)
        data = metrics.SlicedWasserstein(problem.sample_data(job.entry.data_samples, generator=g).cpu(), seed=seed)
        ref_info.update(metrics.gaussian_mixture_metrics(problem, ref_end, data, seed=seed))
    if problem is not None and callable(getattr(problem, "ode_solution", None)) \
            and float(job.ref_times[main_t0][-1]) == 0.0:
        # The exact answer for the Gaussian: transport to t_min, then the final data prediction there.
        field, B = job.field, job.batch
        sch = field.schedule
        t_min = float(sch.t_min)
        noise_all = draw_noise((B, *field.sample_shape), seed=sample_seeds(seed, B), dtype=torch.float64)
        x0 = noise_all * sch.prior_std(main_t0)
        ex = problem.denoise(problem.ode_solution(x0, main_t0, t_min), t_min)
        ref_info["exact_endpoint_maxabs"] = float((ref_end.to(torch.float64) - ex).abs().max())
    return problem, data


def _result_row(job: Job, r: dict, chunks: list[dict], ref_sw: Any, problem: Any, data: Any) -> dict:
    """One solver x NFE row of the report: its errors over all chunks, or why it did not run."""
    row = {k: v for k, v in r.items() if k != "t"}
    if r["status"] != "ok":
        return row
    key = (r["solver"], r["nfe_requested"])
    items = [ch["runs"][key] for ch in chunks]
    over = [it["budget"] for it in items if "budget" in it]
    if over:
        # One chunk over budget marks the whole cell.
        row.update(status="budget", why=over[0], **dict.fromkeys(_BUDGET_NULLS))
        return row
    row["wall_s"] = sum(it["wall"] for it in items)
    if r["kind"] != "ode":
        row["nfe"] = max(it["nfe"] for it in items)      # what it used (the most over chunks)
    if r["kind"] == "sde":
        row.update(dict.fromkeys(_ENDPOINT_NULLS))
    else:
        r_s = metrics.summarize(torch.cat([it["rmse"] for it in items]))
        m_s = metrics.summarize(torch.cat([it["maxabs"] for it in items]))
        row.update(rmse_mean=r_s["mean"], rmse_median=r_s["median"], rmse_p90=r_s["p90"],
                   rmse_max=r_s["max"], maxabs_mean=m_s["mean"], maxabs_max=m_s["max"])
    if job.trajectory and r["kind"] == "ode":
        per_point = torch.cat([it["traj"] for it in items], dim=1).mean(dim=1)       # [P, B] -> [P]
        row["traj_rmse_max"] = float(per_point.max())
        row["traj_rmse_mean"] = float(per_point.mean())
    samples = torch.cat([it["samples"] for it in items])
    row["sw1_reference"] = ref_sw(samples)
    if problem is not None:
        row.update(metrics.gaussian_mixture_metrics(problem, samples, data, seed=job.cfg.seed))
    return row


def _orders(names: list[str], rows: list[dict], floor: float) -> dict:
    """Each solver's order of convergence in NFE (None where there is none to measure)."""
    orders = {}
    for name in names:
        # An order of convergence in NFE exists for fixed-grid ODE solvers only: a stochastic sampler has no
        # single right endpoint, and an adaptive solver's error follows its tolerance, not the budget.
        kinds = {r["kind"] for r in rows if r["solver"] == name and "kind" in r}
        if kinds and kinds != {"ode"}:
            orders[name] = None
            continue
        # Several budgets can map to the same step count: one point per NFE actually used.
        pts = {r["nfe"]: r["rmse_mean"] for r in rows if r["solver"] == name and r["status"] == "ok"}
        orders[name] = metrics.convergence_order(list(pts), list(pts.values()), last=3, floor=floor)
    return orders


def _peer_rows(job: Job, chunks: list[dict], rows: list[dict]) -> list[dict]:
    """Each peer at each NFE: its endpoint RMSE, and ours over theirs at the same NFE."""
    peer_rows = []
    for peer in job.peers:
        for n in job.nfes:
            items = [ch["peers"].get((peer.name, n)) for ch in chunks]
            prow = {"peer": peer.name, "ours": peer.ours, "nfe": n}
            errs = [it["error"] for it in items if it is None or "error" in it] if any(
                it is None or "error" in it for it in items) else []
            if errs:
                prow["status"] = f"failed: {errs[0]}"
            else:
                rmse = torch.cat([it["rmse"] for it in items])
                prow.update(status="ok", rmse_mean=metrics.summarize(rmse)["mean"],
                            wall_s=sum(it["wall"] for it in items))
                mine = [r for r in rows if r["solver"] == peer.ours and r["nfe_requested"] == n and r["status"] == "ok"]
                if mine and mine[0].get("rmse_mean") is not None and prow["rmse_mean"] > 0:
                    prow["ratio_ours_to_theirs"] = mine[0]["rmse_mean"] / prow["rmse_mean"]
            peer_rows.append(prow)
    return peer_rows


def _header(job: Job) -> dict:
    """The report's model and config sections."""
    entry, net, field, grid = job.entry, job.net, job.field, job.cfg.grid
    sch = field.schedule
    first = job.samplers[job.ok[0]["solver"]]
    return {
        "model": {"name": entry.name, "summary": entry.summary, "identity": model_identity(net) or type(net).__name__,
                  "prediction": field.prediction, "schedule": sch.identity() if sch is not None else None,
                  "sample_shape": list(field.sample_shape), "kind": entry.kind,
                  "data_range": data_range_of(net)},
        "config": {"solvers": job.names,
                   "kinds": {n: solver_kind(s.solver) for n, s in job.samplers.items() if n in job.names},
                   "nfe": job.nfes, "batch_size": job.batch, "chunk_size": job.chunk, "seed": job.cfg.seed,
                   "device": str(job.device), "dtype": str(job.dtype).replace("torch.", ""),
                   "grid": grid if isinstance(grid, str) or grid is None else "custom",
                   "grid_used": first.grid if isinstance(first.grid, str) else "custom",
                   "trajectory": job.trajectory, "processes": job.dist.world},
    }
