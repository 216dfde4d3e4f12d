"""Solver overhead: the share of sampling wall time spent outside the model, per solver (MNIST DDPM, CPU).

    python scripts/overhead.py                                  # ../shared/models/mnist-ddpm-eps.safetensors
    python scripts/overhead.py --solvers euler,heun,dpmpp_2m --batch-size 16 --steps 10 --repeats 3

Model time is the sum of forward() wall times (hooks on the module; on CUDA each call is synchronized, which
itself costs a little); total is the wall time of Sampler.run. Outside = total - model: planning, conversions,
update arithmetic, noise, checks, Python.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffsolve.bench.models import SHARED
from diffsolve.cli.argtypes import positive_int
from diffsolve.pretrained_adapters.mnist_ddpm import load_mnist_ddpm
from diffsolve.sampler import Sampler
from diffsolve.solvers import available_solvers

DEFAULT_WEIGHTS = SHARED / "models" / "mnist-ddpm-eps.safetensors"


class ModelTimer:
    """Forward hooks that add up the model's own wall time."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.total = 0.0
        self.calls = 0
        self._start = 0.0
        self.sync = device.type == "cuda"
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, module, args):
        if self.sync:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def _post(self, module, args, out):
        if self.sync:
            torch.cuda.synchronize()
        self.total += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.total, self.calls = 0.0, 0


def measure_solver(model, timer: ModelTimer, solver: str, steps: int, batch: int, repeats: int, device) -> dict:
    sampler = Sampler(model, solver, progress=False)
    sampler.run(steps=steps, batch_size=batch, seed=0, device=device)          # warm-up
    totals, models, nfe = [], [], 0
    for r in range(repeats):
        timer.reset()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = sampler.run(steps=steps, batch_size=batch, seed=r, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - t0)
        models.append(timer.total)
        nfe = res.nfe
    plans = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sampler.plan(steps)
        plans.append(time.perf_counter() - t0)
    total, mtime = statistics.median(totals), statistics.median(models)
    return {"solver": solver, "nfe": nfe, "total": total, "model": mtime, "outside": total - mtime,
            "plan": statistics.median(plans),
            "share": (total - mtime) / total, "per_step_ms": 1e3 * (total - mtime) / steps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python scripts/overhead.py", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--solvers", default="euler,heun,dpmpp_2m,dpmpp_3m,unipc_bh2,rk4,euler_ancestral")
    ap.add_argument("--steps", type=positive_int, default=10)
    ap.add_argument("--batch-size", "--batch", type=positive_int, default=16)
    ap.add_argument("--repeats", type=positive_int, default=3)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    model = load_mnist_ddpm(a.weights).to(device)
    timer = ModelTimer(model, device)
    known = set(available_solvers())
    print(f"MNIST DDPM (eps, 1x28x28), device {device}, threads {torch.get_num_threads()}, batch {a.batch_size}, "
          f"steps {a.steps}, median of {a.repeats}")
    print(f"{'solver':<16} {'NFE':>4} {'total/s':>9} {'model/s':>9} {'outside/s':>10} {'outside%':>9} "
          f"{'outside ms/step':>16} {'of which plan/s':>16}")
    for name in a.solvers.split(","):
        if name not in known:
            print(f"{name:<16} not registered")
            continue
        r = measure_solver(model, timer, name, a.steps, a.batch_size, a.repeats, device)
        print(f"{r['solver']:<16} {r['nfe']:>4} {r['total']:>9.3f} {r['model']:>9.3f} {r['outside']:>10.4f} "
              f"{100 * r['share']:>8.2f}% {r['per_step_ms']:>16.3f} {r['plan']:>16.4f}")


if __name__ == "__main__":
    main()
