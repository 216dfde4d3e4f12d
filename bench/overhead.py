"""Loop overhead: the same DPM-Solver++(2M) solve in diffsolve, diffusers and k-diffusion, with a model that costs
nothing, so that the times are the sampling loops' own cost.

    python scripts/loop_overhead.py [--batch-size 256] [--dim 3072] [--steps 10] [--repeats 15] [--threads 1]
    diffsolve bench --preset overhead [--batch-size 256] [--repeats 15]

The model is the identity eps-model (eps_hat(x, t) = x) on the DDPM linear-beta schedule (T = 1000). All three
solve the same problem from the same x_T = sigma(t_max) * noise: diffsolve on its default grid for this schedule
(diffusers' trailing timesteps), diffusers' DPMSolverMultistepScheduler with trailing spacing and a final sigma of
zero (its documented loop: set_timesteps, then model and step per timestep), and k-diffusion's sample_dpmpp_2m on
the same noise levels (sigma = s(t) of those timesteps, then 0) with the model wrapped as a k-diffusion denoiser
(x in the EDM frame x / alpha, D = x - s * eps(alpha x, t)). The samples' largest difference to diffsolve's is
printed beside the times; each time is the median of `repeats` full solves after one warm-up.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from typing import Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.k_diffusion_peer import load_k_diffusion_sampling
from diffsolve.field import ModelSpec
from diffsolve.pretrained_adapters import k_diffusion as k_functions
from diffsolve.sampler import Sampler
from diffsolve.schedules import VPDiscrete


class IdentityEps(torch.nn.Module):
    """eps_hat(x, t) = x: a model whose cost is nil, so the loop's own cost is all that is measured.

    Args:
        dim: Size of each flat sample.
        schedule: The discrete VP schedule the model declares.
    """

    def __init__(self, dim: int, schedule: VPDiscrete):
        super().__init__()
        self.dim = dim
        self.schedule = schedule

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The model's spec: eps prediction on its schedule, flat samples of size `dim`."""
        return ModelSpec(prediction="eps", schedule=self.schedule, sample_shape=(self.dim,))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Return `x` unchanged as the predicted noise.

        Args:
            x: The noisy samples.
            t: The times (unused).

        Returns:
            `x` itself.
        """
        return x


def _diffusers_scheduler(sch: VPDiscrete):
    import diffusers

    ac = sch.alphas_cumprod
    betas = torch.cat([1.0 - ac[:1], 1.0 - ac[1:] / ac[:-1]]).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # numpy 2 notices from inside diffusers
        return diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=sch.N, trained_betas=betas, prediction_type="epsilon", solver_order=2,
            timestep_spacing="trailing", final_sigmas_type="zero")


def build(batch: int, dim: int, steps: int,
          seed: int = 0) -> tuple[dict[str, Callable[[], torch.Tensor]], list[str]]:
    """The solvers of one problem, as name -> run() returning the samples, and notes: a line where the grids differ.

    Args:
        batch: Number of samples.
        dim: Size of each flat sample.
        steps: Solver steps of DPM-Solver++(2M).
        seed: Seed of the noise all runs share.

    Returns:
        The runs by name (peers that are not installed are left out) and the notes.

    Raises:
        RuntimeError: diffsolve's default grid does not span [0, t_max].
    """
    notes: list[str] = []
    sch = VPDiscrete.linear()
    model = IdentityEps(dim, sch)
    noise = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))
    t_max = float(sch.t_max)
    x_T = noise * sch.prior_std(t_max)

    ours = Sampler(model, "dpmpp_2m", progress=False)
    unchecked = Sampler(model, "dpmpp_2m", progress=False, check_finite=False)
    t_grid = ours.plan(steps=steps).t                                        # float64 schedule times, ends at 0
    if float(t_grid[0]) != t_max or float(t_grid[-1]) != 0.0:
        raise RuntimeError(f"diffsolve's default grid does not span [0, t_max]: {t_grid.tolist()}")

    runs: dict[str, Callable[[], torch.Tensor]] = {
        "diffsolve Sampler.run": lambda: ours.run(steps=steps, noise=noise).samples,
        "diffsolve Sampler(...).run, a new Sampler per call": (
            lambda: Sampler(model, "dpmpp_2m", progress=False).run(steps=steps, noise=noise).samples),
        "diffsolve, check_finite=False": lambda: unchecked.run(steps=steps, noise=noise).samples,
    }

    try:
        scheduler = _diffusers_scheduler(sch)
    except ImportError:
        scheduler = None
    if scheduler is not None:
        scheduler.set_timesteps(steps)
        theirs = torch.tensor([float(sch.t_from_index(float(t))) for t in scheduler.timesteps], dtype=torch.float64)
        if not torch.allclose(theirs, t_grid[:-1], rtol=0, atol=1e-12):
            # diffusers rounds trailing timesteps to integers: with steps not dividing T the grids differ a little
            notes.append(f"diffusers' timesteps differ from diffsolve's by up to "
                         f"{float((theirs - t_grid[:-1]).abs().max()):.2e} in t (steps do not divide T = {sch.N})")

        def run_diffusers() -> torch.Tensor:
            s = copy.deepcopy(scheduler)
            s.set_timesteps(steps)
            x = x_T
            for t in s.timesteps:
                out = model(x, t)
                x = s.step(out, t, x).prev_sample
            return x

        runs["diffusers DPMSolverMultistepScheduler"] = run_diffusers

    try:
        kd = load_k_diffusion_sampling()
    except ImportError:
        kd = None
    if kd is not None:
        s_grid = sch.edm_sigma(t_grid[:-1])
        sigmas = torch.cat([s_grid, torch.zeros(1, dtype=torch.float64)]).to(torch.float32)
        # The model time of each noise level, looked up by value: the denoiser gets only sigma.
        model_time = {float(sg): torch.full((batch,), float(sch.model_time(t)), dtype=torch.float32)
                      for sg, t in zip(sigmas[:-1].tolist(), t_grid[:-1].tolist())}

        def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = float(sigma[0])
            alpha = (1.0 + s * s) ** -0.5
            return x - s * model(x * alpha, model_time[s])

        x_start = x_T / float(sch.alpha(t_max))
        runs["k-diffusion sample_dpmpp_2m"] = lambda: kd.sample_dpmpp_2m(denoiser, x_start, sigmas, disable=True)
        runs["diffsolve sample_dpmpp_2m (k-diffusion function)"] = (
            lambda: k_functions.sample_dpmpp_2m(denoiser, x_start, sigmas))
    return runs, notes


def measure(runs: dict[str, Callable[[], torch.Tensor]], repeats: int) -> list[dict]:
    """Median wall time of each run (after one warm-up) and its samples' largest difference to the first's.

    The runs take turns (one repetition of each, then the next round), so a machine whose load drifts during the
    measurement slows every implementation alike instead of whichever ran last.

    Args:
        runs: The runs by name, from `build`; the first is the baseline of the differences.
        repeats: Timed rounds after the warm-up.

    Returns:
        One dict per run: name, median_s, min_s, maxdiff (largest |x - first's x|) and scale (first's max |x|).
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        outs = {name: run() for name, run in runs.items()}
        for _ in range(repeats):
            for name, run in runs.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
    first = next(iter(outs.values()))
    return [{"name": name, "median_s": statistics.median(times[name]), "min_s": min(times[name]),
             "maxdiff": float((outs[name].double() - first.double()).abs().max()),
             "scale": float(first.double().abs().max())} for name in runs]


def format_rows(rows: list[dict], steps: int) -> str:
    """The timing table as text, times also per step and relative to the first row.

    Args:
        rows: The rows from `measure`.
        steps: Solver steps of each run (for ms/step).

    Returns:
        The table, lines joined by newlines, ending with the samples' scale.
    """
    base = rows[0]["median_s"]
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'implementation'.ljust(w)}  {'median ms':>10} {'min ms':>8} {'ms/step':>8} {'x diffsolve':>11} "
             f"{'max |x - ours|':>15}"]
    for r in rows:
        lines.append(f"{r['name'].ljust(w)}  {1e3 * r['median_s']:>10.2f} {1e3 * r['min_s']:>8.2f} "
                     f"{1e3 * r['median_s'] / steps:>8.3f} {r['median_s'] / base:>11.2f} {r['maxdiff']:>15.2e}")
    lines.append(f"(samples' max |x| = {rows[0]['scale']:.3g})")
    return "\n".join(lines)


PEERS = ("diffusers DPMSolverMultistepScheduler", "k-diffusion sample_dpmpp_2m")


def loop_overhead(batch: int = 256, dim: int = 3072, steps: int = 10, repeats: int = 15,
                  threads: int = 1) -> tuple[list[dict], str]:
    """The comparison's rows (see `measure`) and its report as text; torch's thread setting is restored after.

    Args:
        batch: Number of samples (flag `--batch-size`).
        dim: Size of each flat sample.
        steps: Solver steps.
        repeats: Timed rounds per run.
        threads: Torch CPU threads during the measurement.

    Returns:
        The rows and the report (header, table, notes, peers left out).

    Raises:
        InvalidArgument: An argument is not an integer >= 1.
    """
    for name, value in (("batch_size", batch), ("dim", dim), ("steps", steps), ("repeats", repeats),
                        ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{name}={value!r}: must be an integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs, notes = build(batch, dim, steps)
        rows = measure(runs, repeats)
    finally:
        torch.set_num_threads(before)
    lines = [f"DPM-Solver++(2M), {steps} steps, identity eps-model on VP linear betas (T=1000), batch {batch} x "
             f"{dim} float32, CPU, {threads} thread(s), median of {repeats} runs", format_rows(rows, steps), *notes]
    lines += [f"{name}: not installed, left out" for name in sorted(set(PEERS) - set(runs))]
    return rows, "\n".join(lines)
