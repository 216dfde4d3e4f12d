"""One-shot GPU check (about 5 minutes on one H200): fused-update bandwidth, CUDA-graph replay, loop overhead.

    python scripts/gpu_check.py                 # on a CUDA machine; bench/gpu_check.sh also saves the output
    python scripts/gpu_check.py --cpu-smoke     # every code path on the CPU, tiny sizes, 1 repetition

(a) lincomb with K = 2, 3, 4, 6 inputs, forward and forward+backward: the Triton kernel, the eager PyTorch
    reference and torch.compile of the reference, against a 1 GiB device-to-device copy timed in the same run.
(b) Sampler(load_mnist_unet(), "dpmpp_2m"): the CUDA-graph replay (.graphed) against the plain loop (.run).
(c) The share of sampling wall time spent outside the model (built-in UNet, batch 256, fp16 and bf16).
Times are medians over repetitions after warm-up, CUDA events around each call (perf_counter on the CPU).
Uses only the public API (Sampler.run, Sampler.graphed, kernels.lincomb*), not the loop's internals.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

from diffsolve.bench.timing import copy_bandwidth, sync, time_once
from diffsolve.cli.argtypes import positive_int
from diffsolve.kernels import lincomb_reference, lincomb_triton
from diffsolve.models import load_mnist_unet
from diffsolve.sampler import Sampler

# Targets printed beside the figures (the figures are what matters; nothing here fails on a miss).
TARGET_COPY_FRACTION = 0.85        # fused update >= 85% of the copy bandwidth
TARGET_EAGER_SPEEDUP = 3.0         # >= 3x eager for third-order updates (K >= 4)
TARGET_LOOP_OVERHEAD = 0.01        # < 1% of wall time outside the model

TERMS = (2, 3, 4, 6)
SHAPES = {"latents": (8, 4, 128, 128), "images": (64, 3, 256, 256)}
SMOKE_SHAPES = {"tiny": (2, 3, 8, 8)}
UPDATE_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


class Clock:
    """Median seconds per call: CUDA events around each call on the GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device, reps: int, warmup: int):
        self.device, self.reps, self.warmup = device, reps, warmup

    def sync(self) -> None:
        sync(self.device)

    def __call__(self, fn: Callable[[], object], reps: int | None = None) -> float:
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps or self.reps):
            times.append(time_once(fn, self.device))
        return statistics.median(times)

    def wall(self, fn: Callable[[], object], reps: int | None = None) -> float:
        """Median wall seconds of fn with the device drained before and after (for whole runs, host included)."""
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(reps or self.reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _overhead_mark(share: float) -> str:
    return "n/a" if share < 0 else _mark(share < TARGET_LOOP_OVERHEAD)


def fused_updates(clock: Clock, shapes: dict, smoke: bool, compile_ok: bool) -> None:
    print("\n(a) fused update x' = sum_k c_k T_k (float coefficients), median time per call")
    copy_bytes = (1 << 20) if smoke else (1 << 30)
    peak = copy_bandwidth(clock.device, copy_bytes, clock)
    print(f"copy bandwidth: dst.copy_(src) of {copy_bytes / 2 ** 20:g} MiB, read + write: {peak / 1e9:.1f} GB/s")
    print("GB/s counts the bytes an ideal update must move: forward (K reads + 1 write); forward+backward adds "
          "1 read of grad_out + K gradient writes. %copy = GB/s over the copy's.")
    print(f"targets: triton >= {TARGET_COPY_FRACTION:.0%} of copy; triton >= {TARGET_EAGER_SPEEDUP:g}x eager for "
          "K >= 4 (third-order updates)")
    print(f"{'shape':<16} {'dtype':<8} {'K':>2} {'pass':<8} {'impl':<8} {'time/us':>10} {'GB/s':>8} {'%copy':>6} "
          f"{'x eager':>8}  targets")
    for mode in ("fwd", "fwd+bwd"):
        for dname, dtype in UPDATE_DTYPES.items():
            for k in TERMS:
                impls: dict[str, Callable | str] = {"eager": lincomb_reference, "triton": lincomb_triton}
                if not compile_ok:
                    impls["compile"] = "skipped (--cpu-smoke)" if smoke else "skipped (--no-compile)"
                else:
                    try:
                        # every torch.compile of one function shares its code object's cache: without a reset the
                        # 16 variants here would pass dynamo's recompile limit and silently run eager
                        torch._dynamo.reset()
                        # dynamic: one compile covers both shapes, keeping the whole check within minutes
                        impls["compile"] = torch.compile(lincomb_reference, dynamic=True)
                    except Exception as e:  # noqa: BLE001 - report, do not stop the check
                        impls["compile"] = f"unavailable: {type(e).__name__}: {e}"
                for sname, shape in shapes.items():
                    _update_rows(clock, peak, sname, shape, dname, dtype, k, mode, impls)


def _update_rows(clock, peak, sname, shape, dname, dtype, k, mode, impls) -> None:
    g = torch.Generator(device=clock.device).manual_seed(0)
    grad = mode != "fwd"
    ts = [torch.randn(shape, generator=g, device=clock.device).to(dtype).requires_grad_(grad) for _ in range(k)]
    coeffs = [0.9 - 0.1 * j for j in range(k)]
    gout = torch.randn(shape, generator=g, device=clock.device).to(dtype)
    n_bytes = (k + 1) * ts[0].numel() * ts[0].element_size() * (2 if grad else 1)
    times: dict[str, float] = {}
    for name, fn in impls.items():
        label = f"{'x'.join(map(str, shape)):<16} {dname:<8} {k:>2} {mode:<8} {name:<8}"
        if isinstance(fn, str):
            print(f"{label} {'-':>10} {'-':>8} {'-':>6} {'-':>8}  {fn}")
            continue
        if grad:
            def call(fn=fn):
                return torch.autograd.grad(fn(coeffs, ts), ts, gout)     # no .grad accumulation (extra traffic)
        else:
            def call(fn=fn):
                with torch.no_grad():
                    return fn(coeffs, ts)
        try:
            sec = clock(call)
        except Exception as e:  # noqa: BLE001 - e.g. inductor failing on this box: report and go on
            print(f"{label} {'-':>10} {'-':>8} {'-':>6} {'-':>8}  failed: {type(e).__name__}: {str(e)[:100]}")
            continue
        times[name] = sec
        gbps = n_bytes / sec
        speedup = times["eager"] / sec if "eager" in times else float("nan")
        note = ""
        if name == "triton":
            note = f"copy {_mark(gbps / peak >= TARGET_COPY_FRACTION)}"
            if k >= 4:
                note += f", 3x eager {_mark(speedup >= TARGET_EAGER_SPEEDUP)}"
        print(f"{label} {sec * 1e6:10.1f} {gbps / 1e9:8.1f} {100 * gbps / peak:6.1f} {speedup:8.2f}  {note}")
    del ts, gout


def _sampler(model, solver: str = "dpmpp_2m"):
    return Sampler(model, solver, progress=False)


def graph_replay(clock: Clock, device: torch.device, batch: int, steps: int) -> None:
    print(f"\n(b) whole sampling loop: Sampler(load_mnist_unet(), 'dpmpp_2m'), {steps} steps, batch {batch}, "
          "float32; median wall time per run (synchronized)")
    sampler = _sampler(load_mnist_unet(device=device))
    seeds = iter(range(1_000_000))
    plain = clock.wall(lambda: sampler.run(steps=steps, batch_size=batch, device=device, progress=False,
                                           seed=next(seeds)))
    print(f"plain .run:          {plain * 1e3:9.2f} ms")
    if device.type != "cuda":
        print("graphed .run:        skipped (CUDA graphs need a CUDA device)")
        return
    graphed = sampler.graphed(steps=steps, shape=(batch, 1, 28, 28), device=device)
    replay = clock.wall(lambda: graphed.run(seed=next(seeds)))
    print(f"graphed replay .run: {replay * 1e3:9.2f} ms   ({plain / replay:.2f}x faster than plain)")


def _record_calls(model: torch.nn.Module):
    """Hook that keeps a copy of every forward's inputs, so the network can be timed alone on the same inputs."""
    calls: list[tuple[tuple, dict]] = []

    def pre(module, args, kwargs):
        clone = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731
        calls.append((tuple(clone(a) for a in args), {n: clone(v) for n, v in kwargs.items()}))

    return calls, model.register_forward_pre_hook(pre, with_kwargs=True)


def loop_overhead(clock: Clock, device: torch.device, batch: int, steps: int) -> None:
    print(f"\n(c) wall time outside the model: built-in UNet, batch {batch}, {steps} steps, dpmpp_2m. "
          "model = the network's forward called alone on the inputs recorded from one run (same count, "
          "synchronized once around all calls); total = synchronized wall time of Sampler.run (and of the graph "
          "replay); outside = 1 - model / total. Medians.")
    print(f"target: outside < {TARGET_LOOP_OVERHEAD:.0%} of wall time")
    for dname, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        model = load_mnist_unet(device=device, dtype=dtype)
        sampler = _sampler(model)
        calls, handle = _record_calls(model)
        try:
            sampler.run(steps=steps, batch_size=batch, device=device, progress=False, seed=0)
        except Exception as e:  # noqa: BLE001 - e.g. a non-finite half-precision run: report it
            handle.remove()
            print(f"{dname}: run failed: {type(e).__name__}: {e}")
            continue
        handle.remove()
        if not calls:
            print(f"{dname}: the model's forward hooks saw no call; cannot time the model alone")
            continue

        def model_alone():
            with torch.no_grad():
                for args, kwargs in calls:
                    model(*args, **kwargs)

        seeds = iter(range(1, 1_000_000))
        model_s = clock.wall(model_alone)
        total = clock.wall(lambda: sampler.run(steps=steps, batch_size=batch, device=device, progress=False,
                                               seed=next(seeds)))
        out = 1 - model_s / total
        noise = " (negative: the model timed alone took longer than the run; timing noise)" if out < 0 else ""
        print(f"{dname}: {len(calls)} model calls {model_s * 1e3:8.2f} ms; run {total * 1e3:8.2f} ms; outside "
              f"{100 * out:6.2f}%  {_overhead_mark(out)}{noise}")
        if device.type == "cuda":
            graphed = sampler.graphed(steps=steps, shape=(batch, 1, 28, 28), device=device, dtype=dtype)
            replay = clock.wall(lambda: graphed.run(seed=next(seeds)))
            out_g = 1 - model_s / replay
            print(f"{dname}: graphed replay {replay * 1e3:8.2f} ms; outside {100 * out_g:6.2f}%  "
                  f"{_overhead_mark(out_g)} (negative: the replay saves launch time that the eagerly timed model "
                  "calls still pay)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python scripts/gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run every code path on the CPU with tiny sizes and 1 repetition (Triton interpreted, "
                         "torch.compile skipped): checks that the script runs, not speed")
    ap.add_argument("--repeats", "--reps", type=positive_int, default=25,
                    help="timed repetitions per figure (median)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compiles take most of (a))")
    ap.add_argument("--only", default="a,b,c", help="comma list of the sections to run: a, b, c")
    a = ap.parse_args(argv)
    sections = set(a.only.split(","))
    if not sections <= {"a", "b", "c"}:
        ap.error(f"--only takes a comma list of a, b, c; got {a.only!r}")
    if a.cpu_smoke:
        # Triton's interpreter runs the kernels on CPU tensors; diffsolve loads the kernels lazily, so setting
        # it here (before the first kernel call) suffices.
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.pop("DIFFSOLVE_KERNELS", None)
        device, reps, warmup = torch.device("cpu"), 1, 1
        shapes, batch, steps = SMOKE_SHAPES, 2, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device (torch.cuda.is_available() is False; torch "
                     f"{torch.__version__}). Run it on the GPU machine, or pass --cpu-smoke to check the script.")
        device, reps, warmup = torch.device("cuda"), a.repeats, 3
        shapes, batch, steps = SHAPES, 256, 10
    clock = Clock(device, reps, warmup)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke: not a timing)"
    print(f"diffsolve gpu_check on {name}; torch {torch.__version__}; reps {reps}, warm-up {warmup}")
    t0 = time.perf_counter()
    compile_ok = not a.cpu_smoke and not a.no_compile
    if "a" in sections:
        fused_updates(clock, shapes, a.cpu_smoke, compile_ok)
        print(f"[(a) took {time.perf_counter() - t0:.0f} s]")
    if "b" in sections:
        graph_replay(clock, device, batch, steps)
    if "c" in sections:
        loop_overhead(clock, device, batch, steps)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
