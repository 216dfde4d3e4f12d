"""`DiffsolveScheduler`: any fixed-grid diffsolve solver as a diffusers scheduler (diffusers imported here only).

A diffusers pipeline drives the loop: `set_timesteps(n)`, then for each `t in timesteps` it calls the network at
`scale_model_input(x, t)` and hands the output to `step(output, t, x)`. diffsolve solvers are stateless steps
`solver.step(ev, x0, t0, t1, state, coeffs)` that call the model through an evaluator. The scheduler bridges the
two with one small per-run object (`SchedulerRun`, reset by `set_timesteps`):

* `set_timesteps` plans the grid on the host, then *dry-runs* every step with an evaluator that records where
  the solver asks for the model (zeros as outputs): the model times of those calls are the `timesteps` the
  pipeline iterates over. A solver with several calls per step lists a step's inner points in order (diffusers'
  Heun lists timesteps twice); `order` is the solver's calls per step.
* `step` stores the network output; the solver's step is replayed from its start with the outputs received so
  far. If it asks for another call, the point it asks at is returned as `prev_sample` (the pipeline evaluates
  the network there next); otherwise the step is complete and its result is returned. Replays are cheap
  (linear algebra only) and exact, since a step is a pure function of its inputs, outputs and noise draws.

Step noise (ancestral and SDE solvers) comes from `step(..., generator=)` like diffusers' own stochastic
schedulers, or, with `seed=`, from diffsolve's counter-based `NoiseSource` keyed exactly as `Sampler.run(seed=)`
keys it, so a pipeline run and a Sampler run take the same noise. Each draw is made once per step and reused
by the replays.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

# the diffusers library is optional: the package's __getattr__ imports this module only when it is asked for
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffsolve.errors import InvalidArgument, check_choice, check_float
from diffsolve.field import EvalPoint, FieldOutput
from diffsolve.grids import from_sigmas, make_grid
from diffsolve.loop import Evaluator
from diffsolve.noise import NoiseSource
from diffsolve.pretrained_adapters.diffusers.config import config_of
from diffsolve.pretrained_adapters.diffusers.model import from_diffusers
from diffsolve.pretrained_adapters.diffusers.timesteps import grid_options_of, times_from_timesteps
from diffsolve.schedules import RectifiedFlow, VPDiscrete
from diffsolve.solvers.base import Plan, Solver, available_solvers, get_solver


class _NeedModel(Exception):
    """Raised inside a replayed step when the solver asks for a model output not received yet."""

    def __init__(self, x: torch.Tensor, p: EvalPoint):
        super().__init__()
        self.x, self.p = x, p


class _Feed:
    """The 'network' of the scheduler's field: returns the output the pipeline handed to `step`."""

    def __init__(self) -> None:
        self.output: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.output


class _DryEvaluator(Evaluator):
    """Records where a step evaluates the model; returns zeros (the points do not depend on the values)."""

    def __init__(self, field):
        super().__init__(field, {}, False, None)
        self.points: list[tuple[int, EvalPoint]] = []
        self.first_at_input: dict[int, bool] = {}
        self.input: torch.Tensor | None = None
        self.gen = torch.Generator().manual_seed(0)

    def noise(self, draw: int = 0) -> torch.Tensor:
        return torch.randn(1, 4, dtype=torch.float64, generator=self.gen)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput:
        if p.per_sample:
            raise InvalidArgument("this solver picks its times per sample inside the loop; a diffusers pipeline "
                                  "needs every timestep before the loop")
        if self.step not in self.first_at_input:
            self.first_at_input[self.step] = bool(torch.allclose(x, self.input, rtol=1e-12, atol=0))
        self.points.append((self.step, p))
        self.nfe += 1
        out = FieldOutput(torch.zeros_like(x))
        self.last = out
        return out


class _ReplayEvaluator(Evaluator):
    """Answers a step's k-th model call with the k-th output the pipeline gave; asks for the next one."""

    def __init__(self, field, feed: _Feed, outputs: list[torch.Tensor], noise_of):
        super().__init__(field, {}, False, None)
        self.feed, self.outputs, self.noise_of, self.calls = feed, outputs, noise_of, 0

    def noise(self, draw: int = 0) -> torch.Tensor:
        return self.noise_of(self.step, draw)

    def evaluate(self, x: torch.Tensor, p: EvalPoint, kind: str = "x0") -> FieldOutput:
        if self.calls >= len(self.outputs):
            raise _NeedModel(x, p)
        self.feed.output = self.outputs[self.calls]
        self.calls += 1
        try:
            out = self.field.evaluate(x, p, kind)
        finally:
            self.feed.output = None
        self.nfe += 1
        self.last = out
        return out


@dataclass
class SchedulerRun:
    """Everything one pipeline run changes (diffusers keeps it on the scheduler; here it is one object)."""

    plan: Plan
    calls: list[tuple[int, int]]              # (step i, call k within the step) for each listed timestep
    points: list[EvalPoint]                   # the point of each listed timestep
    index: int = 0                            # the next entry of `calls` that `step` receives
    x_start: torch.Tensor | None = None       # the state at the start of the current step
    state: Any = None                         # the solver's carried state (multistep history)
    outputs: list = dc_field(default_factory=list)
    noise: dict = dc_field(default_factory=dict)
    noise_source: NoiseSource | None = None
    first_at_input: list = dc_field(default_factory=list)   # per step: is its first model call at its input state?
    x_next: torch.Tensor | None = None        # the state after the last step, when the next one perturbs it first
    scaled: bool = False                      # scale_model_input gave step 0 its perturbed input


def supported_solvers() -> list[str]:
    """Registered solvers a diffusers pipeline can drive: every fixed-grid solver (adaptive ones are refused)."""
    return [n for n in available_solvers() if not get_solver(n).adaptive]


def _timesteps_tensor(values: Sequence[float], device: Any) -> torch.Tensor:
    arr = np.asarray(values, dtype=np.float64)
    if np.all(np.abs(arr - np.round(arr)) <= 1e-6 * np.maximum(1.0, np.abs(arr))):
        return torch.from_numpy(np.round(arr).astype(np.int64)).to(device)
    return torch.from_numpy(arr.astype(np.float32)).to(device)


class DiffsolveScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a diffsolve solver: `DiffsolveScheduler.from_config(pipe.scheduler.config,
    solver="unipc_bh2")`.

    The path, prediction type and default timesteps come from the config (and the class it was written for,
    kept as `source_class`), exactly as `Sampler(unet, scheduler=<that scheduler>, solver=...)` reads them, so
    both give the same samples from the same noise. `grid=` / `grid_options=` change the timesteps (a diffsolve
    grid name or an explicit list of times), `solver_options=` the solver's options, `seed=` the step noise of
    stochastic solvers (as `Sampler.run(seed=)`). The sample the pipeline carries is diffsolve's state: for a
    variance-preserving config `init_noise_sigma` is 1 and `scale_model_input` is the identity.
    """

    config_name = "scheduler_config.json"
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, solver: str = "dpmpp_2m", solver_options: dict | None = None, num_train_timesteps: int = 1000,
                 beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Any = None, prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, use_karras_sigmas: bool = False, clip_sample: bool = False,
                 clip_sample_range: float = 1.0, set_alpha_to_one: bool = True, final_sigmas_type: str | None = None,
                 rescale_betas_zero_snr: bool = False, thresholding: bool = False, shift: float = 1.0,
                 use_flow_sigmas: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", base_shift: float = 0.5, max_shift: float = 1.15,
                 base_image_seq_len: int = 256, max_image_seq_len: int = 4096, invert_sigmas: bool = False,
                 stochastic_sampling: bool = False, source_class: str | None = None, grid: Any = None,
                 grid_options: dict | None = None, seed: int | None = None):
        if not isinstance(solver, str):
            raise InvalidArgument(f"solver={solver!r}: must be a registered solver name (a diffusers config is "
                                  "plain data); supported here: " + ", ".join(supported_solvers()))
        # base_shift .. max_image_seq_len are kept for the pipelines that compute mu from them (Flux, SD3)
        for name, value in (("invert_sigmas", invert_sigmas), ("stochastic_sampling", stochastic_sampling)):
            if value:
                raise InvalidArgument(f"{name}=True (FlowMatchEulerDiscreteScheduler) is not reproduced by "
                                      "DiffsolveScheduler; use a stochastic diffsolve solver instead")
        self.solver: Solver = get_solver(solver, **dict(solver_options or {}))
        if self.solver.adaptive:
            raise InvalidArgument(
                f"solver={solver!r} chooses its steps adaptively, so a diffusers pipeline (which needs every timestep "
                f"before its loop) cannot drive it; supported solvers: {', '.join(supported_solvers())}")
        cfg = self._source_config()
        self._feed = _Feed()
        self.field = from_diffusers(self._feed, cfg)
        self.order = int(self.solver.calls_per_step)
        self.run: SchedulerRun | None = None
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """As ConfigMixin.from_config; remembers which scheduler class the config was written for (its timesteps)."""
        if config is not None and not isinstance(config, Mapping) and hasattr(config, "config"):
            cfg = {**dict(config.config), "_class_name": type(config).__name__}    # a scheduler object
        else:
            cfg = dict(config or {})
        # diffusers drops the keys listed in `_use_default_values` so that a new class takes its own defaults; here
        # the source scheduler's values (defaults included) are what define the path and the timesteps
        cfg.pop("_use_default_values", None)
        if "source_class" not in kwargs:
            src = cfg.get("source_class") or config_of(cfg).get("_class_name")
            if src and src != cls.__name__:
                kwargs["source_class"] = src
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- host side --------------------------------------------------------------------------------
    def _source_config(self) -> dict:
        cfg = {k: v for k, v in dict(self.config).items()
               if not k.startswith("_")
               and k not in ("solver", "solver_options", "source_class", "grid", "grid_options", "seed", "base_shift",
                             "max_shift", "base_image_seq_len", "max_image_seq_len", "invert_sigmas",
                             "stochastic_sampling", "time_shift_type")}
        cfg["_class_name"] = self.config.source_class or "DPMSolverMultistepScheduler"
        if cfg.get("final_sigmas_type") is None:
            cfg.pop("final_sigmas_type")
        return cfg

    @property
    def init_noise_sigma(self) -> float:
        sch = self.field.schedule
        t0 = float(self.run.plan.t[0]) if self.run is not None else None
        return float(sch.prior_std(t0))

    def _flow_times(self, steps: int | None, sigmas: Sequence[float] | None, mu: float | None) -> torch.Tensor:
        """FlowMatchEulerDiscreteScheduler.set_timesteps with `sigmas=` and/or `mu=` (resolution-dependent shift)."""
        n = int(self.config.num_train_timesteps)
        dynamic = bool(self.config.use_dynamic_shifting)
        if dynamic and mu is None:
            raise InvalidArgument("mu= is missing: this config shifts its timesteps by resolution "
                                  "(use_dynamic_shifting=True); pass set_timesteps(..., mu=) as the pipeline does")
        if not dynamic and mu is not None:
            raise InvalidArgument("mu= applies only to configs with use_dynamic_shifting=True; this one shifts by "
                                  f"shift={self.config.shift}")
        if sigmas is None:
            if steps is None:
                raise InvalidArgument("set_timesteps needs num_inference_steps or sigmas=")
            # the training sigmas run from 1 to 1/n, shifted in advance only without dynamic shifting
            shift = 1.0 if dynamic else float(self.config.shift)
            lo = shift * (1.0 / n) / (1.0 + (shift - 1.0) * (1.0 / n))
            s = np.linspace(n * 1.0, n * lo, steps) / n
        else:
            s = np.asarray([check_float(f"sigmas[{i}]", v) for i, v in enumerate(sigmas)]).astype(np.float32)
            if steps is not None and len(s) != steps:
                raise InvalidArgument(f"sigmas= holds {len(s)} values but num_inference_steps={steps}")
            if s.ndim != 1 or s.size < 1 or not np.all((s > 0) & (s <= 1)):
                raise InvalidArgument("sigmas= must be flow sigmas in (0, 1], from noise towards data")
        if dynamic:
            check_choice("time_shift_type", self.config.time_shift_type, ("exponential", "linear"))
            mu = check_float("mu", mu)
            scale = np.exp(mu) if self.config.time_shift_type == "exponential" else mu
            s = scale / (scale + (1.0 / s - 1.0))
        else:
            s = self.config.shift * s / (1.0 + (self.config.shift - 1.0) * s)
        s = np.asarray(s, dtype=np.float32).astype(np.float64)         # diffusers keeps float32 sigmas
        return make_grid(torch.cat([torch.from_numpy(s), torch.zeros(1, dtype=torch.float64)]), None, self.field.schedule)

    def _times(self, steps: int | None, timesteps: Sequence[float] | None, sigmas: Sequence[float] | None,
               mu: float | None = None):
        sch = self.field.schedule
        if isinstance(sch, RectifiedFlow) and timesteps is None and \
                (sigmas is not None or mu is not None or self.config.use_dynamic_shifting):
            return self._flow_times(steps, sigmas, mu)
        if mu is not None:
            raise InvalidArgument("mu= applies only to flow-matching configs with use_dynamic_shifting=True")
        if timesteps is not None or sigmas is not None:
            if not isinstance(sch, VPDiscrete):
                raise InvalidArgument("timesteps= / sigmas= need a discrete VP config")
            if timesteps is not None:
                return times_from_timesteps(sch, [float(v) for v in timesteps], None, final="zero")
            s = [float(v) for v in sigmas]
            return from_sigmas(s if s[-1] == 0 else s + [0.0], sch)
        if steps is None:
            raise InvalidArgument("set_timesteps needs num_inference_steps (or timesteps= / sigmas=)")
        if self.config.grid is not None:
            grid, opts = self.config.grid, dict(self.config.grid_options or {})
        else:
            grid, opts = grid_options_of(self._source_config())
            opts.update(self.config.grid_options or {})
        if not isinstance(grid, str) and not callable(grid):
            return make_grid(grid, None, sch)
        return make_grid(grid, steps, sch, **opts)

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                      timesteps: Sequence[float] | None = None, sigmas: Sequence[float] | None = None,
                      mu: float | None = None, **kwargs: Any) -> None:
        """Plan the run (grid, coefficients) and list the model times at which the pipeline must call the network.

        Flow-matching configs take `sigmas=` and `mu=` as FlowMatchEulerDiscreteScheduler does (SD3, Flux)."""
        t = self._times(num_inference_steps, timesteps, sigmas, mu)
        self.run = self._new_run(t)
        self.num_inference_steps = self.run.plan.steps
        self.timesteps = _timesteps_tensor([float(p.model_time) for p in self.run.points], device)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at listed timestep `begin_index` (img2img's `strength`): the plan is rebuilt on the grid
        from that step on, so multistep solvers start with no history there, as diffusers' own do."""
        run = self.run
        if run is None:
            raise InvalidArgument("set_begin_index before set_timesteps: call set_timesteps(n) first")
        if begin_index == 0:
            return
        if not 0 <= begin_index < len(run.calls) or run.calls[begin_index][1] != 0:
            raise InvalidArgument(f"begin_index={begin_index}: must be the first listed timestep of a step "
                                  f"(0 .. {len(run.calls) - 1}, a multiple of the calls per step)")
        i = run.calls[begin_index][0]
        self.run = self._new_run(run.plan.t[i:])

    @property
    def begin_index(self) -> int:
        return 0

    def _new_run(self, t: torch.Tensor) -> SchedulerRun:
        plan = self.solver.plan(self.field, t)
        dry = _DryEvaluator(self.field)
        state = self.solver.init(plan)
        for i in range(plan.steps):
            # a fresh random input per step (the points do not depend on it): is the first call made at it?
            x = torch.randn(1, 4, dtype=torch.float64, generator=dry.gen) + 2.0
            dry.step, dry.input = i, x
            _, _, state = self.solver.step(dry, x, plan.points[i], plan.points[i + 1], state, plan.coeffs[i])
        calls, points, k_of = [], [], {}
        for i, p in dry.points:
            k_of[i] = k_of.get(i, -1) + 1
            calls.append((i, k_of[i]))
            points.append(p)
        for i in range(plan.steps):
            if i not in k_of:
                raise InvalidArgument(f"solver {self.solver.name!r} makes no model call in step {i}; a diffusers "
                                      "pipeline calls the network once per listed timestep")
        return SchedulerRun(plan=plan, calls=calls, points=points, state=self.solver.init(plan),
                            first_at_input=[dry.first_at_input[i] for i in range(plan.steps)])

    # --- inside the loop ----------------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The network sees the state as is, except where the first step perturbs its input before the first model
        call (EDM churn): then the perturbed state. Later steps return such inputs as `step`'s prev_sample."""
        run = self.run
        if run is not None and run.index == 0 and run.first_at_input and not run.first_at_input[0]:
            run.scaled = True
            n = sample.shape[0]
            copies = 2 if n % 2 == 0 and torch.equal(sample[: n // 2], sample[n // 2:]) else 1
            if copies == 2:      # classifier-free guidance: [latents] * 2; perturb the state once, then repeat
                return torch.cat([self._request(run, 0, sample[: n // 2], [], None)] * 2)
            return self._request(run, 0, sample, [], None)
        return sample

    @property
    def step_index(self) -> int | None:
        return self.run.index if self.run is not None else None

    def _noise(self, run: SchedulerRun, like: torch.Tensor, generator: Any):
        def draw(i: int, j: int) -> torch.Tensor:
            key = (i, j)
            if key not in run.noise:
                if self.config.seed is not None:
                    if run.noise_source is None:
                        run.noise_source = NoiseSource.for_run(like.shape, seed=int(self.config.seed),
                                                               device=like.device, dtype=like.dtype)
                    run.noise[key] = run.noise_source.draw(i, j)
                else:
                    run.noise[key] = randn_tensor(like.shape, generator=generator, device=like.device,
                                                  dtype=like.dtype)
            return run.noise[key]
        return draw

    def _request(self, run: SchedulerRun, i: int, x_start: torch.Tensor, outputs: list, generator: Any):
        """Replay step i from x_start with the outputs received; the end state, or the input of the next call."""
        ev = _ReplayEvaluator(self.field, self._feed, outputs, self._noise(run, x_start, generator))
        ev.step = i
        plan = run.plan
        try:
            x1, _, new_state = self.solver.step(ev, x_start, plan.points[i], plan.points[i + 1], run.state,
                                                plan.coeffs[i])
        except _NeedModel as need:
            return need.x
        return x1, new_state

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None,
             return_dict: bool = True, **kwargs: Any):
        """Take the network output at the current listed timestep; return the state at which the network is
        needed next (inside a multi-call step, or a perturbed start of the next step) or the step's end state."""
        run = self.run
        if run is None:
            raise InvalidArgument("DiffsolveScheduler.step before set_timesteps: call set_timesteps(n) first")
        if run.index >= len(run.calls):
            raise InvalidArgument(f"DiffsolveScheduler.step called {run.index + 1} times, but set_timesteps listed "
                                  f"{len(run.calls)} timesteps; call set_timesteps again for a new run")
        i, k = run.calls[run.index]
        if k == 0:
            if i == 0 and not run.first_at_input[0] and not run.scaled:
                raise InvalidArgument(
                    f"solver {self.solver.name!r} perturbs the state before its first model call, and this pipeline "
                    "called the network without scheduler.scale_model_input; use a solver without churn")
            # A pipeline may edit its latents between steps (inpainting): its sample is the step's input, unless
            # the step perturbs its input first, in which case the pipeline holds the perturbed state.
            run.x_start = sample if (i == 0 or run.first_at_input[i]) else run.x_next
            run.outputs = []
        run.outputs.append(model_output)
        got = self._request(run, i, run.x_start, run.outputs, generator)
        if isinstance(got, tuple):
            prev, run.state = got
            run.outputs, run.x_start = [], None
            if i + 1 < run.plan.steps and not run.first_at_input[i + 1]:
                run.x_next = prev
                prev = self._request(run, i + 1, prev, [], generator)
        else:
            prev = got
        run.index += 1
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise at the given model times (img2img, inpainting)."""
        sch = self.field.schedule
        tm = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1).cpu()
        t = sch.t_from_model_time(tm)
        a = sch.alpha(t).to(original_samples.device, original_samples.dtype)
        s = sch.sigma(t).to(original_samples.device, original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return a.reshape(shape) * original_samples + s.reshape(shape) * noise

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


__all__ = ["DiffsolveScheduler", "SchedulerRun", "supported_solvers"]
