"""`diffsolve bench`: every solver at every NFE on the same noise, measured against a float64 reference solve.

`run_bench(model, solvers, nfe, ...)` is the whole benchmark as a function (the command line is a thin layer over
it): it returns the report as a dict and, with `out=`, writes bench.json, bench.csv and PNG plots there (each file
written atomically). Its options are the fields of `BenchSettings`, given either as one object
(`settings=BenchSettings(...)`) or as keywords.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from diffsolve.errors import BudgetExceeded, DiffsolveError, InvalidArgument, unknown_name
from diffsolve.field import as_field
from diffsolve.noise import draw_noise
from diffsolve.sampler import Sampler
from diffsolve.solvers import available_solvers
from diffsolve.evaluation import metrics
from diffsolve.distributed import Dist, chunk_bounds, sample_seeds
from diffsolve.bench.models import DEFAULT_SOLVERS, BenchModel, data_range_of, resolve_model
from diffsolve.bench.peers import PEER_PROVIDERS, PeerRun
from diffsolve.field import model_identity
from diffsolve.checks import BENCH_SEED_LIMIT, check_device, check_seed, check_writable
from diffsolve.evaluation.reference import ReferenceSettings, default_cache_dir, solve_reference
from diffsolve.bench.report import format_report, write_outputs

PROGRESS_MODES = ("auto", "bar", "log", "none")


class OutputError(DiffsolveError, OSError):
    """The bench finished (its table was printed) but writing its files failed; `report` holds the results."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BenchSettings:
    """How to run the benchmark. None means: the model entry's default (see `BenchModel`).

    threads: torch CPU threads during the run (the small analytic problems use 1, since OpenMP start-up costs more
    than their tiny tensors gain); torch's setting is restored after.
    """

    batch_size: int | None = None
    chunk_size: int | None = None       # samples per chunk: the unit of work and of sharding
    seed: int = 0
    device: Any = None
    dtype: Any = None
    grid: Any = None
    grid_options: dict | None = None
    threads: int | None = None
    reference: ReferenceSettings | None = None
    trajectory: bool | None = None
    cache: bool = True
    cache_dir: str | Path | None = None
    peers: bool = True
    out: str | Path | None = None
    plots: bool = True
    progress: bool | str = True        # True/'auto': a bar on a terminal, else a log line per cell; 'bar', 'log',
                                        # False/'none'
    verbose: bool = True
    straightness: bool = True           # the model's straightness and one-step gap (diffsolve.analysis.straightness)


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgument(f"{name}={value!r}: must be an integer >= 1 (or None for the model's default)")


def check_settings(cfg: BenchSettings) -> None:
    """Every user value checked before any work: no value is silently replaced by a default, and an unusable
    output or cache folder fails here, in well under a second, rather than after the whole run."""
    for name in ("batch_size", "chunk_size", "threads"):
        _positive_or_none(name, getattr(cfg, name))
    check_seed(cfg.seed, BENCH_SEED_LIMIT, "seed")
    check_device(cfg.device, "device")
    _progress_mode(cfg.progress)
    from diffsolve.errors import check_bool
    for name in ("cache", "peers", "plots", "verbose", "straightness"):
        check_bool(name, getattr(cfg, name))
    if cfg.out is not None:
        check_writable(cfg.out, "--out")
    if cfg.cache:
        check_writable(cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(), "--cache-dir")


def _progress_mode(progress: bool | str) -> str:
    if progress is True:
        progress = "auto"
    elif progress is False:
        progress = "none"
    if progress not in PROGRESS_MODES:
        raise unknown_name("progress", progress, PROGRESS_MODES)
    if progress == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return progress


def run_bench(model: Any = "gmm", solvers: Sequence[str] | str | None = None, nfe: Sequence[int] | None = None,
              settings: BenchSettings | None = None, **options: Any) -> dict:
    """Benchmark solvers x NFE on one model and the same noise; returns the report (see bench.json).

    `options` are `BenchSettings` fields and override those of `settings`.
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


# ------------------------------------------------------------------------------------------------
# Resolving the settings against the model entry
# ------------------------------------------------------------------------------------------------
def _resolve_solvers(solvers: Sequence[str] | str | None, entry: BenchModel) -> list[str]:
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


DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "double": torch.float64, "float": torch.float32, "half": torch.float16}


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, list(DTYPES) + ["auto"])
    return DTYPES[dtype]


def _model_dtype(model: Any) -> torch.dtype:
    if isinstance(model, torch.nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Progress:
    """A tqdm bar ('bar'), one line on stderr per finished cell ('log': a log file shows where a long run is), or
    nothing ('none')."""

    def __init__(self, total: int, desc: str, mode: str):
        from tqdm.auto import tqdm
        self.mode, self.desc, self.total, self.done = mode, desc, total, 0
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, leave=False, disable=mode != "bar", dynamic_ncols=True)

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def update(self, n: int = 1, line: str | None = None) -> None:
        self.done += n
        self.bar.update(n)
        if self.mode == "log" and line is not None:
            print(f"[{self.desc}] {line}  ({self.done}/{self.total} done, {time.perf_counter() - self.start:.1f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


@dataclass
class _Job:
    """Everything the run resolved before any work: the model on its device, the solvers' plans, the references."""

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


def _prepare(entry: BenchModel, net: Any, dist: Dist, solvers, nfe, cfg: BenchSettings) -> _Job:
    names = _resolve_solvers(solvers, entry)
    nfes = sorted({int(n) for n in (entry.nfe if nfe is None else nfe)})
    if not nfes or nfes[0] < 1:
        raise InvalidArgument(f"nfe={nfe!r}: give positive integers")
    B = int(entry.batch_size if cfg.batch_size is None else cfg.batch_size)
    csize = int(min(entry.chunk_size, B) if cfg.chunk_size is None else cfg.chunk_size)
    traj = entry.trajectory if cfg.trajectory is None else bool(cfg.trajectory)
    dev = dist.device(cfg.device) if cfg.device is not None else torch.device("cpu")
    run_dtype = _resolve_dtype(cfg.dtype)
    if run_dtype is None:
        run_dtype = entry.dtype if entry.dtype is not None else _model_dtype(net)
    if isinstance(net, torch.nn.Module):
        # Networks run in the benchmark's dtype; analytic problems keep their float64 buffers (they compute in
        # the dtype of x), so their exact metrics stay exact.
        has_params = any(True for _ in net.parameters())
        moves = [t for t in list(net.parameters()) + list(net.buffers())
                 if t.device != dev or (has_params and t.is_floating_point() and t.dtype != run_dtype)]
        if moves:
            net = copy.deepcopy(net)        # never convert the caller's model in place
            net = net.to(device=dev, dtype=run_dtype) if has_params else net.to(device=dev)
    field = as_field(net)
    if field.sample_shape is None:
        raise InvalidArgument(f"model {entry.name!r} does not declare its sample shape (ModelSpec.sample_shape)")

    # Plans: every solver x NFE, on the host; infeasible pairs are recorded, not run.
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
        kind = _kind(solver)
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

    peer_list: list[PeerRun] = []
    if cfg.peers:
        for provider in PEER_PROVIDERS:
            try:
                # Only peers of solvers in this run: the point is the ratio at equal NFE.
                peer_list += [pr for pr in provider(net, field) if pr.ours in names]
            except Exception as e:  # noqa: BLE001 - a broken optional peer never stops the benchmark
                if cfg.verbose and dist.is_main:
                    print(f"peer provider {getattr(provider, '__name__', provider)} failed: {e}")
    return _Job(entry=entry, net=net, field=field, dist=dist, cfg=cfg, names=names, nfes=nfes, batch=B, chunk=csize,
                reference=entry.reference if cfg.reference is None else cfg.reference, trajectory=traj, device=dev, dtype=run_dtype,
                samplers=samplers, runs=runs, ok=ok, ref_times=ref_times, main_t0=max(starts), peers=peer_list)


# ------------------------------------------------------------------------------------------------
# The work, chunk by chunk (chunks are the unit of sharding)
# ------------------------------------------------------------------------------------------------
def _run(entry: BenchModel, net: Any, dist: Dist, solvers, nfe, cfg: BenchSettings) -> dict:
    wall_start = time.perf_counter()
    job = _prepare(entry, net, dist, solvers, nfe, cfg)
    seeds = sample_seeds(cfg.seed, job.batch)
    bounds = chunk_bounds(job.batch, job.chunk)
    mine = dist.my_chunks(len(bounds))
    n_work = len(mine) * (len(job.ref_times) + len(job.ok) + len(job.peers) * len(job.nfes))
    mode = _progress_mode(cfg.progress) if dist.is_main else "none"
    bar = _Progress(n_work, f"bench {entry.name}", mode)
    results = {c: _run_chunk(job, seeds[bounds[c][0]:bounds[c][1]], bar,
                             f"chunk {c + 1}/{len(bounds)}" if len(bounds) > 1 else "") for c in mine}
    bar.close()
    chunks = dist.gather_chunks(results)

    report = _assemble(job, chunks)
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


def _straightness(job: _Job, seeds: list[int]) -> dict:
    """Straightness of the model's trajectories (Liu et al. 2023) on the bench's first samples: how few steps it
    can take. Heun on the bench grid; the slope on each interval is the chord of the solved trajectory."""
    from diffsolve.analysis.straightness import straightness
    n = min(len(seeds), STRAIGHTNESS_SAMPLES)
    t0 = time.perf_counter()
    noise = draw_noise((n, *job.field.sample_shape), seed=seeds[:n], dtype=torch.float64, device=job.device)
    grid = job.cfg.grid if job.cfg.grid is not None else None
    try:
        r = straightness(job.field, noise, steps=STRAIGHTNESS_STEPS, solver="heun", grid=grid,
                         grid_options=job.cfg.grid_options)
    except DiffsolveError as e:
        return {"status": f"failed: {e}"}
    return {"status": "ok", **r.as_dict(), "samples": n, "steps": STRAIGHTNESS_STEPS, "solver": "heun",
            "seconds": time.perf_counter() - t0}


def _cell_line(name: str, n: int, item: dict, where: str) -> str:
    if "budget" in item:
        what = "budget exceeded"
    elif "rmse" in item:
        what = f"NFE used {item['nfe']}, endpoint RMSE {float(item['rmse'].mean()):.3e}"
    else:
        what = f"NFE used {item['nfe']}, stochastic (scored by distribution metrics)"
    return f"{name} NFE {n}: {what}, {item['wall']:.2f} s" + (f" [{where}]" if where else "")


def _run_chunk(job: _Job, seeds: list[int], bar, where: str = "") -> dict:
    cfg, dev = job.cfg, job.device
    noise = draw_noise((len(seeds), *job.field.sample_shape), seed=seeds, dtype=torch.float32)
    chunk: dict[str, Any] = {"refs": {}, "runs": {}, "peers": {}}
    refs = {}
    for t0, times in job.ref_times.items():
        bar.set_postfix_str("reference")
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
        bar.set_postfix_str(f"{name} nfe={n}")
        s = job.samplers[name]
        traj = job.trajectory and kind == "ode"
        _sync(dev)
        t_start = time.perf_counter()
        try:
            # Stochastic solvers draw their step noise from the same per-sample seeds as the initial noise.
            res = s.run(nfe=n, noise=x_in, seed=seeds if kind == "sde" else None, return_trajectory=traj)
        except BudgetExceeded as e:
            item = {"budget": str(e), "wall": time.perf_counter() - t_start}
            chunk["runs"][(name, n)] = item
            bar.update(1, _cell_line(name, n, item, where))
            continue
        _sync(dev)
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
        bar.update(1, _cell_line(name, n, item, where))
    for peer in job.peers:
        for n in job.nfes:
            bar.set_postfix_str(f"{peer.name} nfe={n}")
            t_start = time.perf_counter()
            try:
                xs = peer.run(x_in, n)
                _sync(dev)
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


def _assemble(job: _Job, chunks: list[dict]) -> dict:
    """The report (what bench.json holds) from every chunk's results, in chunk order."""
    entry, net, field, runs, ref_times, main_t0 = job.entry, job.net, job.field, job.runs, job.ref_times, job.main_t0
    names, nfes, settings, traj, B, seed = job.names, job.nfes, job.reference, job.trajectory, job.batch, job.cfg.seed
    grid = job.cfg.grid
    # Reference summary: the worst gap over chunks, at the endpoint and along the trajectory.
    ref_info = {"method": settings.method, "rtol": settings.rtol, "atol": settings.atol,
                "check_rtol": settings.rtol * settings.check_factor,
                "check_atol": settings.atol * settings.check_factor,
                "frame": chunks[0]["refs"][main_t0]["frame"],
                "nfe_per_chunk": [ch["refs"][main_t0]["nfe"] for ch in chunks],
                "seconds": sum(ch["refs"][t0]["seconds"] for ch in chunks for t0 in ch["refs"]),
                "cached": all(ch["refs"][t0]["cached"] for ch in chunks for t0 in ch["refs"]),
                "points": int(sum(t.numel() for t in ref_times.values()))}
    gap_r = torch.stack([ch["refs"][main_t0]["gap_rmse"] for ch in chunks]).amax(0)
    gap_m = torch.stack([ch["refs"][main_t0]["gap_maxabs"] for ch in chunks]).amax(0)
    ref_info.update(gap_endpoint_rmse=float(gap_r[-1]), gap_endpoint_maxabs=float(gap_m[-1]),
                    gap_trajectory_rmse=float(gap_r.max()), gap_trajectory_maxabs=float(gap_m.max()))
    ref_end = torch.cat([ch["refs"][main_t0]["endpoint"] for ch in chunks])

    # Exact-problem metrics on a CPU copy of the problem (its generator-driven sampling is CPU-only).
    problem = copy.deepcopy(net).cpu() if isinstance(net, torch.nn.Module) and hasattr(net, "sample_data") else None
    data = None
    if problem is not None:
        g = torch.Generator().manual_seed(int(seed) + 12345)
        data = metrics.SlicedWasserstein(problem.sample_data(entry.data_samples, generator=g).cpu(), seed=seed)
        ref_info.update(metrics.gaussian_mixture_metrics(problem, ref_end, data, seed=seed))
    if problem is not None and callable(getattr(problem, "ode_solution", None)) \
            and float(ref_times[main_t0][-1]) == 0.0:
        # The exact answer for the Gaussian: transport to t_min, then the final data prediction there.
        sch = field.schedule
        t_min = float(sch.t_min)
        noise_all = draw_noise((B, *field.sample_shape), seed=sample_seeds(seed, B), dtype=torch.float64)
        x0 = noise_all * sch.prior_std(main_t0)
        ex = problem.denoise(problem.ode_solution(x0, main_t0, t_min), t_min)
        ref_info["exact_endpoint_maxabs"] = float((ref_end.to(torch.float64) - ex).abs().max())

    ref_sw = metrics.SlicedWasserstein(ref_end, seed=seed)
    rows = []
    for r in runs:
        row = {k: v for k, v in r.items() if k != "t"}
        if r["status"] == "ok":
            key = (r["solver"], r["nfe_requested"])
            items = [ch["runs"][key] for ch in chunks]
            over = [it["budget"] for it in items if "budget" in it]
            if over:
                # One chunk over budget marks the whole cell; its numbers are null, never half an answer.
                row.update(status="budget", why=over[0], nfe=None, rmse_mean=None, rmse_median=None, rmse_p90=None,
                           rmse_max=None, maxabs_mean=None, maxabs_max=None, sw1_reference=None, wall_s=None)
                rows.append(row)
                continue
            row["wall_s"] = sum(it["wall"] for it in items)
            if r["kind"] != "ode":
                row["nfe"] = max(it["nfe"] for it in items)      # what it used (the most over chunks)
            if r["kind"] == "sde":
                row.update(rmse_mean=None, rmse_median=None, rmse_p90=None, rmse_max=None, maxabs_mean=None,
                           maxabs_max=None)
            else:
                rmse = torch.cat([it["rmse"] for it in items])
                maxabs = torch.cat([it["maxabs"] for it in items])
                r_s, m_s = metrics.summarize(rmse), metrics.summarize(maxabs)
                row.update(rmse_mean=r_s["mean"], rmse_median=r_s["median"], rmse_p90=r_s["p90"],
                           rmse_max=r_s["max"], maxabs_mean=m_s["mean"], maxabs_max=m_s["max"])
            if traj and r["kind"] == "ode":
                tr = torch.cat([it["traj"] for it in items], dim=1)       # [P, B]
                per_point = tr.mean(dim=1)
                row["traj_rmse_max"] = float(per_point.max())
                row["traj_rmse_mean"] = float(per_point.mean())
            samples = torch.cat([it["samples"] for it in items])
            row["sw1_reference"] = ref_sw(samples)
            if problem is not None:
                row.update(metrics.gaussian_mixture_metrics(problem, samples, data, seed=seed))
        rows.append(row)

    floor = 10.0 * ref_info["gap_endpoint_rmse"]
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

    peer_rows = []
    for peer in job.peers:
        for n in nfes:
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

    sch = field.schedule
    first = job.samplers[job.ok[0]["solver"]]
    return {
        "model": {"name": entry.name, "summary": entry.summary, "identity": _safe_identity(net),
                  "prediction": field.prediction, "schedule": sch.identity() if sch is not None else None,
                  "sample_shape": list(field.sample_shape), "kind": entry.kind,
                  "data_range": data_range_of(net)},
        "config": {"solvers": names, "kinds": {n: _kind(s.solver) for n, s in job.samplers.items() if n in names},
                   "nfe": nfes, "batch_size": B, "chunk_size": job.chunk, "seed": seed,
                   "device": str(job.device), "dtype": str(job.dtype).replace("torch.", ""),
                   "grid": grid if isinstance(grid, str) or grid is None else "custom",
                   "grid_used": first.grid if isinstance(first.grid, str) else "custom",
                   "trajectory": traj, "processes": job.dist.world},
        "reference": ref_info,
        "results": rows,
        "orders": orders,
        "peers": peer_rows,
    }


def _kind(solver: Any) -> str:
    return "sde" if not solver.deterministic else ("adaptive" if solver.adaptive else "ode")


def _safe_identity(net: Any) -> str:
    return model_identity(net) or type(net).__name__
