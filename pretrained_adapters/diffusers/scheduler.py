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

from typing import Any, Mapping, Sequence

import torch

# the diffusers library is optional: the package's __getattr__ imports this module only when it is asked for
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from diffsolve.errors import InvalidArgument, check_int
from diffsolve.grids import make_grid
from diffsolve.noise import NoiseSource
from diffsolve.pretrained_adapters.diffusers.config import (
    alphas_cumprod_of, betas_of, config_of, rescale_zero_terminal_snr, source_config_of, style_of, used_defaults)
from diffsolve.pretrained_adapters.diffusers.ddim import DDIMModelNoise, ddim_model_noise
from diffsolve.pretrained_adapters.diffusers.loops import RoundedModelTime, model_time_rounding
from diffsolve.pretrained_adapters.diffusers.model import from_diffusers
from diffsolve.pretrained_adapters.diffusers.scheduler_correction import corrected_times, tuned_sampler
from diffsolve.pretrained_adapters.diffusers.scheduler_run import (
    Feed, NeedModel, ReplayEvaluator, SchedulerRun, dry_run, supported_solvers, timesteps_tensor)
from diffsolve.pretrained_adapters.diffusers.scheduler_times import (
    check_model_times, check_steps, custom_sigmas, custom_timesteps, diffusers_sigmas, flow_times, locate,
    same_timestep, timestep_value)
from diffsolve.pretrained_adapters.diffusers.timesteps import SIGMA_SPACINGS, diffusers_grid, grid_options_of
from diffsolve.schedules import RectifiedFlow, VPDiscrete
from diffsolve.solvers.base import Solver, get_solver


class DiffsolveScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a diffsolve solver: `DiffsolveScheduler.from_config(pipe.scheduler.config,
    solver="unipc_bh2")`.

    The path, prediction type and default timesteps come from the config (and the class it was written for,
    kept as `source_class`), exactly as `Sampler(unet, scheduler=<that scheduler>, solver=...)` reads them, so
    both give the same samples from the same noise. `grid=` / `grid_options=` change the timesteps (a diffsolve
    grid name or an explicit list of times), `solver_options=` the solver's options, `seed=` the step noise of
    stochastic solvers (as `Sampler.run(seed=)`). The sample the pipeline carries is diffsolve's state: for a
    variance-preserving config `scale_model_input` is the identity and `init_noise_sigma` is 1, or the source
    class's start in diffsolve's state: sigma(t_max) for Euler-family configs with 'linspace' / 'trailing' spacing.

    As a diffusers scheduler it has `betas`, `alphas`, `alphas_cumprod` (variance-preserving configs) and, after
    `set_timesteps`, `sigmas` (the noise level of each listed timestep, then the final one), with diffusers'
    meanings; `step` finds where the run starts from its first timestep (diffusers' index_for_timestep) unless
    `set_begin_index` said so.

    Args:
        solver: a registered fixed-grid solver's name (`supported_solvers()`); default "dpmpp_2m".
        solver_options: the solver's keywords (None: none).
        num_train_timesteps: the training timesteps, >= 1.
        beta_start: diffusers' meaning: the first beta.
        beta_end: the last beta.
        beta_schedule: "linear", "scaled_linear", "squaredcos_cap_v2" or "sigmoid".
        trained_betas: explicit betas instead of the schedule.
        prediction_type: "epsilon", "sample", "v_prediction" or "flow_prediction".
        timestep_spacing: "linspace", "leading" or "trailing".
        steps_offset: added to "leading" timesteps.
        use_karras_sigmas: karras-spaced sigmas (at most one of the four spacings).
        use_lu_lambdas: log-uniform sigmas.
        use_exponential_sigmas: exponentially spaced sigmas.
        use_beta_sigmas: Beta(0.6, 0.6)-spaced sigmas.
        clip_sample: clip the data prediction to +-`clip_sample_range`.
        clip_sample_range: the clipping bound.
        set_alpha_to_one: DDIM-style configs end at alpha 1 (else at alphas_cumprod[0]).
        final_sigmas_type: "zero" or "sigma_min"; None: the source class's.
        rescale_betas_zero_snr: rescale to zero terminal SNR.
        thresholding: dynamic thresholding of the data prediction.
        dynamic_thresholding_ratio: its quantile.
        sample_max_value: its largest threshold.
        shift: the flow-matching static shift.
        use_flow_sigmas: flow-matching sigmas on a multistep config.
        use_dynamic_shifting: the shift comes from `mu=` in `set_timesteps` (SD3, Flux).
        time_shift_type: "exponential" or "linear", how `mu` shifts.
        base_shift: kept for the pipelines that compute mu (Flux, SD3).
        max_shift: likewise.
        base_image_seq_len: likewise.
        max_image_seq_len: likewise.
        invert_sigmas: must be False (not reproduced).
        stochastic_sampling: must be False (not reproduced; use a stochastic diffsolve solver).
        source_class: the scheduler class the config was written for; None: DPMSolverMultistepScheduler.
        grid: a diffsolve grid name or explicit times; None: the source class's timesteps.
        grid_options: the grid's keywords.
        seed: step noise from diffsolve's NoiseSource keyed as `Sampler.run(seed=)`; None: `step(generator=)`.
        correction: the path of a file `diffsolve tune` wrote: its solver and grid for the step counts it holds
            (as `Sampler(unet, scheduler=config, correction=path)`; the model identity is not checked here).

    Raises:
        InvalidArgument: a solver not a name, adaptive or unknown; options not mappings; invert_sigmas or
            stochastic_sampling set; a config value out of its range.
    """

    config_name = "scheduler_config.json"
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, solver: str = "dpmpp_2m", solver_options: dict | None = None, num_train_timesteps: int = 1000,
                 beta_start: float = 0.0001, beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Any = None, prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, use_karras_sigmas: bool = False, use_lu_lambdas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False, clip_sample: bool = False,
                 clip_sample_range: float = 1.0, set_alpha_to_one: bool = True, final_sigmas_type: str | None = None,
                 rescale_betas_zero_snr: bool = False, thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0, shift: float = 1.0,
                 use_flow_sigmas: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential", base_shift: float = 0.5, max_shift: float = 1.15,
                 base_image_seq_len: int = 256, max_image_seq_len: int = 4096, invert_sigmas: bool = False,
                 stochastic_sampling: bool = False, source_class: str | None = None, grid: Any = None,
                 grid_options: dict | None = None, seed: int | None = None, correction: str | None = None):
        if not isinstance(solver, str):
            raise InvalidArgument(f"solver={solver!r}: must be a registered solver name (a diffusers config is "
                                  "plain data); supported here: " + ", ".join(supported_solvers()))
        if solver_options is not None and not isinstance(solver_options, Mapping):
            raise InvalidArgument(f"solver_options={solver_options!r}: must be a mapping of option names to values")
        if grid_options is not None and not isinstance(grid_options, Mapping):
            raise InvalidArgument(f"grid_options={grid_options!r}: must be a mapping of option names to values")
        check_int("num_train_timesteps", num_train_timesteps, 1)
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
        self._feed = Feed()
        self.field = from_diffusers(self._feed, cfg)
        if cfg.get("_class_name") == "DDIMScheduler":      # its clipped prediction beside the network's own noise
            self.field, self.solver = ddim_model_noise(self.field, self.solver)
        rounding = model_time_rounding(cfg, spaced_like_dpmsolver=True)
        if rounding is not None and isinstance(self.field.schedule, VPDiscrete):
            self.field = RoundedModelTime(self.field, rounding)       # the integer timesteps diffusers lists
        if isinstance(self.field.schedule, VPDiscrete):
            betas = betas_of(cfg)
            self.betas = rescale_zero_terminal_snr(betas) if cfg.get("rescale_betas_zero_snr") else betas
            self.alphas = 1.0 - self.betas
            self.alphas_cumprod = alphas_cumprod_of(cfg).to(torch.float32)
        self._tuned = None
        if correction is not None:          # the file names the solver and grid of each budget (scheduler_correction)
            if solver_options or grid is not None or grid_options:
                raise InvalidArgument("correction= fixes the solver and grid: leave solver_options= and grid= out")
            self._tuned = tuned_sampler(self.field, correction)
            self.solver = self._tuned.solver
        self.order = int(self.solver.calls_per_step)
        self.run: SchedulerRun | None = None
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._offset = 0               # the listed timestep the current run starts at

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """As ConfigMixin.from_config; remembers which scheduler class the config was written for (its timesteps).

        Args:
            config: a scheduler config mapping or a scheduler object (its config and class name are read).
            return_unused_kwargs: as diffusers': return (scheduler, the keywords the class did not take).
            **kwargs: config values to override (e.g. `solver=`, `solver_options=`).
        """
        if config is not None and not isinstance(config, Mapping) and hasattr(config, "config"):
            cfg = {**dict(config.config), "_class_name": type(config).__name__}    # a scheduler object
        else:
            cfg = dict(config or {})
        if cfg.get("_use_default_values"):
            cfg["_use_default_values"] = used_defaults(cfg)      # values a pipeline changed are kept
        # diffusers drops the keys listed in `_use_default_values`, as for any class: the run takes the source
        # class's defaults for them (source_config_of), and a scheduler made from this config takes its own
        if "source_class" not in kwargs:
            src = cfg.get("source_class") or config_of(cfg).get("_class_name")
            if src and src != cls.__name__:
                kwargs["source_class"] = src
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- host side --------------------------------------------------------------------------------
    def _source_config(self) -> dict:
        """The config of the class the run reproduces (`source_class`): its path, timesteps and defaults."""
        return source_config_of({**dict(self.config), "_class_name": "DiffsolveScheduler"})

    @property
    def init_noise_sigma(self) -> float:
        """The prior's standard deviation at the run's first time (diffusers' starting noise scale)."""
        sch = self.field.schedule
        t0 = float(self._full_run().plan.t[0]) if self.run is not None else None
        src = self._source_config()
        if t0 is not None and isinstance(sch, VPDiscrete) and style_of(src) == "euler" and \
                src.get("timestep_spacing", "linspace") in ("linspace", "trailing"):
            # diffusers' Euler family then starts x / alpha from noise * sigma_max (not sqrt(sigma_max^2 + 1)):
            # in diffsolve's state that is a standard deviation of sigma(t0) < 1
            return float(sch.sigma(t0))
        return float(sch.prior_std(t0))

    def _final(self) -> str:
        """The config's final noise level: final_sigmas_type when set, else the source class's."""
        if self.config.final_sigmas_type is not None:
            return str(self.config.final_sigmas_type)
        return str(grid_options_of(self._source_config())[1].get("final", "zero"))

    def _repeated_end(self) -> str:
        """What a grid does with diffusers' zero-length end step (`times_from_timesteps`): a multistep solver that
        never lowers its last order would divide by its zero length, so there it is always left out."""
        return "drop" if getattr(self.solver, "lower_order_final", "auto") is False else "auto"

    def _spacing_flags(self) -> list[str]:
        return [k for k in SIGMA_SPACINGS if self.config.get(k, False)]

    def _times(self, steps: int | None, timesteps: Any, sigmas: Any, mu: float | None = None) -> torch.Tensor:
        if self._tuned is not None:
            self.solver, t = corrected_times(self._tuned, steps, any(v is not None for v in (timesteps, sigmas, mu)))
            self.order = int(self.solver.calls_per_step)
            return t
        sch = self.field.schedule
        if isinstance(sch, RectifiedFlow) and timesteps is None and \
                (sigmas is not None or mu is not None or self.config.use_dynamic_shifting):
            return flow_times(self.config, sch, steps, sigmas, mu)
        if mu is not None:
            raise InvalidArgument("mu= applies only to flow-matching configs with use_dynamic_shifting=True")
        if timesteps is not None or sigmas is not None:
            if timesteps is not None and sigmas is not None:
                raise InvalidArgument("pass timesteps= or sigmas=, not both")
            if not isinstance(sch, VPDiscrete):
                raise InvalidArgument("timesteps= / sigmas= need a discrete VP config")
            if steps is not None:
                raise InvalidArgument(f"num_inference_steps={steps} with timesteps= / sigmas=: pass one of them")
            if timesteps is not None and self._spacing_flags():
                raise InvalidArgument(f"timesteps= cannot be used with {self._spacing_flags()[0]}=True (the spacing "
                                      "fixes the noise levels), as in diffusers")
            if timesteps is not None:
                return custom_timesteps(sch, timesteps, int(self.config.num_train_timesteps), self._final(),
                                        self._repeated_end())
            return custom_sigmas(sch, sigmas)
        if steps is None:
            raise InvalidArgument("set_timesteps needs num_inference_steps (or timesteps= / sigmas=)")
        if self.config.grid is not None:
            grid, opts = self.config.grid, dict(self.config.grid_options or {})
        else:
            grid, opts = grid_options_of(self._source_config())
            if self.config.final_sigmas_type is not None and grid is diffusers_grid:
                opts["final"] = self._final()
            opts.update(self.config.grid_options or {})
        if not isinstance(grid, str) and not callable(grid):
            return make_grid(grid, None, sch)
        if grid is diffusers_grid:
            # as diffusers lists them: a repeated end point from 15 steps on, and repeated timesteps, once
            return make_grid(diffusers_grid(steps, sch, **{"repeated_end": self._repeated_end(), **opts}), None, sch)
        return make_grid(grid, steps, sch, **opts)

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None,
                      timesteps: Sequence[float] | None = None, sigmas: Sequence[float] | None = None,
                      mu: float | None = None, **kwargs: Any) -> None:
        """Plan the run (grid, coefficients) and list the model times at which the pipeline must call the network.

        Args:
            num_inference_steps: the number of steps (not with `timesteps=` or `sigmas=`).
            device: where `timesteps` is put.
            timesteps: explicit timesteps (discrete VP configs, no sigma spacing flag).
            sigmas: explicit sigmas (discrete VP; flow configs as FlowMatchEulerDiscreteScheduler: SD3, Flux).
            mu: the dynamic shift, as FlowMatchEulerDiscreteScheduler's (flow configs with use_dynamic_shifting=True).
            **kwargs: other pipeline keywords, ignored.

        Raises:
            InvalidArgument: a missing or invalid step count, or a combination of arguments the config does not take.
        """
        t = self._times(check_steps(num_inference_steps), timesteps, sigmas, mu)
        self.run = self._new_run(t)
        self._begin_index, self._offset = None, 0
        self.num_inference_steps = self.run.plan.steps
        self.timesteps = timesteps_tensor(self.run.listed, device)
        self.sigmas = diffusers_sigmas(self.field.schedule, self.run.points, self.run.plan.points[-1])

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at listed timestep `begin_index` (img2img's `strength`): the plan is rebuilt on the grid
        from that step on, so multistep solvers start with no history there, as diffusers' own do.

        Args:
            begin_index: the index into `timesteps` (default 0), the first listed timestep of a step.

        Raises:
            InvalidArgument: called before set_timesteps, or not the first timestep of a step.
        """
        if self.run is None:
            raise InvalidArgument("set_begin_index before set_timesteps: call set_timesteps(n) first")
        begin_index = check_int("begin_index", begin_index, 0)
        full = self._full_run()
        if begin_index >= len(full.calls) or full.calls[begin_index][1] != 0:
            raise InvalidArgument(f"begin_index={begin_index}: must be the first listed timestep of a step "
                                  f"(0 .. {len(full.calls) - 1}, a multiple of the calls per step)")
        self._start_at(full, begin_index)
        self._begin_index = begin_index

    def _full_run(self) -> SchedulerRun:
        run = self.run
        return run if self._offset == 0 else run.full

    def _start_at(self, full: SchedulerRun, j: int) -> None:
        """The run restarted at listed timestep j of the full listing (step calls[j][0])."""
        i = full.calls[j][0]
        run = full if i == 0 else self._new_run(full.plan.t[i:])
        run.full, run.started = full, False
        if i == 0:
            run.index, run.x_start, run.state, run.outputs, run.noise = 0, None, self.solver.init(full.plan), [], {}
        self.run, self._offset = run, j

    @property
    def begin_index(self) -> int | None:
        """The listed timestep `set_begin_index` started the run at (None if not called)."""
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        """The index of the next listed timestep once the run has started, else None."""
        run = self.run
        return None if run is None or not run.started else self._offset + run.index

    def _new_run(self, t: torch.Tensor) -> SchedulerRun:
        return dry_run(self.solver, self.field, t)

    # --- inside the loop ----------------------------------------------------------------------------
    def _begin(self, timestep: Any) -> SchedulerRun:
        """The run, started where the pipeline's first timestep says (unless set_begin_index did); each later
        timestep must be the one listed next."""
        run = self.run
        if run is None:
            raise InvalidArgument("DiffsolveScheduler.step before set_timesteps: call set_timesteps(n) first")
        value = timestep_value(timestep)
        if not run.started and run.index == 0 and self._begin_index is None and value is not None:
            full = self._full_run()
            j = locate(full.listed, [k == 0 for _, k in full.calls], value)
            if j != self._offset:
                self._start_at(full, j)
            run = self.run
        run.started = True
        if run.index >= len(run.calls):
            raise InvalidArgument(f"DiffsolveScheduler.step called {self._offset + run.index + 1} times, but "
                                  f"set_timesteps listed {self._offset + len(run.calls)} timesteps; call "
                                  "set_timesteps again for a new run")
        if value is not None and not same_timestep(value, run.listed[run.index]):
            raise InvalidArgument(f"timestep={value:g}: the run expects listed timestep {run.listed[run.index]:g} "
                                  f"(index {self._offset + run.index} of scheduler.timesteps) next")
        return run

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The network sees the state as is, except where the first step perturbs its input before the first model
        call (EDM churn): then the perturbed state. Later steps return such inputs as `step`'s prev_sample.

        Args:
            sample: the pipeline's latents (a guidance batch of two equal halves is perturbed once).
            timestep: the current timestep; a listed one starts the run there.
        """
        run = self.run
        if run is not None and not run.started and timestep is not None:
            # a timestep outside the listing is let through here, as diffusers' multistep schedulers ignore it;
            # step() refuses it
            value = timestep_value(timestep)
            if any(same_timestep(v, value) for v in self._full_run().listed):
                self._begin(timestep)
        run = self.run
        if run is not None and run.index == 0 and run.first_at_input and not run.first_at_input[0]:
            run.scaled = True
            n = sample.shape[0]
            copies = 2 if n % 2 == 0 and torch.equal(sample[: n // 2], sample[n // 2:]) else 1
            if copies == 2:      # classifier-free guidance: [latents] * 2; perturb the state once, then repeat
                return torch.cat([self._request(run, 0, sample[: n // 2], [], None)] * 2)
            return self._request(run, 0, sample, [], None)
        return sample

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
        ev = ReplayEvaluator(self.field, self._feed, outputs, self._noise(run, x_start, generator))
        ev.step = i
        plan = run.plan
        try:
            x1, _, new_state = self.solver.step(ev, x_start, plan.points[i], plan.points[i + 1], run.state,
                                                plan.coeffs[i])
        except NeedModel as need:
            return need.x
        return x1, new_state

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None,
             return_dict: bool = True, **kwargs: Any):
        """Take the network output at the current listed timestep; return the state at which the network is
        needed next (inside a multi-call step, or a perturbed start of the next step) or the step's end state.

        Args:
            model_output: the network's output at the listed timestep.
            timestep: that timestep (checked against the listing).
            sample: the pipeline's latents (the step's input at a step's first call).
            generator: draws the step noise of stochastic solvers when the config has no `seed`.
            return_dict: return a SchedulerOutput (else a one-tuple).
            **kwargs: other pipeline keywords, ignored.

        Returns:
            (SchedulerOutput | tuple): SchedulerOutput(prev_sample=...) or (prev_sample,), in the sample's dtype.

        Raises:
            InvalidArgument: called before set_timesteps or too often, an unexpected timestep, or churn
                without scale_model_input.
        """
        run = self._begin(timestep)
        if isinstance(self.solver, DDIMModelNoise):       # DDIMPipeline's option, as DDIMScheduler reads it
            self.solver.clipped_model_output = bool(kwargs.get("use_clipped_model_output"))
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

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise at the given model times (img2img, inpainting).

        Args:
            original_samples: x0, batch first.
            noise: the noise, shaped like x0.
            timesteps: one model time per sample.

        Raises:
            InvalidArgument: timesteps out of the config's range.
        """
        sch = self.field.schedule
        tm = check_model_times("timesteps", timesteps, sch, int(self.config.num_train_timesteps))
        t = sch.t_from_model_time(tm)
        a = sch.alpha(t).to(original_samples.device, original_samples.dtype)
        s = sch.sigma(t).to(original_samples.device, original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return a.reshape(shape) * original_samples + s.reshape(shape) * noise

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


__all__ = ["DiffsolveScheduler", "SchedulerRun", "supported_solvers"]
