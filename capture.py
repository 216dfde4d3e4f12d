"""The whole fixed-step sampling loop captured once in a CUDA graph and replayed for new noise.

The loop is sync-free and its coefficients are host floats fixed by the plan, so one capture per (plan, shape,
dtype, device) is valid for every replay: a replay copies new noise into the static input and re-launches every
kernel of every step (model included) with one CPU call, removing the per-kernel launch overhead that dominates
small batches. Only deterministic fixed-step solvers; the model must itself be capturable (no host syncs, no
CPU-to-GPU copies inside forward).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.loop import Evaluator, SampleResult, integrate
from diffsolve.noise import draw_start


class GraphedRun:
    """`g = sampler.graphed(steps=20, shape=(8, 4, 64, 64), device='cuda')`, then `g.run(seed=1)` or `g.run(noise)`.

    Made by `Sampler.graphed`: the capture warms up on a side stream, then records one whole loop.

    Args:
        sampler: the Sampler.
        plan: its fixed-step Plan.
        shape: the captured `(batch, *sample_shape)`.
        device: a CUDA device.
        dtype: the state's dtype (default float32).
        warmup: runs before the capture.
        **model_kwargs: passed to the network at every call (fixed in the graph).

    Raises:
        InvalidArgument: not CUDA, no CUDA available, or an adaptive or stochastic solver.
    """

    def __init__(self, sampler: Any, plan: Any, shape: Sequence[int], *, device: Any, dtype: torch.dtype = torch.float32,
                 warmup: int = 2, **model_kwargs: Any):
        device = torch.device(device if device is not None else "cpu")
        if device.type != "cuda":
            raise InvalidArgument(f"cuda_graph needs device='cuda' (CUDA graphs capture GPU work), got device={device}; "
                                  "on other devices use Sampler.run")
        if not torch.cuda.is_available():
            raise InvalidArgument("cuda_graph needs a CUDA device, but torch.cuda.is_available() is False")
        solver = sampler.solver
        if getattr(solver, "adaptive", False) or not solver.deterministic:
            raise InvalidArgument(f"cuda_graph captures fixed-step deterministic solvers; {solver.name!r} is "
                                  f"{'adaptive' if getattr(solver, 'adaptive', False) else 'stochastic'}")
        self.sampler, self.plan, self.kwargs = sampler, plan, model_kwargs
        self.shape, self.device, self.dtype = tuple(int(v) for v in shape), device, dtype
        self.static_noise = torch.zeros(self.shape, device=device, dtype=dtype)
        self.nfe = 0
        # Warm up on a side stream (Triton compilation, cuDNN autotuning, lazy allocations) before capturing.
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(warmup, 1)):
                self._loop()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out, self.static_ev = self._loop()

    def _loop(self):
        s = self.sampler
        t0 = float(self.plan.t[0])
        scale = s.field.schedule.prior_std(t0) if s.field.schedule is not None else 1.0
        ev = Evaluator(s.field, self.kwargs, s.check_finite)
        with torch.no_grad():
            # The one loop, with the finite flag left on the device: it is read after each replay.
            res = integrate(s.solver, ev, self.static_noise * scale, self.plan, raise_nonfinite=False)
        self.nfe = ev.nfe
        # The per-call finite flags are outputs of the graph; they are combined after each replay, outside it
        # (building the step-index tensor is a host-to-device copy, which a capture may not contain).
        return res.samples, ev

    def run(self, noise: torch.Tensor | None = None, *, seed: Any = None, generator: torch.Generator | None = None):
        """Replay for new standard-normal noise (given, or drawn like Sampler.run draws it); returns a SampleResult.

        Args:
            noise: standard-normal noise of the captured shape; None: drawn.
            seed: as in Sampler.run.
            generator: as in Sampler.run.

        Raises:
            InvalidArgument: noise of another shape. NonFiniteError: a NaN/Inf model output in the replay.
        """
        if noise is None:
            noise = draw_start(self.shape, source=self.sampler.field.source, seed=seed, generator=generator,
                               device=self.device, dtype=self.dtype)
        if tuple(noise.shape) != self.shape:
            raise InvalidArgument(f"noise has shape {tuple(noise.shape)}; this graph was captured for {self.shape}")
        self.static_noise.copy_(noise)
        self.graph.replay()
        self.static_ev.raise_if_bad(self.plan.t)      # the one host read, after the replay
        return SampleResult(samples=self.static_out.clone(), nfe=self.nfe, steps=self.plan.steps, t=self.plan.t,
                            solver=self.sampler.solver.name)
