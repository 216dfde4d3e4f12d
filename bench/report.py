"""The bench report as text: plain-text tables (what the command line prints), bench.json and bench.csv."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

from diffsolve.bench.plots import write_plots
from diffsolve.files import atomic_write_bytes


def _fmt(v: Any, width: int = 9) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return (f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e3) else f"{v:.4f}").rjust(width)
    return str(v).rjust(width)


def format_report(rep: dict) -> str:
    """The report as plain-text tables (what the command line prints).

    Args:
        rep: The bench report (see bench.json).

    Returns:
        The tables: header, one per solver kind, peers and footer, lines joined by newlines.
    """
    lines = _header_lines(rep)
    lines += _solver_tables(rep)
    lines += _peer_lines(rep)
    lines += _footer_lines(rep)
    return "\n".join(lines)


def _header_lines(rep: dict) -> list[str]:
    """The model, the run's settings, the reference and its checks, and the straightness diagnostic."""
    cfg, ref, m = rep["config"], rep["reference"], rep["model"]
    lines = [f"diffsolve bench: model={m['name']} ({m['summary']})",
             f"  {cfg['batch_size']} samples (seed {cfg['seed']}), {cfg['dtype']} on {cfg['device']}, "
             f"grid={cfg['grid_used']}, {cfg['processes']} process(es)",
             f"  reference: {ref['method']} rtol={ref['rtol']:g} atol={ref['atol']:g} in the {ref['frame']} frame, "
             f"{ref['points']} time points, {ref['seconds']:.1f} s{' (cached)' if ref['cached'] else ''}",
             f"  reference check: gap to a rtol={ref['check_rtol']:g} solve: endpoint RMSE "
             f"{ref['gap_endpoint_rmse']:.1e} (max abs {ref['gap_endpoint_maxabs']:.1e}), "
             f"along the trajectory max RMSE {ref['gap_trajectory_rmse']:.1e}"]
    if "exact_endpoint_maxabs" in ref:
        lines.append(f"  reference vs exact solution: max abs {ref['exact_endpoint_maxabs']:.1e}")
    st = rep.get("straightness")
    if st is not None and st.get("status") == "ok":
        lines.append(f"  straightness (Liu et al. 2023; {st['samples']} samples, {st['solver']} {st['steps']} steps): "
                     f"S = {st['straightness']:.4g} ({st['relative_straightness']:.3g} of E|X1 - X0|^2); "
                     f"one Euler step misses the endpoint by RMS {st['one_step_gap']:.3g} "
                     f"({st['relative_one_step_gap']:.3g} relative)")
    elif st is not None:
        lines.append(f"  straightness: {st['status']}")
    return lines


def _nfe_table(rep: dict, title: str, key: str, solvers: list[str], extra: Callable[[str], str] | None = None,
               extra_head: str = "") -> list[str]:
    """One table: a row per solver, a column per NFE, the row's `key`; '*' where fewer evaluations were used."""
    if not solvers:
        return []
    nfes = rep["config"]["nfe"]
    by = {(r["solver"], r["nfe_requested"]): r for r in rep["results"]}
    w = max([len(s) for s in rep["config"]["solvers"]] + [8])
    lines = ["", title, "solver".ljust(w) + "".join(f"NFE {n}".rjust(11) for n in nfes) + extra_head]
    for s in solvers:
        cells = []
        for n in nfes:
            r = by.get((s, n))
            if r is not None and r["status"] == "budget":
                cells.append("budget".rjust(10) + " ")
            elif r is None or r["status"] != "ok" or r.get(key) is None:
                cells.append("-".rjust(11))
            else:
                mark = "*" if r.get("kind", "ode") == "ode" and r["nfe"] < n else " "
                cells.append(_fmt(r.get(key), 10) + mark)
        lines.append(s.ljust(w) + "".join(cells) + (extra(s) if extra else ""))
    return lines


def _solver_tables(rep: dict) -> list[str]:
    """Errors, evaluations used, distribution metrics and wall time, each a solver x NFE table."""
    cfg, ref = rep["config"], rep["reference"]
    every = cfg["solvers"]
    kinds = cfg.get("kinds", {})

    def order(s: str) -> str:
        o = rep["orders"].get(s)
        return ("   " + (f"{o:.2f}" if o is not None else "-")).rjust(8)

    # Stochastic samplers have no single right endpoint: they are left out of the endpoint tables and scored by
    # distribution metrics below. Adaptive solvers are compared at the endpoint only (they step at their own times).
    ode = [s for s in every if kinds.get(s, "ode") != "sde"]
    fixed = [s for s in every if kinds.get(s, "ode") == "ode"]
    sde = [s for s in every if kinds.get(s) == "sde"]
    adaptive = [s for s in every if kinds.get(s) == "adaptive" or (kinds.get(s) == "sde" and any(
        r["solver"] == s and r.get("steps") is None and r["status"] == "ok" for r in rep["results"]))]
    lines = _nfe_table(rep, "endpoint RMSE vs reference (mean over samples)", "rmse_mean", ode, order, "   order")
    lines += _nfe_table(rep, "endpoint max abs error (max over samples)", "maxabs_max", ode)
    if cfg["trajectory"]:
        lines += _nfe_table(rep, "trajectory RMSE at the solver's grid points (max over points of the mean over "
                                 "samples)", "traj_rmse_max", fixed)
    if adaptive:
        lines += _nfe_table(rep, "model evaluations used by the adaptive solvers (the column's NFE is their budget; "
                                 "budget = ran out of it)", "nfe", adaptive)
    if sde:
        lines += _nfe_table(rep, "sliced W1 to the reference solve's samples (stochastic samplers are scored by "
                                 "distribution; ODE solvers share the reference's noise, so theirs tends to 0)",
                            "sw1_reference", every)
    if "sliced_w1" in ref:
        lines += _nfe_table(rep, f"sliced W1 to exact data samples (reference solve: {ref['sliced_w1']:.4f})",
                            "sliced_w1", every)
    if "loglik_mean" in ref:
        lines += _nfe_table(rep, f"mean exact log-likelihood of the samples (reference solve: "
                                 f"{ref['loglik_mean']:.4f})", "loglik_mean", every)
    lines += _nfe_table(rep, "wall time, seconds (all samples)", "wall_s", every)
    return lines


def _peer_lines(rep: dict) -> list[str]:
    """Other libraries' samplers on the same model and noise, and ours over theirs at equal NFE."""
    if not rep["peers"]:
        return []
    nfes = rep["config"]["nfe"]
    lines = ["", "peers on the same model and noise: their endpoint RMSE vs reference (ours / theirs at equal NFE)"]
    pnames = list(dict.fromkeys((p["peer"], p["ours"]) for p in rep["peers"]))
    pby = {(p["peer"], p["nfe"]): p for p in rep["peers"]}
    pw = max(len(f"{a} vs {b}") for a, b in pnames)
    lines.append("peer".ljust(pw) + "".join(f"NFE {n}".rjust(18) for n in nfes))
    for peer, ours in pnames:
        cells = []
        for n in nfes:
            p = pby.get((peer, n))
            if p is None or p["status"] != "ok":
                cells.append("failed".rjust(18))
                continue
            ratio = p.get("ratio_ours_to_theirs")
            cells.append((f"{p['rmse_mean']:.2e}" + (f" ({ratio:.2f})" if ratio is not None else "")).rjust(18))
        lines.append(f"{peer} vs {ours}".ljust(pw) + "".join(cells))
    for p in rep["peers"]:
        if p["status"] != "ok":
            lines.append(f"  {p['peer']} NFE {p['nfe']}: {p['status']}")
    return lines


def _footer_lines(rep: dict) -> list[str]:
    """The legend, the cells that did not run and why, the files written and the total time."""
    lines = ["", "* = the solver's step structure uses fewer model evaluations than the column's NFE; "
                 "order = slope of log error vs log NFE over the last 3 points above 10x the reference gap "
                 "(fixed-grid ODE solvers only)"]
    grouped: dict[tuple[str, str], list[int]] = {}
    for r in rep["results"]:
        if r["status"] == "ok":
            continue
        status = r["status"] if r["status"] != "budget" else \
            "budget exceeded (raise the NFE, or loosen rtol/atol): " + r.get("why", "").split(" at t=")[0]
        grouped.setdefault((r["solver"], status), []).append(r["nfe_requested"])
    for (solver, status), ns in grouped.items():
        lines.append(f"  {solver} at NFE {', '.join(map(str, ns))}: {status}")
    if rep.get("files"):
        lines.append("wrote: " + ", ".join(rep["files"]))
    lines.append(f"total {rep.get('seconds_total', 0.0):.1f} s")
    return lines


CSV_FIELDS = ("solver", "kind", "nfe_requested", "nfe", "steps", "status", "rmse_mean", "rmse_median", "rmse_p90",
              "rmse_max", "maxabs_mean", "maxabs_max", "traj_rmse_max", "traj_rmse_mean", "sw1_reference", "sliced_w1",
              "loglik_mean", "wall_s")


def write_outputs(rep: dict, out: Path, chunks: list[dict], *, plots: bool, nfes: list[int],
                  names: list[str]) -> list[str]:
    """bench.json, bench.csv and (with `plots`) the PNG plots in `out`, each written atomically; the paths written.

    Args:
        rep: The bench report.
        out: Folder to write to (created if missing).
        chunks: The chunks' results (samples for the plots).
        plots: Also write the plots (needs matplotlib).
        nfes: The NFE budgets.
        names: The solver names.

    Returns:
        The paths written.

    Raises:
        OSError: A file cannot be written.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_bytes(out / "bench.json", json.dumps(rep, indent=2, sort_keys=False, default=str).encode())
    written.append(str(out / "bench.json"))
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in rep["results"]:
        wr.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_FIELDS})
    atomic_write_bytes(out / "bench.csv", buf.getvalue().encode())
    written.append(str(out / "bench.csv"))
    if plots:
        written += write_plots(rep, out, chunks, nfes, names)
    return written
