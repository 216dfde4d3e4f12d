"""Issue 3 closing table: endpoint RMSE against a fine reference, solver x NFE, on the MNIST DDPM (diffsolve solvers
and diffusers' schedulers on the same network and noise) and on GaussianMixtureProblem.default().

    python -m diffsolve.bench.issue3_table [--batch 4] [--nfe 3,4,5,6,8,10,15,20] [--ref-steps 2000]

The MNIST DDPM is driven by diffusers through a thin `unet(sample, timestep)` wrapper and a scheduler config with
trained_betas = the model's beta_t buffer (num_train_timesteps = 1001), so both libraries use the same
alphas_cumprod (up to float32 cumprod round-off, printed). diffsolve runs use grid='karras' ending at t = 0;
diffusers runs use each scheduler's default timesteps. All runs end at zero noise, as does the reference. A '-' means the solver cannot run at that budget;
a cell in parentheses ran with fewer model calls than the column (the most steps that fit).
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch

from ..sampler import Sampler
from ..pretrained_adapters import load_mnist_ddpm
from .problems import GaussianMixtureProblem

MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "mnist-ddpm-eps.safetensors"
NFES = (3, 4, 5, 6, 8, 10, 15, 20)
GRID = "karras"     # diffsolve's grid on the MNIST DDPM (EDM rho = 7 over its sigma range, then 0)
OURS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpm_solver_2", "dpm_solver_3", "unipc_bh1",
        "unipc_bh2", "deis", "ipndm", "ipndm_v", "lms", "rk4")


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def fmt(v: float | None, short: bool = False) -> str:
    if v is None:
        return "-"
    s = f"{v:.2e}" if math.isfinite(v) else "nan"
    return f"({s})" if short else s


def table(title: str, rows: dict[str, dict[int, tuple[float, int] | None]], nfes) -> str:
    head = f"| {title} | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    sep = "|---|" + "---|" * len(nfes)
    lines = [head, sep]
    for name, cells in rows.items():
        out = []
        for n in nfes:
            c = cells.get(n)
            out.append("-" if c is None else fmt(c[0], short=c[1] < n))
        lines.append(f"| {name} | " + " | ".join(out) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# MNIST DDPM
# ------------------------------------------------------------------------------------------------
class MnistAsUNet(torch.nn.Module):
    """diffusers' calling convention for the MNIST DDPM: unet(sample, timestep) with the integer timestep n."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device).reshape(-1)
        return self.model(sample, t.expand(sample.shape[0]) / 1000.0)


def diffusers_schedulers(betas):
    import diffusers
    common = dict(num_train_timesteps=betas.numel(), trained_betas=betas.double().numpy())
    D = diffusers
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


def run_diffusers(scheduler, unet, noise, steps):
    sch = copy.deepcopy(scheduler)
    sch.set_timesteps(steps)
    x = noise * sch.init_noise_sigma
    calls = 0
    with torch.no_grad():
        for t in sch.timesteps:
            x = sch.step(unet(sch.scale_model_input(x, t), t), t, x).prev_sample
            calls += 1
    return x, calls


def mnist_section(batch: int, nfes, ref_steps: int) -> str:
    model = load_mnist_ddpm(MODEL)
    noise = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t0 = time.time()
    with torch.no_grad():
        ref = Sampler(model, "dpmpp_3m", "logsnr_uniform", progress=False).run(steps=ref_steps, noise=noise).samples
        ref_half = Sampler(model, "dpmpp_3m", "logsnr_uniform", progress=False).run(
            steps=ref_steps // 2, noise=noise).samples
    lines = [f"MNIST DDPM, batch {batch}, reference dpmpp_3m {ref_steps} log-SNR steps "
             f"({time.time() - t0:.0f}s); RMSE(ref, same with {ref_steps // 2} steps) = {rmse(ref, ref_half):.2e}; "
             f"RMSE(ref, 0) = {rmse(ref, torch.zeros_like(ref)):.3f}"]
    rows: dict[str, dict] = {}
    for name in OURS:
        rows[name] = {}
        for n in nfes:
            try:
                s = Sampler(model, name, GRID, progress=False)
                with torch.no_grad():
                    r = s.run(nfe=n, noise=noise)
                rows[name][n] = (rmse(r.samples, ref), r.nfe)
            except Exception:
                rows[name][n] = None
    lines.append(table(f"diffsolve, {GRID} grid (MNIST)", rows, nfes))

    # the same solvers on diffusers' own timesteps (DPMSolverMultistep's 'linspace', ending at zero noise)
    from ..pretrained_adapters.diffusers import diffusers_grid
    rows = {}
    for name in OURS:
        rows[name] = {}
        for n in nfes:
            try:
                s = Sampler(model, name, diffusers_grid, grid_options={"style": "dpmsolver"}, progress=False)
                with torch.no_grad():
                    r = s.run(nfe=n, noise=noise)
                rows[name][n] = (rmse(r.samples, ref), r.nfe)
            except Exception:
                rows[name][n] = None
    lines.append(table("diffsolve, diffusers' timesteps (MNIST)", rows, nfes))

    betas = model.beta_t.detach().clone()
    scheds = diffusers_schedulers(betas)
    ac_diff = next(iter(scheds.values()))[0].alphas_cumprod.double()
    lines.append(f"alphas_cumprod: diffusers (cumprod of trained_betas) vs the model's alpha_t buffer: max abs diff "
                 f"{float((ac_diff - model.alpha_t.double()).abs().max()):.2e}")
    unet = MnistAsUNet(model)
    drows: dict[str, dict] = {}
    for name, (sch, per_step) in scheds.items():
        drows[name] = {}
        for n in nfes:
            steps = (n + 1) // 2 if per_step == 2 else n
            try:
                x, calls = run_diffusers(sch, unet, noise, steps)
                drows[name][n] = (rmse(x, ref), calls) if calls <= n else None
            except Exception:
                drows[name][n] = None
    lines.append(table("diffusers (MNIST)", drows, nfes))
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Gaussian mixture
# ------------------------------------------------------------------------------------------------
def mixture_section(batch: int, nfes, ref_steps: int) -> str:
    prob = GaussianMixtureProblem.default()
    noise = torch.randn(batch, prob.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        ref = Sampler(prob, "dpmpp_3m", progress=False).run(steps=ref_steps, noise=noise).samples
        chk = Sampler(prob, "rk4", progress=False).run(steps=ref_steps // 2, noise=noise).samples
    lines = [f"GaussianMixtureProblem.default() (EDM, default karras grid, float64), batch {batch}; reference "
             f"dpmpp_3m {ref_steps} steps; RMSE(ref, rk4 {ref_steps // 2} steps) = {rmse(ref, chk):.2e}"]
    rows: dict[str, dict] = {}
    for name in OURS:
        rows[name] = {}
        for n in nfes:
            try:
                with torch.no_grad():
                    r = Sampler(prob, name, progress=False).run(nfe=n, noise=noise)
                rows[name][n] = (rmse(r.samples, ref), r.nfe)
            except Exception:
                rows[name][n] = None
    lines.append(table("diffsolve (mixture)", rows, nfes))
    return "\n\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--nfe", default=",".join(map(str, NFES)))
    ap.add_argument("--ref-steps", type=int, default=2000)
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--skip-mixture", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    nfes = tuple(int(v) for v in args.nfe.split(","))
    if not args.skip_mixture:
        print(mixture_section(256, nfes, args.ref_steps), flush=True)
        print()
    if not args.skip_mnist:
        print(mnist_section(args.batch, nfes, args.ref_steps), flush=True)


if __name__ == "__main__":
    main()
