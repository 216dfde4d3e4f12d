"""Fixed comparison tables as presets of `diffsolve bench --preset NAME` (markdown tables on stdout).

    diffsolve bench --preset diffusers [--skip-mnist] [--nfe 3,4,5,6,8,10,15,20] [--ref-steps 2000]
        fast ODE solvers: endpoint RMSE vs NFE on GaussianMixtureProblem.default() and on the shared MNIST DDPM
        (karras grid and diffusers' own timesteps), and diffusers' schedulers on the same network and noise.
    diffsolve bench --preset adaptive [--quick] [--rtols 1e-2,1e-3]
        DPM-Solver-12/23, dopri5 and bosh3 at several rtol: NFE, accepted and rejected steps, RMSE, seconds.
    diffsolve bench --preset sde [--quick] [--steps 10,20]
        SDE samplers scored by distribution metrics on the mixture: sliced W1 to exact data samples and the exact
        log-likelihood (an SDE sample has no single "right" endpoint to compare with).
    diffsolve bench --preset overhead [--batch-size 256] [--repeats 15]
        the sampling loop's own cost against diffusers' and k-diffusion's (bench.overhead).
    diffsolve bench --preset skip [--quick] [--nfe 3,5,7,9,19] [--models mnist-unet,mnist-unet-deep]
        Skip-Tuning on the built-in UNets: rho tuned per solver on tuning noise, then FD, classifier confidence and
        endpoint RMSE with and without it on held-out noise (bench.skip_table).
    diffsolve bench --preset learned [--nfe 3,5,7,9] [--batch-size 64]
        the learned corrections shipped for the built-in UNet (AMED, GITS, learned grids) beside the best un-learned
        solver and grid at each NFE, endpoint RMSE on held-out noise, with their training cost (corrections.report).

`--batch-size` and `--solvers` shrink or pick the rows; everything runs on the CPU, one thread, in the tables'
dtypes (float64 on the mixture, the model's float32 on the MNIST DDPM).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Sequence

import torch

from diffsolve.bench.adaptive_sde_tables import adaptive_report, sde_report
from diffsolve.bench.models import SHARED
from diffsolve.bench.overhead import loop_overhead
from diffsolve.bench.skip_table import skip_report
from diffsolve.corrections.report import evaluate as evaluate_learned, table as learned_table
from diffsolve.errors import InvalidArgument
from diffsolve.pretrained_adapters import load_mnist_ddpm
from diffsolve.pretrained_adapters.diffusers import diffusers_grid
from diffsolve.problems import GaussianMixtureProblem
from diffsolve.sampler import Sampler

PRESETS = ("diffusers", "adaptive", "sde", "overhead", "skip", "learned")
MNIST_DDPM = SHARED / "models" / "mnist-ddpm-eps.safetensors"
FAST_NFES = (3, 4, 5, 6, 8, 10, 15, 20)
FAST_GRID = "karras"     # our grid on the MNIST DDPM (EDM rho = 7 over its sigma range, then 0)
FAST_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpm_solver_2", "dpm_solver_3", "unipc_bh1",
                "unipc_bh2", "deis", "ipndm", "ipndm_v", "lms", "rk4")
# The settings each preset reads; setting any other is refused (it would be silently ignored).
PRESET_OPTIONS = {
    "diffusers": ("nfe", "batch_size", "solvers", "skip_mnist", "ref_steps"),
    "adaptive": ("batch_size", "rtols", "quick"),
    "sde": ("batch_size", "steps", "quick"),
    "overhead": ("batch_size", "repeats"),
    "skip": ("nfe", "solvers", "models", "quick", "out"),
    "learned": ("nfe", "batch_size"),
}


def _positive(name: str, values, kind: type) -> None:
    if values is None:
        return
    ok = isinstance(values, tuple) and len(values) > 0 and all(
        isinstance(v, kind) and not isinstance(v, bool) and v > 0 and (kind is int or math.isfinite(v))
        for v in values)
    if not ok:
        raise InvalidArgument(f"{name}={values!r}: give a non-empty tuple of positive {kind.__name__}s")


@dataclass(frozen=True)
class PresetSettings:
    """What one preset table is run with; None: the preset's own default (see the module docstring).

    Only the fields the preset reads (`PRESET_OPTIONS`) may differ from their defaults: any other is refused
    rather than ignored (InvalidArgument, as is a non-positive count).

    Attributes:
        preset: The preset's name, a key of `PRESETS`.
        nfe: NFE budgets (columns).
        batch_size: Number of samples.
        solvers: diffsolve solver names (rows).
        skip_mnist: diffusers: leave out the shared MNIST DDPM (the slow part).
        ref_steps: diffusers: steps of the dpmpp_3m reference solve (at least 2).
        rtols: adaptive: relative tolerances.
        steps: sde: step counts.
        quick: adaptive, sde, skip: fewer samples and settings.
        models: skip: bench model names.
        out: skip: folder for skip_tuning.json and its sample grid.
        repeats: overhead: timed solves per implementation.
    """

    preset: str
    nfe: tuple[int, ...] | None = None
    batch_size: int | None = None
    solvers: tuple[str, ...] | None = None
    skip_mnist: bool = False                  # diffusers: leave out the shared MNIST DDPM (the slow part)
    ref_steps: int = 2000                     # diffusers: steps of the dpmpp_3m reference solve
    rtols: tuple[float, ...] | None = None    # adaptive
    steps: tuple[int, ...] | None = None      # sde
    quick: bool = False                       # adaptive, sde, skip: fewer samples and settings
    models: tuple[str, ...] | None = None     # skip: bench models
    out: str | Path | None = None             # skip: folder for skip_tuning.json and its sample grid
    repeats: int | None = None                # overhead: timed solves per implementation

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise InvalidArgument(f"preset={self.preset!r}: one of {', '.join(PRESETS)}")
        for f in fields(self):
            if f.name != "preset" and f.name not in PRESET_OPTIONS[self.preset] \
                    and getattr(self, f.name) != f.default:
                raise InvalidArgument(f"preset {self.preset} does not use {f.name}={getattr(self, f.name)!r}")
        for name in ("batch_size", "repeats"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidArgument(f"{name}={v!r}: must be an integer >= 1")
        if isinstance(self.ref_steps, bool) or not isinstance(self.ref_steps, int) or self.ref_steps < 2:
            raise InvalidArgument(f"ref_steps={self.ref_steps!r}: must be an integer >= 2")
        _positive("nfe", self.nfe, int)
        _positive("steps", self.steps, int)
        _positive("rtols", self.rtols, float)
        for name in ("solvers", "models"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, tuple) or not v or not all(isinstance(x, str) and x for x in v)):
                raise InvalidArgument(f"{name}={v!r}: give a non-empty tuple of names")


def run_preset(cfg: PresetSettings) -> int:
    """Print the preset's table(s) on stdout, each as soon as it is ready; CPU, one torch thread (restored after).

    Args:
        cfg: The preset and its settings.

    Returns:
        The exit status, 0.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in _PRESET_RUNS[cfg.preset](cfg):
            print(block, flush=True)
    finally:
        torch.set_num_threads(before)
    return 0


def _batch(cfg: PresetSettings, default: int) -> int:
    return default if cfg.batch_size is None else cfg.batch_size


def _diffusers(cfg: PresetSettings) -> Iterator[str]:
    nfes = FAST_NFES if cfg.nfe is None else cfg.nfe
    yield mixture_section(_batch(cfg, 256), nfes, cfg.ref_steps, cfg.solvers)
    if not cfg.skip_mnist:
        yield ""
        yield mnist_section(_batch(cfg, 4), nfes, cfg.ref_steps, cfg.solvers)


def _adaptive(cfg: PresetSettings) -> Iterator[str]:
    rtols = cfg.rtols if cfg.rtols is not None else ((1e-2, 1e-3) if cfg.quick else (0.05, 1e-2, 1e-3, 1e-4))
    yield adaptive_report(_batch(cfg, 64 if cfg.quick else 256), rtols)


def _sde(cfg: PresetSettings) -> Iterator[str]:
    n = _batch(cfg, 1000 if cfg.quick else 2000)
    steps = cfg.steps
    yield sde_report(n, steps if steps is not None else ((10, 20) if cfg.quick else (5, 10, 20, 40)),
                     steps if steps is not None else ((16,) if cfg.quick else (16, 32, 64)))


def _overhead(cfg: PresetSettings) -> Iterator[str]:
    yield loop_overhead(batch=_batch(cfg, 256), repeats=15 if cfg.repeats is None else cfg.repeats)[1]


def _skip(cfg: PresetSettings) -> Iterator[str]:
    yield skip_report(cfg.nfe, cfg.solvers, cfg.models, cfg.quick, cfg.out)


def _learned(cfg: PresetSettings) -> Iterator[str]:
    yield learned_table(evaluate_learned(cfg.nfe if cfg.nfe else (3, 5, 7, 9), _batch(cfg, 64)))


_PRESET_RUNS = {"diffusers": _diffusers, "adaptive": _adaptive, "sde": _sde, "overhead": _overhead, "skip": _skip,
                "learned": _learned}


# ------------------------------------------------------------------------------------------------
# preset diffusers: fast ODE solvers, ours and diffusers', endpoint RMSE vs NFE
# ------------------------------------------------------------------------------------------------
def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square of a difference over all elements, computed in float64.

    Args:
        a: one tensor.
        b: the other, of the same shape.

    Returns:
        sqrt(mean((a - b)^2)).
    """
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def _cell(v: float | None, short: bool = False) -> str:
    if v is None:
        return "-"
    s = f"{v:.2e}" if math.isfinite(v) else "nan"
    return f"({s})" if short else s


def nfe_table(title: str, rows: dict[str, dict[int, tuple[float, int] | None]], nfes: Sequence[int]) -> str:
    """Markdown: one row per sampler, one column per NFE; '-' cannot run, '(x)' ran with fewer model calls.

    Args:
        title: Header of the first column.
        rows: Sampler name -> {nfe: (RMSE, NFE used) or None}.
        nfes: The columns' NFE budgets.

    Returns:
        The table.
    """
    lines = [f"| {title} | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for name, cells in rows.items():
        out = []
        for n in nfes:
            c = cells.get(n)
            out.append("-" if c is None else _cell(c[0], short=c[1] < n))
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def solver_rows(model, noise, ref, nfes, solvers, grid=None, grid_options=None) -> dict:
    """name -> {nfe: (RMSE to ref, NFE used) or None} for our solvers (default FAST_SOLVERS) on one grid.

    Args:
        model: The model or problem sampled.
        noise (torch.Tensor): Initial noise shared by every run.
        ref (torch.Tensor): Reference samples from the same noise.
        nfes (Sequence[int]): NFE budgets.
        solvers (Sequence[str] | None): Solver names; empty or None takes FAST_SOLVERS.
        grid (str | None): Grid name; None takes the Sampler's default.
        grid_options (dict | None): Options of the grid.

    Returns:
        The rows; a solver that fails at a budget gets None there.
    """
    rows: dict[str, dict] = {}
    for name in solvers or FAST_SOLVERS:
        rows[name] = {}
        for n in nfes:
            try:
                s = Sampler(model, name, grid, grid_options=grid_options, progress=False)
                with torch.no_grad():
                    r = s.run(nfe=n, noise=noise)
                rows[name][n] = (rmse(r.samples, ref), r.nfe)
            except Exception:  # noqa: BLE001 - a solver that cannot run at this budget shows '-'
                rows[name][n] = None
    return rows


def mixture_section(batch: int, nfes: Sequence[int], ref_steps: int, solvers: Sequence[str] | None = None) -> str:
    """Our solvers on the Gaussian mixture (float64) against a dpmpp_3m reference.

    Args:
        batch: Number of samples (noise seed 0).
        nfes: NFE budgets.
        ref_steps: Steps of the reference (an rk4 check takes half as many).
        solvers: Solver names; None takes FAST_SOLVERS.

    Returns:
        The section's text: a header with the reference's own error, then the RMSE table.
    """
    prob = GaussianMixtureProblem.default()
    noise = torch.randn(batch, prob.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = Sampler(prob, "dpmpp_3m", progress=False).run(steps=ref_steps, noise=noise).samples
        chk = Sampler(prob, "rk4", progress=False).run(steps=ref_steps // 2, noise=noise).samples
    lines = [f"GaussianMixtureProblem.default() (EDM, default karras grid, float64), batch {batch}; reference "
             f"dpmpp_3m {ref_steps} steps; RMSE(ref, rk4 {ref_steps // 2} steps) = {rmse(ref, chk):.2e}",
             nfe_table("diffsolve (mixture)", solver_rows(prob, noise, ref, nfes, solvers), nfes)]
    return "\n\n".join(lines)


class MnistAsUNet(torch.nn.Module):
    """diffusers' calling convention for the MNIST DDPM: unet(sample, timestep) with the integer timestep n.

    Args:
        model: the MNIST DDPM (called with the time timestep / 1000).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The model's noise prediction.

        Args:
            sample: the noisy images.
            timestep: the integer timestep (a number or tensor, broadcast over the batch).

        Returns:
            The noise prediction at time timestep / 1000.
        """
        t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device).reshape(-1)
        return self.model(sample, t.expand(sample.shape[0]) / 1000.0)


def diffusers_schedulers(betas: torch.Tensor) -> dict:
    """diffusers' schedulers on these betas, each with its default timesteps.

    Args:
        betas: The model's beta_t, passed as trained_betas.

    Returns:
        Name -> (scheduler, model calls per step).

    Raises:
        ImportError: diffusers is not installed.
    """
    import diffusers as D
    common = dict(num_train_timesteps=betas.numel(), trained_betas=betas.double().numpy())
    return {
        "DDIM": (D.DDIMScheduler(clip_sample=False, **common), 1),
        "EulerDiscrete": (D.EulerDiscreteScheduler(**common), 1),
        "HeunDiscrete": (D.HeunDiscreteScheduler(**common), 2),
        "DPMSolverMultistep(2)": (D.DPMSolverMultistepScheduler(solver_order=2, **common), 1),
        "DPMSolverMultistep(3)": (D.DPMSolverMultistepScheduler(solver_order=3, **common), 1),
        "DPMSolverSinglestep(2)": (D.DPMSolverSinglestepScheduler(solver_order=2, **common), 1),
        "DPMSolverSinglestep(3)": (D.DPMSolverSinglestepScheduler(solver_order=3, **common), 1),
        "UniPC(bh2)": (D.UniPCMultistepScheduler(solver_type="bh2", **common), 1),
        "UniPC(bh1, sigma_min)": (D.UniPCMultistepScheduler(solver_type="bh1", final_sigmas_type="sigma_min",
                                                            **common), 1),
        "DEIS(3)": (D.DEISMultistepScheduler(solver_order=3, **common), 1),
        "LMSDiscrete": (D.LMSDiscreteScheduler(**common), 1),
    }


def run_diffusers(scheduler, unet, noise: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """diffusers' documented sampling loop.

    Args:
        scheduler: A diffusers scheduler (copied, so it is not changed).
        unet: Called as unet(sample, timestep).
        noise: Standard-normal noise, scaled by the scheduler's init_noise_sigma.
        steps: Scheduler steps.

    Returns:
        (the samples, the number of model calls).
    """
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    x = noise * sch.init_noise_sigma
    calls = 0
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(sch.scale_model_input(x, t), t), t, x).prev_sample
            calls += 1
    return x, calls


def diffusers_rows(model, noise: torch.Tensor, ref: torch.Tensor, nfes: Sequence[int],
                   schedulers: dict | None = None) -> dict:
    """diffusers' schedulers on the shared MNIST DDPM, each at each NFE budget.

    Args:
        model: The MNIST DDPM (its beta_t gives the schedulers' betas).
        noise: Initial noise shared by every run.
        ref: Reference samples from the same noise.
        nfes: NFE budgets; a run needing more model calls, or failing, gets None.
        schedulers: From `diffusers_schedulers`; None builds them.

    Returns:
        Scheduler name -> {nfe: (RMSE to ref, model calls) or None}.
    """
    scheds = schedulers if schedulers is not None else diffusers_schedulers(model.beta_t.detach().clone())
    unet = MnistAsUNet(model)
    rows: dict[str, dict] = {}
    for name, (sch, per_step) in scheds.items():
        rows[name] = {}
        for n in nfes:
            steps = (n + 1) // 2 if per_step == 2 else n
            try:
                x, calls = run_diffusers(sch, unet, noise, steps)
                rows[name][n] = (rmse(x, ref), calls) if calls <= n else None
            except Exception:  # noqa: BLE001 - a scheduler that cannot run at this budget shows '-'
                rows[name][n] = None
    return rows


def mnist_section(batch: int, nfes: Sequence[int], ref_steps: int, solvers: Sequence[str] | None = None) -> str:
    """The shared MNIST DDPM driven by diffusers through `MnistAsUNet` and trained_betas = the model's beta_t, so
    both libraries use the same alphas_cumprod (up to float32 cumprod round-off, printed). All runs and the
    reference end at zero noise.

    Args:
        batch: Number of images (noise seed 0).
        nfes: NFE budgets.
        ref_steps: Steps of the dpmpp_3m reference on the log-SNR grid.
        solvers: Solver names; None takes FAST_SOLVERS.

    Returns:
        The section's text: header, our two tables, the alphas_cumprod check and diffusers' table.

    Raises:
        InvalidArgument: The shared MNIST DDPM file is missing.
    """
    if not MNIST_DDPM.is_file():
        raise InvalidArgument(f"{MNIST_DDPM} is missing (the shared model folder); pass --skip-mnist")
    model = load_mnist_ddpm(MNIST_DDPM)
    noise = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    with torch.no_grad():
        ref = Sampler(model, "dpmpp_3m", "logsnr_uniform", progress=False).run(steps=ref_steps, noise=noise).samples
        ref_half = Sampler(model, "dpmpp_3m", "logsnr_uniform", progress=False).run(
            steps=ref_steps // 2, noise=noise).samples
    lines = [f"MNIST DDPM, batch {batch}, reference dpmpp_3m {ref_steps} log-SNR steps "
             f"({time.time() - t0:.0f}s); RMSE(ref, same with {ref_steps // 2} steps) = {rmse(ref, ref_half):.2e}; "
             f"RMSE(ref, 0) = {rmse(ref, torch.zeros_like(ref)):.3f}",
             nfe_table(f"diffsolve, {FAST_GRID} grid (MNIST)",
                       solver_rows(model, noise, ref, nfes, solvers, FAST_GRID), nfes),
             # the same solvers on diffusers' own timesteps (DPMSolverMultistep's 'linspace', ending at zero noise)
             nfe_table("diffsolve, diffusers' timesteps (MNIST)",
                       solver_rows(model, noise, ref, nfes, solvers, diffusers_grid, {"style": "dpmsolver"}), nfes)]
    scheds = diffusers_schedulers(model.beta_t.detach().clone())
    ac_diff = next(iter(scheds.values()))[0].alphas_cumprod.double()
    lines.append(f"alphas_cumprod: diffusers (cumprod of trained_betas) vs the model's alpha_t buffer: max abs diff "
                 f"{float((ac_diff - model.alpha_t.double()).abs().max()):.2e}")
    lines.append(nfe_table("diffusers (MNIST)", diffusers_rows(model, noise, ref, nfes, scheds), nfes))
    return "\n\n".join(lines)
