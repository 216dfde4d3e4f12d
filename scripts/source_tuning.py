"""Learned grids on a flow from its own source: the shipped moons flow from the eight-Gaussians source
(`diffsolve.models.load_moons_8gaussians`), a grid learned on starts from that source against one learned on
N(0, I) starts (all a tuner could draw before fields had sources), each judged against the best plain solver.

    python scripts/source_tuning.py [--nfe 2,4,8] [--samples 256] [--train 128] [--epochs 20] [--base ipndm]

Held-out starts: the source's draws from seeds 900_000 + i (the tuning draws seeds 500_000 + i). Reference and
teacher: the float64 dopri5 solve at rtol = atol = 1e-7 from the same starts. RMSE = sqrt(mean over samples of the
squared endpoint distance). Plain solvers: euler, heun, midpoint, rk4, ipndm, ipndm_v on the uniform grid.
"""
from __future__ import annotations

import argparse
import time

import torch

from diffsolve.cli.argtypes import positive_int
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.errors import InvalidArgument
from diffsolve.evaluation.reference import ReferenceSettings, solve_reference
from diffsolve.field import VectorField
from diffsolve.models.toy2d import load_moons_8gaussians
from diffsolve.noise import draw_start
from diffsolve.sampler import Sampler

SETTINGS = ReferenceSettings(method="dopri5", rtol=1e-7, atol=1e-7)
PLAIN = ("euler", "heun", "midpoint", "rk4", "ipndm", "ipndm_v")
HELD_OUT_SEED = 900_000


def standard_normal(n: int, generator: torch.Generator) -> torch.Tensor:
    """N(0, I) starts in 2-D, as a source (what the tuners drew before fields had sources)."""
    return torch.randn(n, 2, generator=generator)


def main() -> None:
    """Print, per NFE, the best plain solver's held-out RMSE and the learned grids' (ratio to it, seconds)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nfe", default="2,4,8", help="comma-separated NFE budgets (default 2,4,8)")
    ap.add_argument("--samples", type=positive_int, default=256, help="held-out starts (default 256)")
    ap.add_argument("--train", type=positive_int, default=128, help="teacher endpoints per grid (default 128)")
    ap.add_argument("--epochs", type=positive_int, default=20, help="training epochs (default 20)")
    ap.add_argument("--base", default="ipndm", help="the learned grid's solver: euler, ipndm, ipndm_v")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_moons_8gaussians()
    field = VectorField(model)
    normal = VectorField(model, source=standard_normal)
    seeds = list(range(HELD_OUT_SEED, HELD_OUT_SEED + args.samples))
    starts = draw_start((len(seeds), 2), source=field.source, seed=seeds)
    ref = solve_reference(field, starts, [1.0, 0.0], seeds=seeds, settings=SETTINGS).endpoint.float()

    def rmse(solver: str, nfe: int, grid=None) -> float:
        out = Sampler(field, solver, grid=grid, progress=False).run(nfe=nfe, noise=starts).samples
        return float((out - ref).pow(2).sum(1).mean().sqrt())

    for nfe in (int(v) for v in args.nfe.split(",")):
        plain = {}
        for s in PLAIN:
            try:
                plain[s] = rmse(s, nfe)
            except InvalidArgument:          # a budget the solver cannot meet (rk4 at NFE 2)
                pass
        best = min(plain, key=plain.get)
        print(f"NFE {nfe}: best plain {best} {plain[best]:.4f} (" +
              ", ".join(f"{k} {v:.3f}" for k, v in plain.items()) + ")", flush=True)
        for name, f in (("its source", field), ("N(0, I) starts", normal)):
            t0 = time.perf_counter()
            g = learn_grid(f, base=args.base, nfe=(nfe,), n=args.train, batch_size=16, epochs=args.epochs,
                           log=None, teacher_options={"settings": SETTINGS})
            err = rmse(args.base, nfe, g.grid(nfe))
            print(f"  {args.base} grid learned on {name}: {err:.4f} = {err / plain[best]:.2f}x of the best plain "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
