"""What a bench run resolves before any work (`prepare` -> `Job`): the solvers, the model on its device and in
its dtype, every solver's plan at every NFE (infeasible pairs recorded, not run), the reference time points and
the peers."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from diffsolve.bench.models import DEFAULT_SOLVERS, BenchModel
from diffsolve.bench.peers import PEER_PROVIDERS, PeerRun
from diffsolve.bench.settings import BenchSettings, model_dtype, resolve_dtype
from diffsolve.distributed import Dist
from diffsolve.errors import InvalidArgument, unknown_name
from diffsolve.evaluation.reference import ReferenceSettings
from diffsolve.field import as_field
from diffsolve.sampler import Sampler
from diffsolve.solvers import available_solvers


def resolve_solvers(solvers: Sequence[str] | str | None, entry: BenchModel) -> list[str]:
    """The solver names a bench runs, checked against the registry, duplicates dropped.

    Args:
        solvers: Names, or one comma-separated string; ["all"] takes every deterministic solver; None takes the
            model's defaults (or `DEFAULT_SOLVERS`), leaving out names not registered.
        entry: The bench model whose defaults apply.

    Returns:
        The names in the order given.

    Raises:
        InvalidArgument: A name is not a registered solver, or the list is empty.
    """
    known = available_solvers()
    if solvers is None:
        wanted = entry.solvers if entry.solvers is not None else DEFAULT_SOLVERS
        return [s for s in wanted if s in known]
    if isinstance(solvers, str):
        solvers = [s.strip() for s in solvers.split(",") if s.strip()]
    if list(solvers) == ["all"]:
        return available_solvers(deterministic=True)
    for s in solvers:
        if s not in known:
            raise unknown_name("solvers", s, known + ["all"])
    if not solvers:
        raise InvalidArgument("solvers: give at least one solver name, or 'all'")
    return list(dict.fromkeys(solvers))



@dataclass
class Job:
    """Everything the run resolved before any work: the model on its device, the solvers' plans, the references.

    Attributes:
        entry: The bench model.
        net: The built model.
        field: Its vector field.
        dist: The process group (one process when not distributed).
        cfg: The bench settings.
        names: The solver names.
        nfes: The NFE budgets, sorted.
        batch: Total number of samples.
        chunk: Samples per chunk.
        reference: How references are solved.
        trajectory: Whether errors are measured at every grid point.
        device: Device the solvers run on.
        dtype: Dtype the solvers run in.
        samplers: One Sampler per solver name.
        runs: One row per solver x NFE, status 'ok' or why not.
        ok: The rows that run.
        ref_times: Start time -> every time point a reference state is needed at.
        main_t0: The latest start time (the peers' reference).
        peers: The peer samplers.
    """

    entry: BenchModel
    net: Any
    field: Any
    dist: Dist
    cfg: BenchSettings
    names: list[str]
    nfes: list[int]
    batch: int
    chunk: int
    reference: ReferenceSettings
    trajectory: bool
    device: torch.device
    dtype: torch.dtype
    samplers: dict[str, Sampler]
    runs: list[dict]                      # one row per solver x NFE, status 'ok' or why not
    ok: list[dict]
    ref_times: dict[float, torch.Tensor]  # start time -> every time point a reference state is needed at
    main_t0: float
    peers: list[PeerRun]


def _on_device(net: Any, dev: torch.device, run_dtype: torch.dtype) -> Any:
    """The network on the bench's device and in its dtype: a copy when anything moves (never the caller's model
    converted in place). Analytic problems keep their float64 buffers (they compute in the dtype of x), so their
    exact metrics stay exact."""
    if not isinstance(net, torch.nn.Module):
        return net
    has_params = any(True for _ in net.parameters())
    moves = [t for t in list(net.parameters()) + list(net.buffers())
             if t.device != dev or (has_params and t.is_floating_point() and t.dtype != run_dtype)]
    if not moves:
        return net
    net = copy.deepcopy(net)
    return net.to(device=dev, dtype=run_dtype) if has_params else net.to(device=dev)


def _plan_runs(field: Any, names: list[str], nfes: list[int], solvers: Any,
               cfg: BenchSettings) -> tuple[dict[str, Sampler], list[dict]]:
    """Every solver x NFE planned on the host: (one Sampler per solver that can drive the field, one row per
    solver x NFE with status 'ok' or why not). Infeasible pairs are recorded, not run."""
    samplers: dict[str, Sampler] = {}
    runs: list[dict] = []
    for name in names:
        try:
            samplers[name] = Sampler(field, name, grid=cfg.grid, grid_options=cfg.grid_options, progress=False)
        except InvalidArgument as e:
            if solvers is None:
                continue        # the default set keeps only solvers that can drive this model
            for n in nfes:
                runs.append({"solver": name, "nfe_requested": n, "status": f"n/a: {e}"})
            continue
        solver = samplers[name].solver
        # ode: a fixed grid, scored against the reference along it; adaptive: its own times, scored at the
        # endpoint only, its NFE what it used; sde: stochastic, scored by distribution metrics only.
        kind = solver_kind(solver)
        for n in nfes:
            row = {"solver": name, "nfe_requested": n, "kind": kind}
            try:
                plan = samplers[name].plan(nfe=n)
            except InvalidArgument as e:
                row["status"] = f"skipped: {e}"
            else:
                fixed = not solver.adaptive
                row.update(status="ok", nfe=plan.nfe * field.evals_per_call if fixed else None,
                           steps=plan.steps if fixed else None, t=plan.t)
            runs.append(row)
    return samplers, runs


def _peer_runs(net: Any, field: Any, names: list[str], cfg: BenchSettings, dist: Dist) -> list[PeerRun]:
    """The peers of the solvers in this run (the point is the ratio at equal NFE); a broken optional peer is
    reported in verbose mode and never stops the benchmark."""
    peer_list: list[PeerRun] = []
    if cfg.peers:
        for provider in PEER_PROVIDERS:
            try:
                peer_list += [pr for pr in provider(net, field) if pr.ours in names]
            except Exception as e:  # noqa: BLE001 - a broken optional peer never stops the benchmark
                if cfg.verbose and dist.is_main:
                    print(f"peer provider {getattr(provider, '__name__', provider)} failed: {e}")
    return peer_list


def prepare(entry: BenchModel, net: Any, dist: Dist, solvers, nfe, cfg: BenchSettings) -> Job:
    """Resolve a bench run before any work: solvers, the model on its device and in its dtype, every solver's plan
    at every NFE, the reference time points and the peers.

    Args:
        entry: the bench model.
        net: the built model (moved or converted on a copy, never in place).
        dist: the process group (one process when not distributed).
        solvers: solver names as `resolve_solvers` takes them; None is the model's defaults.
        nfe: NFE budgets; None is the model's own.
        cfg: the bench settings.

    Returns:
        The Job: everything the run resolved, with one row per solver x NFE ('ok' or why not).

    Raises:
        InvalidArgument: a solver or NFE is invalid, the model does not declare its sample shape, or no solver can
            run at the requested NFE values.
    """
    names = resolve_solvers(solvers, entry)
    nfes = sorted({int(n) for n in (entry.nfe if nfe is None else nfe)})
    if not nfes or nfes[0] < 1:
        raise InvalidArgument(f"nfe={nfe!r}: give positive integers")
    B = int(entry.batch_size if cfg.batch_size is None else cfg.batch_size)
    csize = int(min(entry.chunk_size, B) if cfg.chunk_size is None else cfg.chunk_size)
    traj = entry.trajectory if cfg.trajectory is None else bool(cfg.trajectory)
    dev = dist.device(cfg.device) if cfg.device is not None else torch.device("cpu")
    run_dtype = resolve_dtype(cfg.dtype)
    if run_dtype is None:
        run_dtype = entry.dtype if entry.dtype is not None else model_dtype(net)
    net = _on_device(net, dev, run_dtype)
    field = as_field(net)
    if field.sample_shape is None:
        raise InvalidArgument(f"model {entry.name!r} does not declare its sample shape (ModelSpec.sample_shape)")
    samplers, runs = _plan_runs(field, names, nfes, solvers, cfg)
    names = [n for n in names if n in samplers or solvers is not None]
    ok = [r for r in runs if r["status"] == "ok"]
    if not ok:
        raise InvalidArgument("no solver can run at the requested NFE values: " +
                              "; ".join(f"{r['solver']}@{r['nfe_requested']}: {r['status']}" for r in runs))
    # One reference per distinct start time (normally all grids start at the same noise level).
    starts: dict[float, set[float]] = {}
    for r in ok:
        t = r["t"]
        pts = t.tolist() if traj and r["kind"] == "ode" else [float(t[0]), float(t[-1])]
        starts.setdefault(float(t[0]), set()).update(pts)
    ref_times = {t0: torch.tensor(sorted(v, reverse=True), dtype=torch.float64) for t0, v in starts.items()}
    return Job(entry=entry, net=net, field=field, dist=dist, cfg=cfg, names=names, nfes=nfes, batch=B, chunk=csize,
               reference=entry.reference if cfg.reference is None else cfg.reference, trajectory=traj, device=dev,
               dtype=run_dtype, samplers=samplers, runs=runs, ok=ok, ref_times=ref_times, main_t0=max(starts),
               peers=_peer_runs(net, field, names, cfg, dist))


def solver_kind(solver: Any) -> str:
    """'ode' (fixed grid), 'adaptive' (its own step sizes) or 'sde' (stochastic).

    Args:
        solver: A solver object (its `deterministic` and `adaptive` flags decide).

    Returns:
        The kind.
    """
    return "sde" if not solver.deterministic else ("adaptive" if solver.adaptive else "ode")

