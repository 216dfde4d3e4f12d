"""Draw the documentation's figures from the built-in models into docs/figures/ (small PNGs, committed).

    python scripts/make_figures.py [--out docs/figures] [--threads 1]

- samples_by_solver.png: the built-in MNIST UNet from the same seeds, by solver, at NFE 3, 5 and 10;
- error_vs_nfe.png: endpoint RMSE against a float64 reference versus NFE on the built-in Gaussian mixture, the
  y-axis fitted to the solvers' curves;
- learned_vs_unlearned.png: the shipped learned corrections against un-learned solvers at equal NFE (MNIST UNet);
- flow_trajectories.png: trajectories of the 2-D moons flows (1- and 2-rectified flow, shortcut model).

About ten seconds on one CPU core (it loads the shipped weights; nothing is trained); seeded, so a rerun draws
the same pictures.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffsolve import Sampler  # noqa: E402
from diffsolve.models import load_mnist_unet, load_moons_flow, load_moons_shortcut  # noqa: E402
from diffsolve.problems import GaussianMixtureProblem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SOLVERS = ("euler", "dpmpp_2m", "unipc_bh2", "deis", "ipndm")
SAMPLE_NFES = (3, 5, 10)
SEEDS = list(range(6))
ERROR_SOLVERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2", "deis", "ipndm", "rk4")
ERROR_NFES = (4, 6, 8, 12, 16, 24, 32, 48, 64)
DPI = 80


def montage(images: torch.Tensor) -> torch.Tensor:
    """[n, 1, h, w] in [-1, 1] -> one [h, n * w] strip in [0, 1]."""
    x = (images.clamp(-1, 1) + 1) / 2
    return torch.cat(list(x[:, 0]), dim=1)


def samples_by_solver(out: Path) -> None:
    unet = load_mnist_unet()
    noise = torch.randn(len(SEEDS), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(len(SAMPLE_SOLVERS), len(SAMPLE_NFES), figsize=(9, 0.62 * len(SAMPLE_SOLVERS) + 0.4))
    for i, solver in enumerate(SAMPLE_SOLVERS):
        for j, nfe in enumerate(SAMPLE_NFES):
            res = Sampler(unet, solver, progress=False).run(nfe=nfe, noise=noise)
            ax = axes[i, j]
            ax.imshow(montage(res.samples), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"NFE {nfe}", fontsize=10)
            if j == 0:
                ax.set_ylabel(solver, fontsize=9, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    fig.savefig(out / "samples_by_solver.png", dpi=DPI)
    plt.close(fig)


def error_vs_nfe(out: Path) -> None:
    model = GaussianMixtureProblem.default()
    noise = torch.randn(256, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = Sampler(model, "odeint_dopri5", rtol=1e-10, atol=1e-10, progress=False).run(
        nfe=100000, noise=noise, dtype=torch.float64).samples
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    values = []
    for solver in ERROR_SOLVERS:
        nfes, errs = [], []
        for nfe in ERROR_NFES:
            res = Sampler(model, solver, progress=False).run(nfe=nfe, noise=noise, dtype=torch.float64)
            err = float((res.samples - ref).pow(2).mean(dim=1).sqrt().mean())
            nfes.append(res.nfe), errs.append(err)
        values += errs
        ax.loglog(nfes, errs, marker="o", ms=3, label=solver)
    # The axis spans the solvers' curves only: a reference line near 1e-9 would flatten them.
    ax.set_ylim(min(values) / 1.5, max(values) * 1.5)
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("endpoint RMSE vs float64 reference")
    ax.set_title("Gaussian mixture (16-D, EDM schedule, karras grid)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "error_vs_nfe.png", dpi=DPI)
    plt.close(fig)


def learned_vs_unlearned(out: Path, nfe: int = 5) -> None:
    unet = load_mnist_unet()
    noise = torch.randn(len(SEEDS), 1, 28, 28, generator=torch.Generator().manual_seed(100000))
    ref = Sampler(unet, "dpmpp_3m", progress=False).run(steps=40, noise=noise).samples
    rows = [("reference: dpmpp_3m, 40 steps", None),
            (f"deis, NFE {nfe}", dict(solver="deis")),
            (f"ipndm, NFE {nfe}", dict(solver="ipndm")),
            (f"amed_plugin (base deis), NFE {nfe}", dict(solver="amed_plugin", base="deis")),
            (f"learned_multistep (base deis), NFE {nfe}", dict(solver="learned_multistep", base="deis"))]
    fig, axes = plt.subplots(len(rows), 1, figsize=(5.2, 1.05 * len(rows)))
    for ax, (label, spec) in zip(axes, rows):
        if spec is None:
            x = ref
        else:
            spec = dict(spec)
            x = Sampler(unet, spec.pop("solver"), progress=False, **spec).run(nfe=nfe, noise=noise).samples
            label += f"  (RMSE to reference {float((x - ref).pow(2).mean().sqrt()):.3f})"
        ax.imshow(montage(x), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(label, fontsize=8)
    fig.tight_layout(pad=0.3)
    fig.savefig(out / "learned_vs_unlearned.png", dpi=DPI)
    plt.close(fig)


def flow_trajectories(out: Path) -> None:
    models = [("1-rectified flow, Euler", load_moons_flow(reflow=1), "euler"),
              ("2-rectified flow, Euler", load_moons_flow(reflow=2), "euler"),
              ("shortcut model, 4 jumps", load_moons_shortcut(), None)]
    noise = torch.randn(600, 2, generator=torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.3), sharex=True, sharey=True)
    for ax, (title, model, solver) in zip(axes, models):
        sampler = Sampler(model, solver, progress=False) if solver else Sampler(model, progress=False)
        fine = sampler.run(steps=32 if solver else 4, noise=noise, return_trajectory=True).trajectory
        path = fine.detach()
        for k in range(0, path.shape[1], 6):
            ax.plot(path[:, k, 0], path[:, k, 1], lw=0.4, color="0.6", alpha=0.6)
        ax.scatter(path[0, :, 0], path[0, :, 1], s=2, color="tab:blue", alpha=0.35, label="noise")
        ax.scatter(path[-1, :, 0], path[-1, :, 1], s=2, color="tab:red", label="samples")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout(pad=0.3)
    fig.savefig(out / "flow_trajectories.png", dpi=DPI)
    plt.close(fig)


FIGURES = {"samples": samples_by_solver, "errors": error_vs_nfe, "learned": learned_vs_unlearned,
           "flows": flow_trajectories}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=",".join(FIGURES), help="comma-separated: " + ",".join(FIGURES))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        t0 = time.perf_counter()
        FIGURES[name](args.out)
        print(f"{name}: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
