"""Retrain the corrections shipped for the built-in MNIST UNet (corrections/weights), with the settings below.

    python scripts/build_corrections.py [--only amed,amed_ipndm,amed_deis,gits,learned,learned_deis,weights_deis]
                                        [--out corrections/weights]

Each item trains on one CPU thread in a few minutes (times are printed and stored in the sidecars), from training
noise seeds 0 .. n - 1 (the learned grid: 500000 .. 500000 + n - 1); the evaluation (scripts/corrections_report.py) uses the
held-out seeds from 100000.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import torch

from diffsolve.models import load_mnist_unet
from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.gits import gits_grid
from diffsolve.corrections.grid_search import learn_grid
from diffsolve.corrections.io import to_amed_table
from diffsolve.corrections.io import SHIPPED, AMEDCorrection, load_correction
from diffsolve.corrections.train import train_amed

NFE = (3, 5, 7, 9)
FILES = {"amed_ipndm": "amed-ipndm-mnist-unet.safetensors", "amed": "amed-mnist-unet.safetensors",
         "gits": "gits-ipndm-mnist-unet.safetensors", "learned": "learned-ipndm-mnist-unet.safetensors",
         "learned_deis": "learned-deis-mnist-unet.safetensors", "amed_deis": "amed-deis-mnist-unet.safetensors",
         "weights_deis": "weights-deis-mnist-unet.safetensors"}
ITEMS = tuple(FILES)
# AMED-Plugin(iPNDM) and AMED-Plugin(DEIS): (1) iPNDM grids of 2 (N - 1) steps with the data-mean AFS, learned by gradient; (2) read as
# per-step constants (main grid = even points, r from the odd ones, c = a = 1); (3) the feature predictor starts
# from those constants and is refined with the endpoint loss.
AMED_IPNDM_GRID = dict(n=64, batch_size=32, epochs=8, lr=0.05)
AMED_IPNDM_REFINE = dict(loss="endpoint", n_train=64, batch_size=32, epochs=3, lr=2e-3)
# AMED-Solver: trained with the endpoint loss on the main grids found for AMED-Plugin(iPNDM) when present.
AMED_SOLVER = dict(loss="endpoint", n_train=64, batch_size=32, epochs=6, lr=1e-2)
GITS = dict(n=64)
LEARNED = dict(n=64, epochs=12, lr=0.05, batch_size=32)
# DEIS: at lr 0.05 the grid stalls half-way from the EDM grid ([80, 17, 4.5, 2.2, 0.79, 0] at NFE 5, 0.73x of the
# best hand-made run on held-out noise); lr 0.2 on batches of 16 reaches [80, 5.4, 2.8, 1.3, 0.48, 0] (0.50x).
LEARNED_DEIS = dict(n=64, epochs=16, lr=0.2, batch_size=16)
AMED_DEIS_GRID = dict(n=64, batch_size=16, epochs=16, lr=0.2)
# Learned DEIS weights: starting grids as AMED_DEIS_GRID (with AFS, from the AMED grid and three standard grids, the
# best kept), then grid and offsets together. Trials at NFE 5 from the same starting grid (held-out RMSE, 64 seeds):
# 128 trajectories x 30 epochs 0.0774; x 60 epochs 0.0733; offsets at lr 1e-2 0.0742; DEIS order 4 0.0771;
# 256 trajectories x 30 epochs 0.0715 (kept).
WEIGHTS_DEIS = dict(n=256, batch_size=16, epochs=30, lr=0.02, weight_lr=5e-3, grid_options=AMED_DEIS_GRID)


def build(names: Sequence[str], out: Path) -> None:

    torch.set_num_threads(1)
    model = load_mnist_unet()
    log = lambda s: print(s, flush=True)  # noqa: E731
    for name in names:
        start, cpu = time.perf_counter(), time.process_time()
        log(f"== {name}")
        if name in ("amed_ipndm", "amed_deis"):
            base = name.split("_")[1]
            grid = learn_grid(model, base=base, nfe=NFE, afs=True, teacher="fine", seed=0, log=log,
                              **(AMED_DEIS_GRID if base == "deis" else AMED_IPNDM_GRID))
            tables = to_amed_table(grid, model)
            corr = train_amed(model, base=base, init=tables, teacher="fine", seed=0, log=log,
                              **AMED_IPNDM_REFINE)
        elif name == "amed":
            grids = None
            if (out / FILES["amed_ipndm"]).is_file():
                ref = load_correction(out / FILES["amed_ipndm"])
                grids = dict(ref.grids) if isinstance(ref, AMEDCorrection) else None
            corr = train_amed(model, base="amed", nfe=NFE, grid=grids, teacher="fine", seed=0, log=log,
                              **AMED_SOLVER)
        elif name == "weights_deis":
            corr = learn_coefficients(model, base="deis", nfe=NFE, afs=True, teacher="fine", seed=0, log=log,
                                      **WEIGHTS_DEIS)
        elif name == "gits":
            corr = gits_grid(model, base="ipndm", nfe=NFE, teacher="fine", seed=0, log=log, **GITS)
        else:
            base = "deis" if name == "learned_deis" else "ipndm"
            corr = learn_grid(model, base=base, nfe=NFE, teacher="fine", seed=0, log=log,
                              **(LEARNED_DEIS if base == "deis" else LEARNED))
        corr.meta["model"] = "mnist-unet"
        corr.meta["build_seconds"] = round(time.perf_counter() - start, 1)
        corr.meta["build_cpu_seconds"] = round(time.process_time() - cpu, 1)     # wall time includes other load
        path = corr.save(out / FILES[name])
        log(f"== {name}: wrote {path} ({path.stat().st_size} bytes) in {time.perf_counter() - start:.0f}s "
            f"({time.process_time() - cpu:.0f}s of CPU)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/build_corrections.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(ITEMS), help="comma-separated items (default: all)")
    p.add_argument("--out", default=str(SHIPPED), help="output folder (default: the package's weights folder)")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(ITEMS)
    if unknown:
        raise SystemExit(f"unknown items {sorted(unknown)}; choose from {', '.join(ITEMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build(names, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
