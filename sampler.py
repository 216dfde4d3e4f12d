"""The Sampler: a field, a solver and a grid; `run()` draws noise, plans on the host and calls the one loop."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from diffsolve.capture import GraphedRun
from diffsolve.checks import MAX_STEPS, check_device, check_steps
from diffsolve.errors import InvalidArgument, check_bool, check_choice, check_int
from diffsolve.field import Field, as_field, check_sample_shape, device_of
from diffsolve.grids import (is_increasing, make_grid, refuse_increasing, resolve_field_grid, takes_option,
                             validate_grid)
from diffsolve.loop import Evaluator, SampleResult, StepInfo, integrate
from diffsolve.noise import NoiseSource, check_seed, draw_start
from diffsolve.sampler_hooks import (SamplerParts, TunedBudgets, field_correction, merge_correction,
                                     parts_from_scheduler, register_field_correction, register_scheduler_adapter,
                                     resolve_correction)
from diffsolve.solvers.base import Plan, Solver, get_solver

__all__ = ["Sampler", "SampleResult", "StepInfo", "SamplerParts", "RoundTrip", "register_scheduler_adapter",
           "register_field_correction", "as_dtype"]

FLOAT_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64, "half": torch.float16, "float": torch.float32, "double": torch.float64}

NOISE_SCALES = ("unit", "prior")     # noise= is standard normal / already scaled by the prior's std


def as_dtype(dtype: Any) -> torch.dtype | None:
    """A floating torch dtype from a dtype or its name in FLOAT_DTYPES; None stays None; else InvalidArgument."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype.replace("torch.", "")]
    raise InvalidArgument(f"dtype={dtype!r} is not a floating dtype; allowed values: {', '.join(FLOAT_DTYPES)}")


@dataclass
class RoundTrip:
    """Invert-then-sample with one solver and one grid: `error` is each sample's RMS distance to the data."""

    data: torch.Tensor
    noise: torch.Tensor                  # standard-normal latent (Sampler.run(noise=...) maps it back)
    reconstruction: torch.Tensor
    error: torch.Tensor                  # [batch] RMS over each sample's entries
    rms: float                           # RMS over the whole batch
    max_abs: float
    nfe_invert: int
    nfe_sample: int
    t: torch.Tensor                      # the inversion grid (increasing); sampling ran it reversed
    solver: str


def _agree(batch_size: int | None, seed: Any, batch: int, source: str) -> None:
    """batch_size=, a list of seeds and the noise or shape must name one batch size."""
    if batch_size is not None and batch_size != batch:
        raise InvalidArgument(f"batch_size={batch_size} disagrees with {source}, which holds {batch} samples")
    if isinstance(seed, list) and len(seed) != batch:
        raise InvalidArgument(f"seed= has {len(seed)} entries (one per sample) but {source} gives {batch} samples")


def default_solver_name(field: Field) -> str:
    """The model family's own sampler when its spec names one (consistency, shortcut), else an ODE solver."""
    spec = getattr(field, "spec", None)
    if spec is not None and spec.solver is not None:
        return spec.solver
    return "dpmpp_2m" if field.has_schedule else "heun"


class Sampler:
    """`Sampler(model).run(steps=5)`: solve the probability-flow ODE (or a plain flow) from noise to data.

    Args:
        model: a network, a plain function or a Field; `prediction`, `schedule`, `time_convention` ("flow": t = 0
            at the noise) and `sample_shape` (one sample, no batch) describe it (None: read from the model).
        solver: a registry name (`diffsolve.solvers.available_solvers()`) or a Solver; None: the model family's
            own sampler, else "dpmpp_2m" ("heun" without a schedule). `**solver_options` are its keywords.
        grid: a name in `diffsolve.grids.GRIDS`, a function `(steps, schedule, **options) -> times`, or an explicit
            list of times, with `grid_options` its keywords; None: the solver's grid, else the schedule's default.
        check_finite: a NaN/Inf model output raises NonFiniteError naming the step. progress: a progress bar.
        scheduler: a diffusers scheduler or its config: schedule, prediction, timesteps and solver read from it.
        skip_tuning: a `SkipSettings` or the JSON file `diffsolve tune skip` writes: scales the UNet's skips.
        correction: a correction file `diffsolve tune` wrote (or its object): the solver and grid it names, for the
            budgets it holds (run(steps=/nfe=) of another budget is refused); solver= and grid= must not disagree.
    Unknown solvers or grids, options the solver refuses and inputs that do not fit raise InvalidArgument.
    """

    def __init__(self, model: Any, solver: str | Solver | None = None, grid: Any = None, *,
                 prediction: str | None = None, schedule: Any = None, time_convention: str | None = None,
                 sample_shape: Sequence[int] | None = None, grid_options: dict | None = None,
                 check_finite: bool = True, progress: bool = True, scheduler: Any = None, skip_tuning: Any = None,
                 correction: Any = None, **solver_options: Any):
        if scheduler is not None:
            parts = parts_from_scheduler(model, scheduler, prediction, sample_shape)
            model, prediction, schedule, sample_shape = parts.field, None, None, None
            if grid is None and correction is None:          # a correction names its own solver and grid
                grid, grid_options = parts.grid, {**parts.grid_options, **(grid_options or {})}
            if solver is None and correction is None:
                solver, solver_options = parts.solver, {**parts.solver_options, **solver_options}
        self.field = as_field(model, prediction=prediction, schedule=schedule, time_convention=time_convention,
                              sample_shape=check_sample_shape(sample_shape))
        if skip_tuning is not None:
            self.field = field_correction("skip_tuning")(self.field, skip_tuning)
        self.tuned: TunedBudgets | None = None       # the budgets of correction= (None: any budget)
        if correction is not None:          # the file's solver and grid; its budgets are checked by plan()
            runs = resolve_correction(self.field, correction)
            solver, grid, grid_options, solver_options = merge_correction(runs[0], solver, grid, grid_options,
                                                                          solver_options)
            self.tuned = TunedBudgets(runs, lambda c: Sampler(self.field, correction=c, check_finite=check_finite,
                                                               progress=progress))
        self.solver = get_solver(solver or default_solver_name(self.field), **solver_options)
        if self.solver.needs_schedule:
            self.field.require_schedule(self.solver.name)
        sch = self.field.schedule
        if grid is None and hasattr(self.solver, "grid_for"):
            grid = self.solver.grid_for(self.field)          # a learned solver's own grid (AMED)
        grid = resolve_field_grid(grid, self.field, self.solver)   # 'gits' / 'learned': tuned for this model
        self.grid = grid if grid is not None else (sch.default_grid if sch is not None else "time_uniform")
        if grid_options is not None and not isinstance(grid_options, Mapping):
            raise InvalidArgument(f"grid_options={grid_options!r}: must be a mapping of option -> value")
        self.grid_options = dict(grid_options or {})
        self.check_finite = check_bool("check_finite", check_finite)
        self.progress = check_bool("progress", progress)

    def times(self, steps: int) -> torch.Tensor:
        """The sampling grid of `steps` steps (float64 times, decreasing), from `grid` and `grid_options`."""
        return make_grid(self.grid, steps, self.field.schedule, **self.grid_options)

    def steps_for_nfe(self, nfe: int) -> int:
        """The most steps whose run makes at most `nfe` model evaluations."""
        nfe = check_int("nfe", nfe, 1)
        ends_zero = self._ends_at_zero()
        per_eval = self.field.evals_per_call
        calls = lambda n: self.solver.model_calls(n, self.field, ends_zero) * per_eval  # noqa: E731
        if calls(1) > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small for solver {self.solver.name!r}, which needs at least "
                                  f"{calls(1)} model evaluations (one step)")
        # calls(n) grows with n: double to bracket the answer, then bisect (never walk up to a huge budget)
        lo, hi = 1, 2
        while calls(hi) <= nfe:
            lo, hi = hi, 2 * hi
        hi -= 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if calls(mid) <= nfe:
                lo = mid
            else:
                hi = mid - 1
        return self.solver.fit_steps(lo)

    def _ends_at_zero(self) -> bool:
        if isinstance(self.grid, (str,)) or callable(self.grid):
            return self.grid_options.get("final", "zero") == "zero"
        return float(torch.as_tensor(self.grid, dtype=torch.float64)[-1]) == 0.0

    def plan(self, steps: int | None = None, nfe: int | None = None) -> Plan:
        """The Plan (grid, coefficients) of `steps` steps, or of the most that fit `nfe` evaluations, on the host."""
        explicit = not (isinstance(self.grid, str) or callable(self.grid))
        if self.tuned is not None:
            target, steps = self.tuned.choose(self, steps, nfe)
            if target is not self:
                return target.plan(steps)
            nfe = None
        if steps is not None and nfe is not None:
            raise InvalidArgument("give steps= or nfe=, not both")
        if steps is None and nfe is None and not explicit and not self.solver.adaptive:
            raise InvalidArgument("steps= or nfe= is missing: say how many steps (or model evaluations) to take")
        if steps is not None:
            steps = check_steps(check_int("steps", steps, 1))
        if nfe is not None:
            nfe = check_int("nfe", nfe, 1)
        if self.solver.adaptive:
            # No fixed grid: the solver takes the grid's span (or the grid, for fixed-step methods), nfe= its budget
            return self.solver.plan_adaptive(self.field, self.times(steps if steps is not None or explicit else 2),
                                             steps=steps, nfe=nfe)
        if nfe is not None and not explicit:
            steps = check_steps(self.steps_for_nfe(nfe), nfe)
        plan = self.solver.plan(self.field, self.times(steps))
        if nfe is not None and plan.nfe * self.field.evals_per_call > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small: solver {self.solver.name!r} needs "
                                  f"{plan.nfe * self.field.evals_per_call} model evaluations on this grid")
        return plan

    def initial_noise(self, *, noise: torch.Tensor | None, shape: Sequence[int] | None, batch_size: int | None,
                      seed: Any, generator: torch.Generator | None, device: Any, dtype: Any) -> torch.Tensor:
        """The starts: `noise=` checked and moved, else drawn from the field's source for `shape=` or `batch_size=`."""
        sample_shape = self.field.sample_shape
        if noise is not None:
            if not isinstance(noise, torch.Tensor):
                raise InvalidArgument(f"noise= must be a torch.Tensor, got {type(noise).__name__}")
            want = tuple(shape) if shape is not None else (
                (noise.shape[0], *sample_shape) if sample_shape is not None else None)
            if want is not None and tuple(noise.shape) != want:
                raise InvalidArgument(f"noise has shape {tuple(noise.shape)} but the model expects {want} "
                                      "(batch, *sample_shape)")
            if not noise.is_floating_point():
                raise InvalidArgument(f"noise= must be a floating-point tensor, got dtype {noise.dtype}")
            _agree(batch_size, seed, noise.shape[0], "noise=")
            return noise.to(device=device or noise.device, dtype=dtype or noise.dtype)
        if shape is not None:
            if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size)) or not shape:
                raise InvalidArgument(f"shape={shape!r}: must be (batch, *sample_shape), a tuple of integers")
            shape = tuple(check_int(f"shape[{i}]", v, 0 if i == 0 else 1) for i, v in enumerate(shape))
            if sample_shape is not None and shape[1:] != tuple(sample_shape):
                raise InvalidArgument(f"shape={shape} does not fit the model, whose samples have shape "
                                      f"{tuple(sample_shape)}: pass shape=(batch, *{tuple(sample_shape)})")
            _agree(batch_size, seed, shape[0], "shape=")
        else:
            if sample_shape is None:
                raise InvalidArgument("shape= is missing: the model does not declare its sample shape; "
                                      "pass shape=(batch, ...) or noise=")
            batch = batch_size if batch_size is not None else (len(seed) if isinstance(seed, list) else 1)
            _agree(batch_size, seed, batch, "batch_size=")
            shape = (batch, *sample_shape)
        return draw_start(shape, source=self.field.source, seed=seed, generator=generator, device=device, dtype=dtype)

    def run(self, steps: int | None = None, *, nfe: int | None = None, noise: torch.Tensor | None = None,
            shape: Sequence[int] | None = None, batch_size: int | None = None, seed: Any = None,
            generator: torch.Generator | None = None, callback: Callable[[StepInfo], None] | None = None,
            return_trajectory: bool = False, progress: bool | None = None, device: Any = None, dtype: Any = None,
            grad: bool = False, noise_scale: str = "unit", **model_kwargs: Any) -> SampleResult:
        """Sample from noise to data in `steps` steps, or in at most `nfe` model evaluations.

        Args:
            steps: the number of steps; None with an explicit grid: the grid's own count.
            nfe: a model-evaluation budget instead of steps (the most steps that fit).
            noise: the starts `(batch, *sample_shape)`; None: drawn from the field's source (`seed`, `generator`).
            shape: `(batch, *sample_shape)` of the noise to draw; None: `batch_size` samples of the model's shape.
            batch_size: samples to draw (0: an empty result, no model call); None: from noise, shape or seeds, or 1.
            seed: an integer, or one per sample (sample i then does not depend on the batch); None: global RNG.
            generator: a torch.Generator to draw from instead of `seed`. Both also seed stochastic solvers.
            callback: called with a StepInfo after each step.
            return_trajectory: keep every step's state in `result.trajectory`.
            progress: show a progress bar; None: the Sampler's setting.
            device: where to run; None: the model's device (or the noise's).
            dtype: the state's dtype; None: that of `noise=`, else float32 whatever the model's dtype.
            grad: record the autograd graph through the whole run (training through the sampler); default: none.
            noise_scale: "unit": `noise=` is standard normal, scaled here by the prior's std at the first time;
                "prior": already scaled (k-diffusion's `noise * sigmas[0]`), used as is.
            **model_kwargs: passed to the network at every call (e.g. class labels).

        Returns:
            SampleResult: samples, the NFE the model received, the grid, the trajectory if asked.

        Raises:
            InvalidArgument: a bad or disagreeing argument. NonFiniteError: a NaN/Inf model output.
        """
        if self.tuned is not None and self.tuned.multi:        # a file of several runs: the one for this budget
            target, steps = self.tuned.choose(self, steps, nfe)
            return target.run(steps, noise=noise, shape=shape, batch_size=batch_size, seed=seed, generator=generator,
                              callback=callback, return_trajectory=return_trajectory, progress=progress,
                              device=device, dtype=dtype, grad=grad, noise_scale=noise_scale, **model_kwargs)
        plan = self.plan(steps, nfe)
        check_choice("noise_scale", noise_scale, NOISE_SCALES)
        given = noise is not None
        dtype = as_dtype(dtype)
        seed = check_seed(seed)
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, 0)      # 0: an empty batch, an empty result
        device = check_device(device)
        noise = self.initial_noise(noise=noise, shape=shape, batch_size=batch_size, seed=seed, generator=generator,
                                   device=device or device_of(self.field.model), dtype=dtype)
        if noise_scale == "unit" and given:
            self._check_unit_noise(noise, float(plan.t[0]))
        step_noise = None
        if not self.solver.deterministic:
            step_noise = NoiseSource.for_run(noise.shape, seed=seed, generator=generator, device=noise.device,
                                             dtype=noise.dtype)
        return self.solve(plan, noise, callback=callback, return_trajectory=return_trajectory,
                          progress=progress, step_noise=step_noise, grad=grad, noise_scale=noise_scale,
                          **model_kwargs)

    def _check_unit_noise(self, noise: torch.Tensor, t0: float) -> None:
        """Catch noise already scaled by the prior (std near sigma_max, k-diffusion's habit) given as unit noise."""
        prior = self.field.schedule.prior_std(t0) if self.field.schedule is not None else 1.0
        if prior < 4.0 or noise.numel() < 16:
            return                       # unit and prior noise are not told apart by their spread here
        std = float(noise.detach().float().std())        # one host read, before the loop
        if prior / 2.0 <= std <= prior * 2.0:
            raise InvalidArgument(
                f"noise= has std {std:.3g}, close to the prior's std {prior:.3g} at the first time, but "
                "noise_scale='unit' expects standard normal noise (which the sampler scales itself); pass "
                "noise_scale='prior' if the noise is already scaled (k-diffusion's noise * sigmas[0]), or unit noise")

    def solve(self, plan: Plan, noise: torch.Tensor, *, callback: Callable[[StepInfo], None] | None = None,
              return_trajectory: bool = False, progress: bool | None = None, step_noise: NoiseSource | None = None,
              grad: bool = False, noise_scale: str = "unit", **model_kwargs: Any) -> SampleResult:
        """Run a prepared plan from standard-normal `noise` (scaled here by the prior's std at the first time), or
        with `noise_scale="prior"` from noise already at the prior's scale (used as is); other keywords as in `run`.
        `step_noise` feeds stochastic solvers (`ev.noise(j)`); without it one is seeded from torch's global RNG.
        """
        check_bool("grad", grad)
        check_bool("return_trajectory", return_trajectory)
        check_choice("noise_scale", noise_scale, NOISE_SCALES)
        t0 = float(plan.t[0])
        scale = self.field.schedule.prior_std(t0) if self.field.schedule is not None else 1.0
        if noise_scale == "prior":
            scale = 1.0
        if not self.solver.deterministic and step_noise is None:
            step_noise = NoiseSource.for_run(noise.shape, device=noise.device, dtype=noise.dtype)
        ev = Evaluator(self.field, model_kwargs, self.check_finite,
                       step_noise if not self.solver.deterministic else None)
        show = self.progress if progress is None else check_bool("progress", progress)
        with torch.set_grad_enabled(grad):
            return integrate(self.solver, ev, noise * scale, plan, callback=callback,
                             return_trajectory=return_trajectory, progress=show)

    def graphed(self, steps: int | None = None, *, nfe: int | None = None, shape: Sequence[int] | None = None,
                batch_size: int | None = None, device: Any = None, dtype: Any = None, **model_kwargs: Any):
        """The fixed-step loop captured in a CUDA graph (CUDA only); `.run(noise)` / `.run(seed=)` replays it.
        `shape` defaults to `batch_size` (or 1) samples; dtype to float32; returns a `capture.GraphedRun`."""
        if shape is None:
            if self.field.sample_shape is None:
                raise InvalidArgument("shape= is missing: the model does not declare its sample shape")
            shape = (batch_size or 1, *self.field.sample_shape)
        device = check_device(device)
        return GraphedRun(self, self.plan(steps, nfe), shape, device=device or device_of(self.field.model),
                          dtype=as_dtype(dtype) or torch.float32, **model_kwargs)

    def inversion_times(self, steps: int | None = None) -> torch.Tensor:
        """The inversion grid of `steps` steps (None for an explicit grid): the sampling grid reversed, validated.

        Named grids (those with a `final` option) get `final="min"` unless grid_options say otherwise: the inversion
        starts at t_min, the data taken as the state there. Grid functions without it (GITS, learned) and explicit
        grids (reversed if decreasing) are used as they come; either may start at exactly t = 0 (see `invert`)."""
        sch = self.field.schedule
        if isinstance(self.grid, str) or callable(self.grid):
            opts = dict(self.grid_options)
            if "final" not in opts and takes_option(self.grid, "final"):
                opts["final"] = "min"
            t = make_grid(self.grid, steps, sch, **opts).flip(0)
        else:
            t = torch.as_tensor(self.grid, dtype=torch.float64).clone()
            if not is_increasing(t):
                t = t.flip(0)
            if steps is not None and t.numel() - 1 != steps:
                raise InvalidArgument(f"steps={steps} does not match the explicit grid of {t.numel() - 1} steps")
        validate_grid(t, sch, "increasing")
        return t

    def _zero_start(self, t: torch.Tensor) -> bool:
        return self.field.has_schedule and float(t[0]) == 0.0

    def inversion_plan(self, steps: int | None = None, nfe: int | None = None) -> tuple[torch.Tensor, Plan | None]:
        """(inversion grid, the solver's plan of it, None if no step needs one); with nfe=, the most steps that fit:
        a grid that starts at exactly t = 0 is planned from its second point (invert takes that step, no model call)."""
        why = self.solver.inversion_refusal()
        if why is not None:
            raise refuse_increasing(self.solver.name, why)
        explicit = not (isinstance(self.grid, str) or callable(self.grid))
        if steps is not None and nfe is not None:
            raise InvalidArgument("give steps= or nfe=, not both")
        if steps is None and nfe is None and not explicit:
            raise InvalidArgument("steps= or nfe= is missing: say how many steps (or model evaluations) to take")
        if steps is not None:
            steps = check_steps(check_int("steps", steps, 1))

        def planned(n):
            t = self.inversion_times(n)
            rest = t[1:] if self._zero_start(t) else t
            plan = self.solver.plan(self.field, rest) if rest.numel() >= 2 else None
            return t, plan

        def cost(plan):
            return (plan.nfe if plan is not None else 0) * self.field.evals_per_call

        if nfe is None or explicit:
            t, plan = planned(steps)
        else:
            nfe = check_int("nfe", nfe, 1)
            t, plan = planned(1)
            if cost(plan) > nfe:
                raise InvalidArgument(f"nfe={nfe} is too small for solver {self.solver.name!r}, which needs "
                                      f"{cost(plan)} model evaluations for one step")
            lo = self._most_steps_within(nfe, lambda n: cost(planned(n)[1]))
            t, plan = planned(lo)
        if nfe is not None and cost(plan) > nfe:
            raise InvalidArgument(f"nfe={nfe} is too small: solver {self.solver.name!r} needs {cost(plan)} model "
                                  "evaluations to invert on this grid")
        return t, plan

    def _most_steps_within(self, nfe: int, cost: Callable[[int], int]) -> int:
        """The most inversion steps whose cost fits `nfe` (cost(1) fits): double, then bisect, up to MAX_STEPS."""
        try:                                      # refuse a huge budget before planning anything big
            check_steps(self.steps_for_nfe(nfe), nfe)
        except InvalidArgument as e:
            if "too small" not in str(e):         # the free step out of t = 0 may still fit
                raise
        lo, hi = 1, 2
        while hi <= MAX_STEPS and cost(hi) <= nfe:
            lo, hi = hi, 2 * hi
        hi = min(hi, MAX_STEPS + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid) <= nfe else (lo, mid)
        return lo

    def invert(self, x0: torch.Tensor, steps: int | None = None, *, nfe: int | None = None,
               callback: Callable[[StepInfo], None] | None = None, return_trajectory: bool = False,
               progress: bool | None = None, dtype: Any = None, grad: bool = False,
               **model_kwargs: Any) -> SampleResult:
        """Integrate the probability-flow ODE from data `x0` to noise on the sampling grid reversed.

        Args:
            x0: a floating batch of data `(batch, *sample_shape)`; never scaled by the prior's std. Other keywords
                (steps, nfe, callback, return_trajectory, progress, dtype, grad, model keywords) as in `run`.

        Returns:
            SampleResult whose `.samples` is the latent as standard-normal noise: the state at the grid's noisiest
            time over the prior's std there, so `run(noise=result.samples)` (same solver and steps) maps it back
            to `x0` up to the solver's error. `stats["x_end"]` is the unscaled state; `.nfe` the evaluations made.

        Raises:
            InvalidArgument: a stochastic sampler or adaptive span solver (only deterministic fixed-step ones
                invert: Euler/DDIM, Runge-Kutta, the DPM-Solver family, UniPC, DEIS, iPNDM, LMS), or a bad `x0`.

        AFS and `lower_order_final` (sampling's rules) do not apply. Named grids start at t_min, never where the slope
        is 0/0. A grid starting at t = 0 begins with a step with no model call: D = x0 and E[eps | x0] = E[eps] = 0
        (noise is independent of data), so DDIM gives x(t1) = alpha(t1) x0; no eps-network runs at zero noise."""
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise InvalidArgument("x0 must be a floating-point torch.Tensor (a batch of data)")
        want = self.field.sample_shape
        if want is not None and tuple(x0.shape[1:]) != tuple(want):
            raise InvalidArgument(f"x0 has shape {tuple(x0.shape)} but the model expects (batch, *{tuple(want)})")
        check_bool("grad", grad)
        check_bool("return_trajectory", return_trajectory)
        t, plan = self.inversion_plan(steps, nfe)
        dtype = as_dtype(dtype)
        x = x0.to(dtype) if dtype is not None else x0
        ev = Evaluator(self.field, model_kwargs, self.check_finite)
        show = self.progress if progress is None else check_bool("progress", progress)
        zero = self._zero_start(t)
        traj = [x] if return_trajectory else None
        with torch.set_grad_enabled(grad):
            if zero:
                p0, p1 = self.field.at(0.0), self.field.at(float(t[1]))
                x = x * (p1.alpha / p0.alpha)     # DDIM from t = 0 with D = x0 and eps_hat = 0: no model call
                if traj is not None:
                    traj.append(x)
                if callback is not None:
                    callback(StepInfo(0, 0.0, float(t[1]), x, x0, 0))
            if plan is not None:
                cb = callback
                if zero and callback is not None:
                    cb = lambda info: callback(StepInfo(info.i + 1, info.t, info.t_next, info.x,  # noqa: E731
                                                        info.denoised, info.nfe))
                res = integrate(self.solver, ev, x, plan, callback=cb, return_trajectory=return_trajectory,
                                progress=show)
                x = res.samples
                if traj is not None:
                    traj.extend(res.trajectory[1:])
        t_end = float(t[-1])
        scale = self.field.schedule.prior_std(t_end) if self.field.schedule is not None else 1.0
        return SampleResult(samples=x / scale, nfe=ev.nfe, steps=t.numel() - 1, t=t, solver=self.solver.name,
                            trajectory=torch.stack(traj) if traj is not None else None,
                            stats={"direction": "increasing", "x_end": x, "prior_std": scale, "zero_start": zero})

    def round_trip(self, x0: torch.Tensor, steps: int | None = None, *, nfe: int | None = None,
                   dtype: Any = None, **model_kwargs: Any) -> RoundTrip:
        """Invert `x0` and sample the latent back with the same solver on the same grid (reversed); report the
        error against `x0`. `nfe=` bounds the inversion's model evaluations (sampling makes about as many)."""
        inv = self.invert(x0, steps, nfe=nfe, dtype=dtype, progress=False, **model_kwargs)
        back = self.solver.plan(self.field, inv.t.flip(0))
        rec = self.solve(back, inv.samples, progress=False, **model_kwargs)
        ref = x0.to(rec.samples.dtype)
        diff = (rec.samples - ref).reshape(ref.shape[0], int(ref[0].numel()) if ref.shape[0] else 0)
        err = diff.pow(2).mean(dim=1).sqrt()
        empty = diff.numel() == 0                 # an empty batch: no error to measure (NaN)
        return RoundTrip(data=x0, noise=inv.samples, reconstruction=rec.samples, error=err,
                         rms=float(diff.pow(2).mean().sqrt()), max_abs=math.nan if empty else float(diff.abs().max()),
                         nfe_invert=inv.nfe, nfe_sample=rec.nfe, t=inv.t, solver=self.solver.name)
