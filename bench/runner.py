"""`diffsolve bench`: every solver at every NFE on the same noise, measured against a float64 reference solve.

`run_bench(...)` is the whole benchmark as a function (the command line is a thin layer over it): it returns the
report as a dict and, with `out=`, writes bench.json, bench.csv and PNG plots there (each file written atomically).
Models come from `BENCH_MODELS` (extend it with `register_bench_model`) or a 'module:attr' path.
"""
from __future__ import annotations

import dataclasses

import copy
import csv
import importlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import InvalidArgument, unknown_name
from ..field import as_field, model_spec_of
from ..noise import draw_noise
from ..sampler import Sampler
from ..solvers import available_solvers
from . import metrics
from .distributed import Dist, chunk_bounds, sample_seeds
from .reference import ReferenceSettings, atomic_write_bytes, model_identity, solve_reference

# ------------------------------------------------------------------------------------------------
# Models the benchmark knows by name
# ------------------------------------------------------------------------------------------------
SHARED = Path(os.environ.get("DIFFSOLVE_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@dataclass
class BenchModel:
    """A model for the benchmark and how to benchmark it by default.

    kind: 'vector' (flat samples), 'image' ([C, H, W]: a sample grid is drawn) or 'points' (2-D).
    dtype None runs the solvers in the model's own dtype; `trajectory` asks for errors at every grid point
    (a reference state at each of them); `available` returns None, or why the model cannot be built here.
    """

    name: str
    build: Callable[[], Any]
    summary: str = ""
    kind: str = "vector"
    batch_size: int = 256
    chunk_size: int = 256
    nfe: tuple[int, ...] = (4, 8, 16, 32)
    dtype: torch.dtype | None = None
    solvers: tuple[str, ...] | None = None
    reference: ReferenceSettings = dc_field(default_factory=ReferenceSettings)
    trajectory: bool = True
    data_samples: int = 4096
    threads: int | None = None      # torch CPU threads while benchmarking (None: leave torch's setting)
    available: Callable[[], str | None] = lambda: None


BENCH_MODELS: dict[str, BenchModel] = {}


def register_bench_model(entry: BenchModel) -> None:
    """Add a named model to `diffsolve bench --model` (names are unique)."""
    if entry.name in BENCH_MODELS:
        raise InvalidArgument(f"bench model {entry.name!r} is registered already")
    BENCH_MODELS[entry.name] = entry


def _gmm():
    from .problems import GaussianMixtureProblem
    return GaussianMixtureProblem.default()


def _gaussian():
    from .problems import GaussianProblem
    return GaussianProblem.default(dim=16)


def _mnist_ddpm():
    from ..pretrained_adapters.mnist_ddpm import load_mnist_ddpm
    return load_mnist_ddpm(SHARED / "models" / "mnist-ddpm-eps.safetensors")


def _needs(path: Path) -> Callable[[], str | None]:
    return lambda: None if path.is_file() else f"{path} is missing (the shared model folder beside the repository)"


register_bench_model(BenchModel(
    "gmm", _gmm, "Gaussian mixture, 8 components in 16-D, exact denoiser (EDM schedule)", batch_size=512,
    chunk_size=256, nfe=(4, 6, 8, 12, 16, 24, 32, 48, 64), dtype=torch.float64, threads=1))
register_bench_model(BenchModel(
    "gaussian", _gaussian, "Gaussian in 16-D, exact probability-flow solution (EDM schedule)", batch_size=512,
    chunk_size=256, nfe=(4, 6, 8, 12, 16, 24, 32, 48, 64), dtype=torch.float64, threads=1))
register_bench_model(BenchModel(
    "mnist-ddpm", _mnist_ddpm, "MNIST DDPM (eps, linear betas, T=1000) from ../shared/models", kind="image",
    batch_size=8, chunk_size=4, nfe=(5, 10, 20, 50), dtype=None,
    reference=ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6), trajectory=False,
    available=_needs(SHARED / "models" / "mnist-ddpm-eps.safetensors")))

for _flow in ("otcfm", "cfm"):
    def _build(_f=_flow):
        from ..pretrained_adapters.torchcfm import load_torchcfm_mlp
        return load_torchcfm_mlp(SHARED / "models" / "moons-flow" / f"{_f}.safetensors")
    register_bench_model(BenchModel(
        f"moons-{_flow}", _build, f"2-D two-moons flow ({_flow}, torchcfm MLP, plain velocity field)", kind="points",
        batch_size=1024, chunk_size=512, nfe=(2, 4, 8, 16, 32), dtype=torch.float64, threads=1,
        available=_needs(SHARED / "models" / "moons-flow" / f"{_flow}.safetensors")))

def _mnist_unet():
    from ..models.builtin import load_mnist_unet
    return load_mnist_unet()


# The built-in image model ships inside the package: the default image model of the bench ('image' names it too).
_MNIST_UNET = BenchModel(
    "mnist-unet", _mnist_unet, "built-in MNIST UNet (EDM denoiser, 358k parameters, trained in the project)",
    kind="image", batch_size=16, chunk_size=8, nfe=(5, 10, 20, 50), dtype=None,
    # rtol 1e-7: its gap to the 1e-5 check solve (2.8e-4 RMSE) is far below the errors measured (>= 0.02)
    reference=ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7), trajectory=False)
register_bench_model(_MNIST_UNET)
register_bench_model(dataclasses.replace(_MNIST_UNET, name="image"))

# Tried in this order when --solvers is not given; names another module has not registered are left out.
DEFAULT_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "deis", "ipndm", "dpm_solver_3", "rk4")


def resolve_model(model: Any) -> tuple[BenchModel, Any]:
    """A BenchModel and the built model from a registry name, a 'module:attr' path or a model object."""
    if isinstance(model, BenchModel):
        entry = model
    elif isinstance(model, str) and model in BENCH_MODELS:
        entry = BENCH_MODELS[model]
    elif isinstance(model, str) and ":" in model:
        mod, _, attr = model.partition(":")
        try:
            obj = importlib.import_module(mod)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise InvalidArgument(f"model={model!r}: cannot import it ({e})") from None
        if isinstance(obj, BenchModel):
            entry = obj
        else:
            if callable(obj) and not isinstance(obj, torch.nn.Module) and model_spec_of(obj) is None:
                obj = obj()     # a factory
            if isinstance(obj, BenchModel):
                entry = obj
            else:
                entry = _entry_for_object(obj, name=model)
    elif isinstance(model, str):
        raise unknown_name("model", model, list(BENCH_MODELS) + ["<module>:<attr>"])
    else:
        entry = _entry_for_object(model, name=type(model).__name__)
    why = entry.available()
    if why:
        raise InvalidArgument(f"model={entry.name!r} is not available here: {why}")
    return entry, entry.build()


def _entry_for_object(obj: Any, name: str) -> BenchModel:
    spec = model_spec_of(obj)
    shape = spec.sample_shape if spec is not None else None
    kind = "image" if shape is not None and len(shape) == 3 else ("points" if shape == (2,) else "vector")
    big = kind == "image"
    return BenchModel(name, lambda: obj, f"user model {name}", kind=kind, batch_size=16 if big else 256,
                      chunk_size=8 if big else 256, nfe=(5, 10, 20, 50) if big else (4, 8, 16, 32),
                      reference=ReferenceSettings(method="dopri5", rtol=1e-6, atol=1e-6) if big
                      else ReferenceSettings(),
                      trajectory=not big)


# ------------------------------------------------------------------------------------------------
# Peers (other libraries' samplers on the same model and noise)
# ------------------------------------------------------------------------------------------------
@dataclass
class PeerRun:
    """One peer sampler: `run(noise, nfe) -> samples` (noise standard normal, as our Sampler takes it)."""

    name: str                   # e.g. 'diffusers:DPMSolverMultistepScheduler'
    ours: str                   # the diffsolve solver it is compared with at equal NFE
    run: Callable[[torch.Tensor, int], torch.Tensor]


# Providers: provider(model, field) -> list[PeerRun] (empty when the model is not one the peer library can drive).
PEER_PROVIDERS: list[Callable[[Any, Any], list[PeerRun]]] = []


# diffusers scheduler class, its options, the diffsolve solver it implements, steps for an NFE budget.
DIFFUSERS_PEERS = (
    ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, "ddim", lambda n: n),
    ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}, "euler", lambda n: n),
    ("HeunDiscreteScheduler", {}, "heun", lambda n: (n + 1) // 2),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "zero"}, "dpmpp_2m", lambda n: n),
    ("UniPCMultistepScheduler", {"final_sigmas_type": "zero"}, "unipc_bh2", lambda n: n),
    ("DEISMultistepScheduler", {}, "deis", lambda n: n),
)


def _diffusers_provider(model: Any, field: Any) -> list[PeerRun]:
    """diffusers' schedulers on a discrete VP eps / v model: their documented loop, trailing timesteps.

    Trailing spacing starts at the last training timestep, the same noise level as the reference, and the loop
    starts from the same x_T = sigma(t_max) * noise (in the scheduler's own variable: x_T, or x_T / alpha for the
    Euler family, whose init_noise_sigma then cancels), so both libraries are measured against the same solution.
    """
    from ..schedules import VPDiscrete

    sch = field.schedule
    if not isinstance(sch, VPDiscrete) or field.prediction not in ("eps", "v") or field.time_convention != "diffusion":
        return []
    if getattr(field, "evals_per_call", 1) != 1:
        return []
    try:
        import diffusers
    except ImportError:
        return []
    ac = sch.alphas_cumprod
    betas = torch.cat([1.0 - ac[:1], 1.0 - ac[1:] / ac[:-1]]).numpy()
    pred = {"eps": "epsilon", "v": "v_prediction"}[field.prediction]
    peers = []
    for cls_name, opts, ours, steps_of in DIFFUSERS_PEERS:
        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)     # numpy 2 notices from inside diffusers
            scheduler = cls(num_train_timesteps=sch.N, trained_betas=betas, prediction_type=pred,
                            timestep_spacing="trailing", **opts)
        peers.append(PeerRun(f"diffusers.{cls_name}", ours, _diffusers_loop(scheduler, field, steps_of)))
    return peers


def _diffusers_loop(scheduler: Any, field: Any, steps_of: Callable[[int], int]):
    sch = field.schedule

    def run(noise: torch.Tensor, nfe: int) -> torch.Tensor:
        s = copy.deepcopy(scheduler)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            s.set_timesteps(max(int(steps_of(nfe)), 1))
        x_T = noise * sch.prior_std(sch.t_max)
        init = float(getattr(s, "init_noise_sigma", 1.0))
        x = x_T if init == 1.0 else x_T / float(sch.alpha(sch.t_max))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for t in s.timesteps:
                inp = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
                tm = float(sch.model_time(sch.t_from_index(float(t))))
                out = field.model(inp, torch.full((x.shape[0],), tm, dtype=x.dtype, device=x.device),
                                  **field.model_kwargs)
                x = s.step(out, t, x).prev_sample
        return x

    return run


PEER_PROVIDERS.append(_diffusers_provider)


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------
def _resolve_solvers(solvers: Sequence[str] | str | None, entry: BenchModel) -> list[str]:
    known = available_solvers()
    if solvers is None:
        wanted = entry.solvers or DEFAULT_SOLVERS
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


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
             "bfloat16": torch.bfloat16, "fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16,
             "bf16": torch.bfloat16, "double": torch.float64, "float": torch.float32, "half": torch.float16}
    if dtype not in names:
        raise unknown_name("dtype", dtype, list(names) + ["auto"])
    return names[dtype]


def _model_dtype(model: Any) -> torch.dtype:
    if isinstance(model, torch.nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    return torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    # disable=None: no bar when the output is not a terminal (logs, CI)
    return tqdm(total=total, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True)


def run_bench(model: Any = "gmm", solvers: Sequence[str] | str | None = None, nfe: Sequence[int] | None = None, *,
              batch_size: int | None = None, seed: int = 0, device: Any = None, dtype: Any = None,
              out: str | Path | None = None, grid: Any = None, grid_options: dict | None = None,
              reference: ReferenceSettings | None = None, trajectory: bool | None = None, cache: bool = True,
              cache_dir: str | Path | None = None, chunk_size: int | None = None, progress: bool = True,
              plots: bool = True, peers: bool = True, verbose: bool = True, threads: int | None = None) -> dict:
    """Benchmark solvers x NFE on one model and the same noise; returns the report (see bench.json).

    `threads`: torch CPU threads during the run (default: the model entry's choice; the small analytic problems
    use 1, since OpenMP start-up costs more than their tiny tensors gain). torch's setting is restored after.
    """
    entry, net = resolve_model(model)
    dist = Dist.from_env(device)
    threads = entry.threads if threads is None else threads
    before = torch.get_num_threads()
    if threads:
        if not isinstance(threads, int) or threads < 1:
            raise InvalidArgument(f"threads={threads!r}: must be an integer >= 1")
        torch.set_num_threads(threads)
    try:
        return _run(entry, net, dist, solvers=solvers, nfe=nfe, batch_size=batch_size, seed=seed, device=device,
                    dtype=dtype, out=out, grid=grid, grid_options=grid_options, reference=reference,
                    trajectory=trajectory, cache=cache, cache_dir=cache_dir, chunk_size=chunk_size,
                    progress=progress, plots=plots, peers=peers, verbose=verbose)
    finally:
        torch.set_num_threads(before)
        dist.close()


def _run(entry: BenchModel, net: Any, dist: Dist, *, solvers, nfe, batch_size, seed, device, dtype, out, grid,
         grid_options, reference, trajectory, cache, cache_dir, chunk_size, progress, plots, peers, verbose) -> dict:
    wall_start = time.perf_counter()
    main = dist.is_main
    names = _resolve_solvers(solvers, entry)
    nfes = sorted({int(n) for n in (nfe or entry.nfe)})
    if not nfes or nfes[0] < 1:
        raise InvalidArgument(f"nfe={nfe!r}: give positive integers")
    B = int(batch_size or entry.batch_size)
    if B < 1:
        raise InvalidArgument(f"batch_size={batch_size!r}: must be >= 1")
    csize = int(chunk_size or min(entry.chunk_size, B))
    if csize < 1:
        raise InvalidArgument(f"chunk_size={chunk_size!r}: must be >= 1")
    settings = reference or entry.reference
    traj = entry.trajectory if trajectory is None else bool(trajectory)
    dev = dist.device(device) or torch.device("cpu")
    run_dtype = _resolve_dtype(dtype) or entry.dtype or _model_dtype(net)
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
    shape = field.sample_shape
    if shape is None:
        raise InvalidArgument(f"model {entry.name!r} does not declare its sample shape (ModelSpec.sample_shape)")

    # --- plans: every solver x NFE, on the host; infeasible pairs are recorded, not run --------------------
    samplers: dict[str, Sampler] = {}
    runs: list[dict] = []
    for name in names:
        try:
            samplers[name] = Sampler(field, name, grid=grid, grid_options=grid_options, progress=False)
        except InvalidArgument as e:
            if solvers is None:
                continue        # the default set keeps only solvers that can drive this model
            for n in nfes:
                runs.append({"solver": name, "nfe_requested": n, "status": f"n/a: {e}"})
            continue
        for n in nfes:
            row = {"solver": name, "nfe_requested": n}
            try:
                plan = samplers[name].plan(nfe=n)
            except InvalidArgument as e:
                row["status"] = f"skipped: {e}"
            else:
                row.update(status="ok", nfe=plan.nfe * field.evals_per_call, steps=plan.steps, t=plan.t)
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
        pts = t.tolist() if traj else [float(t[0]), float(t[-1])]
        starts.setdefault(float(t[0]), set()).update(pts)
    ref_times = {t0: torch.tensor(sorted(v, reverse=True), dtype=torch.float64) for t0, v in starts.items()}
    main_t0 = max(starts)

    peer_list: list[PeerRun] = []
    if peers:
        for provider in PEER_PROVIDERS:
            try:
                # Only peers of solvers in this run: the point is the ratio at equal NFE.
                peer_list += [pr for pr in provider(net, field) if pr.ours in names]
            except Exception as e:  # noqa: BLE001 - a broken optional peer never stops the benchmark
                if verbose and main:
                    print(f"peer provider {getattr(provider, '__name__', provider)} failed: {e}")

    # --- the work, chunk by chunk (chunks are the unit of sharding) -----------------------------------------
    seeds = sample_seeds(seed, B)
    bounds = chunk_bounds(B, csize)
    mine = dist.my_chunks(len(bounds))
    n_work = len(mine) * (len(ref_times) + len(ok) + len(peer_list) * len(nfes))
    bar = _progress(n_work, f"bench {entry.name}", progress and main)
    results: dict[int, dict] = {}
    for c in mine:
        a, b = bounds[c]
        noise = draw_noise((b - a, *shape), seed=seeds[a:b], dtype=torch.float32)
        chunk: dict[str, Any] = {"refs": {}, "runs": {}, "peers": {}}
        refs = {}
        for t0, times in ref_times.items():
            bar.set_postfix_str("reference")
            ref = solve_reference(net, noise.to(dev), times, settings=settings, cache=cache, cache_dir=cache_dir,
                                  seeds=seeds[a:b])
            refs[t0] = ref
            chunk["refs"][t0] = {"times": ref.times, "gap_rmse": ref.gap_rmse, "gap_maxabs": ref.gap_maxabs,
                                 "nfe": ref.nfe, "seconds": ref.seconds, "cached": ref.cached, "frame": ref.frame,
                                 "endpoint": ref.states[-1].cpu()}
            bar.update(1)
        x_in = noise.to(device=dev, dtype=run_dtype)
        for r in ok:
            bar.set_postfix_str(f"{r['solver']} nfe={r['nfe_requested']}")
            s = samplers[r["solver"]]
            _sync(dev)
            t_start = time.perf_counter()
            res = s.run(nfe=r["nfe_requested"], noise=x_in, return_trajectory=traj)
            _sync(dev)
            wall = time.perf_counter() - t_start
            ref = refs[float(res.t[0])]
            end_ref = ref.at(res.t[-1:])[0]
            item = {"samples": res.samples.detach().cpu(), "wall": wall, "nfe": res.nfe,
                    "rmse": metrics.rmse_per_sample(res.samples, end_ref.to(res.samples.device)).cpu(),
                    "maxabs": metrics.maxabs_per_sample(res.samples, end_ref.to(res.samples.device)).cpu()}
            if traj:
                item["traj"] = metrics.trajectory_rmse(res.trajectory, ref.at(res.t).to(res.trajectory.device)).cpu()
            chunk["runs"][(r["solver"], r["nfe_requested"])] = item
            bar.update(1)
        for peer in peer_list:
            for n in nfes:
                bar.set_postfix_str(f"{peer.name} nfe={n}")
                t_start = time.perf_counter()
                try:
                    xs = peer.run(x_in, n)
                    _sync(dev)
                    end_ref = refs[main_t0].states[-1]
                    chunk["peers"][(peer.name, n)] = {
                        "wall": time.perf_counter() - t_start,
                        "rmse": metrics.rmse_per_sample(xs, end_ref.to(xs.device)).cpu(),
                        "samples": xs.detach().cpu()}
                except Exception as e:  # noqa: BLE001
                    chunk["peers"][(peer.name, n)] = {"error": f"{type(e).__name__}: {e}"}
                bar.update(1)
        results[c] = chunk
    bar.close()
    chunks = dist.gather_chunks(results)

    report = _assemble(entry, net, field, chunks, runs, ok, ref_times, main_t0, peer_list, nfes, names, settings,
                       traj, B, csize, seed, dev, run_dtype, dist, grid, samplers)
    report["seconds_total"] = time.perf_counter() - wall_start
    if main:
        if out is not None:
            report["files"] = write_outputs(report, Path(out), chunks, plots=plots, entry=entry, nfes=nfes,
                                            names=names)
        if verbose:
            print(format_report(report))
    return report


def _assemble(entry, net, field, chunks, runs, ok, ref_times, main_t0, peer_list, nfes, names, settings, traj, B,
              csize, seed, dev, run_dtype, dist, grid, samplers) -> dict:
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

    rows = []
    for r in runs:
        row = {k: v for k, v in r.items() if k != "t"}
        if r["status"] == "ok":
            key = (r["solver"], r["nfe_requested"])
            items = [ch["runs"][key] for ch in chunks]
            rmse = torch.cat([it["rmse"] for it in items])
            maxabs = torch.cat([it["maxabs"] for it in items])
            r_s, m_s = metrics.summarize(rmse), metrics.summarize(maxabs)
            row.update(rmse_mean=r_s["mean"], rmse_median=r_s["median"], rmse_p90=r_s["p90"], rmse_max=r_s["max"],
                       maxabs_mean=m_s["mean"], maxabs_max=m_s["max"],
                       wall_s=sum(it["wall"] for it in items))
            if traj:
                tr = torch.cat([it["traj"] for it in items], dim=1)       # [P, B]
                per_point = tr.mean(dim=1)
                row["traj_rmse_max"] = float(per_point.max())
                row["traj_rmse_mean"] = float(per_point.mean())
            if problem is not None:
                samples = torch.cat([it["samples"] for it in items])
                row.update(metrics.gaussian_mixture_metrics(problem, samples, data, seed=seed))
        rows.append(row)

    floor = 10.0 * ref_info["gap_endpoint_rmse"]
    orders = {}
    for name in names:
        # Several budgets can map to the same step count: one point per NFE actually used.
        pts = {r["nfe"]: r["rmse_mean"] for r in rows if r["solver"] == name and r["status"] == "ok"}
        orders[name] = metrics.convergence_order(list(pts), list(pts.values()), last=3, floor=floor)

    peer_rows = []
    for peer in peer_list:
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
                if mine and prow["rmse_mean"] > 0:
                    prow["ratio_ours_to_theirs"] = mine[0]["rmse_mean"] / prow["rmse_mean"]
            peer_rows.append(prow)

    sch = field.schedule
    first = samplers[ok[0]["solver"]]
    return {
        "model": {"name": entry.name, "summary": entry.summary, "identity": _safe_identity(net),
                  "prediction": field.prediction, "schedule": sch.identity() if sch is not None else None,
                  "sample_shape": list(field.sample_shape), "kind": entry.kind},
        "config": {"solvers": names, "nfe": nfes, "batch_size": B, "chunk_size": csize, "seed": seed,
                   "device": str(dev), "dtype": str(run_dtype).replace("torch.", ""),
                   "grid": grid if isinstance(grid, str) or grid is None else "custom",
                   "grid_used": first.grid if isinstance(first.grid, str) else "custom",
                   "trajectory": traj, "processes": dist.world},
        "reference": ref_info,
        "results": rows,
        "orders": orders,
        "peers": peer_rows,
    }


def _safe_identity(net: Any) -> str:
    try:
        return model_identity(net)
    except InvalidArgument:
        return type(net).__name__


# ------------------------------------------------------------------------------------------------
# Output: table, JSON, CSV, plots
# ------------------------------------------------------------------------------------------------
def _fmt(v: Any, width: int = 9) -> str:
    if v is None:
        return "-".rjust(width)
    if isinstance(v, float):
        return (f"{v:.2e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e3) else f"{v:.4f}").rjust(width)
    return str(v).rjust(width)


def format_report(rep: dict) -> str:
    """The report as plain-text tables (what the command line prints)."""
    cfg, ref, m = rep["config"], rep["reference"], rep["model"]
    nfes = cfg["nfe"]
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
    by = {(r["solver"], r["nfe_requested"]): r for r in rep["results"]}
    solvers = cfg["solvers"]
    w = max([len(s) for s in solvers] + [8])

    def table(title: str, key: str, extra: Callable[[str], str] | None = None, extra_head: str = "") -> None:
        lines.append("")
        lines.append(title)
        lines.append("solver".ljust(w) + "".join(f"NFE {n}".rjust(11) for n in nfes) + extra_head)
        for s in solvers:
            cells = []
            for n in nfes:
                r = by.get((s, n))
                if r is None or r["status"] != "ok":
                    cells.append("-".rjust(11))
                else:
                    mark = "*" if r["nfe"] < n else " "
                    cells.append(_fmt(r.get(key), 10) + mark)
            lines.append(s.ljust(w) + "".join(cells) + (extra(s) if extra else ""))

    def order(s: str) -> str:
        o = rep["orders"].get(s)
        return ("   " + (f"{o:.2f}" if o is not None else "-")).rjust(8)

    table("endpoint RMSE vs reference (mean over samples)", "rmse_mean", order, "   order")
    table("endpoint max abs error (max over samples)", "maxabs_max")
    if cfg["trajectory"]:
        table("trajectory RMSE at the solver's grid points (max over points of the mean over samples)",
              "traj_rmse_max")
    if "sliced_w1" in ref:
        table(f"sliced W1 to exact data samples (reference solve: {ref['sliced_w1']:.4f})", "sliced_w1")
    if "loglik_mean" in ref:
        table(f"mean exact log-likelihood of the samples (reference solve: {ref['loglik_mean']:.4f})", "loglik_mean")
    table("wall time, seconds (all samples)", "wall_s")
    if rep["peers"]:
        lines.append("")
        lines.append("peers on the same model and noise: their endpoint RMSE vs reference (ours / theirs at equal NFE)")
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
    skipped = [r for r in rep["results"] if r["status"] != "ok"]
    lines.append("")
    lines.append("* = the solver's step structure uses fewer model evaluations than the column's NFE; "
                 "order = slope of log error vs log NFE over the last 3 points above 10x the reference gap")
    grouped: dict[tuple[str, str], list[int]] = {}
    for r in skipped:
        grouped.setdefault((r["solver"], r["status"]), []).append(r["nfe_requested"])
    for (solver, status), ns in grouped.items():
        lines.append(f"  {solver} at NFE {', '.join(map(str, ns))}: {status}")
    if rep.get("files"):
        lines.append("wrote: " + ", ".join(rep["files"]))
    lines.append(f"total {rep.get('seconds_total', 0.0):.1f} s")
    return "\n".join(lines)


CSV_FIELDS = ("solver", "nfe_requested", "nfe", "steps", "status", "rmse_mean", "rmse_median", "rmse_p90",
              "rmse_max", "maxabs_mean", "maxabs_max", "traj_rmse_max", "traj_rmse_mean", "sliced_w1",
              "loglik_mean", "wall_s")


def write_outputs(rep: dict, out: Path, chunks: list[dict], *, plots: bool, entry: BenchModel, nfes: list[int],
                  names: list[str]) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    atomic_write_bytes(out / "bench.json", json.dumps(rep, indent=2, sort_keys=False, default=str).encode())
    written.append(str(out / "bench.json"))
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    wr.writeheader()
    for r in rep["results"]:
        wr.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    atomic_write_bytes(out / "bench.csv", buf.getvalue().encode())
    written.append(str(out / "bench.csv"))
    if plots:
        written += _plots(rep, out, chunks, entry, nfes, names)
    return written


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plots(rep: dict, out: Path, chunks: list[dict], entry: BenchModel, nfes: list[int], names: list[str]) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'diffsolve[plots]')")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name in names:
        pts = sorted({r["nfe"]: r["rmse_mean"] for r in rep["results"]
                      if r["solver"] == name and r["status"] == "ok" and r["rmse_mean"] > 0}.items())
        if pts:
            o = rep["orders"].get(name)
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o",
                      label=f"{name}" + (f" (order {o:.1f})" if o is not None else ""))
    gap = rep["reference"]["gap_endpoint_rmse"]
    if gap > 0:
        ax.axhline(gap, color="gray", ls="--", lw=1, label="reference tolerance gap")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("endpoint RMSE vs reference")
    ax.set_title(f"diffsolve bench: {rep['model']['name']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, out / "error_vs_nfe.png")
    plt.close(fig)
    written.append(str(out / "error_vs_nfe.png"))

    if rep["model"]["kind"] == "image":
        show = min(4, rep["config"]["batch_size"])
        ref_end = torch.cat([ch["refs"][max(ch["refs"])]["endpoint"] for ch in chunks])[:show]
        cols = nfes + ["ref"]
        fig, axes = plt.subplots(len(names), len(cols), figsize=(1.6 * len(cols), 1.6 * len(names)), squeeze=False)
        lo, hi = _data_range(rep)
        for i, name in enumerate(names):
            for j, n in enumerate(cols):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if n == "ref":
                    imgs = ref_end
                else:
                    key = (name, n)
                    if key not in chunks[0]["runs"]:
                        continue
                    imgs = torch.cat([ch["runs"][key]["samples"] for ch in chunks])[:show]
                ax.imshow(_mosaic(imgs, lo, hi).numpy(), cmap="gray", vmin=0, vmax=1)
                if i == 0:
                    ax.set_title("reference" if n == "ref" else f"NFE {n}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(name, fontsize=8)
        _savefig(fig, out / "samples.png")
        plt.close(fig)
        written.append(str(out / "samples.png"))
    if rep["model"]["kind"] == "points":
        fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.6), squeeze=False)
        ref_end = torch.cat([ch["refs"][max(ch["refs"])]["endpoint"] for ch in chunks])
        n = nfes[0]
        for j, name in enumerate(names + ["reference"]):
            ax = axes[0][j]
            if name == "reference":
                pts = ref_end
            elif (name, n) in chunks[0]["runs"]:
                pts = torch.cat([ch["runs"][(name, n)]["samples"] for ch in chunks])
            else:
                continue
            ax.scatter(pts[:, 0].double().numpy(), pts[:, 1].double().numpy(), s=2)
            ax.set_title(name if name == "reference" else f"{name} NFE {n}", fontsize=8)
        _savefig(fig, out / "samples.png")
        plt.close(fig)
        written.append(str(out / "samples.png"))
    return written


def _data_range(rep: dict) -> tuple[float, float]:
    return (-0.5, 0.5) if rep["model"]["name"].startswith("mnist") else (-1.0, 1.0)


def _mosaic(imgs: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Up to 4 images [N, C, H, W] tiled 2 x 2, scaled to [0, 1] from the data range."""
    imgs = ((imgs.float() - lo) / (hi - lo)).clamp(0, 1)
    imgs = imgs.mean(1) if imgs.shape[1] != 3 else imgs.permute(0, 2, 3, 1)
    n = imgs.shape[0]
    while imgs.shape[0] < 4:
        imgs = torch.cat([imgs, torch.zeros_like(imgs[:1])])
    top = torch.cat([imgs[0], imgs[1]], dim=1)
    bottom = torch.cat([imgs[2], imgs[3]], dim=1)
    return torch.cat([top, bottom], dim=0) if n > 2 else top
