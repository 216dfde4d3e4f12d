"""Retrain the corrections shipped for the built-in MNIST UNet (corrections/weights), with the settings below.

    python -m diffsolve.corrections.build [--only amed,amed_ipndm,gits,learned] [--out corrections/weights]

Each item trains on one CPU thread in a few minutes (times are printed and stored in the sidecars), from training
noise seeds 0 .. n - 1 (the learned grid: 500000 .. 500000 + n - 1); the evaluation (corrections.report) uses the
held-out seeds from 100000.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import torch

from .io import SHIPPED

NFE = (3, 5, 7, 9)
ITEMS = {
    "amed": ("amed-mnist-unet.safetensors",
             dict(kind="amed", base="amed", loss="endpoint", n_train=96, epochs=8, lr=1e-2, batch_size=32)),
    "amed_ipndm": ("amed-ipndm-mnist-unet.safetensors",
                   dict(kind="amed", base="ipndm", loss="endpoint", n_train=96, epochs=8, lr=5e-3, batch_size=32)),
    "gits": ("gits-ipndm-mnist-unet.safetensors", dict(kind="gits", base="ipndm", n=64)),
    "learned": ("learned-ipndm-mnist-unet.safetensors",
                dict(kind="learned", base="ipndm", n=64, epochs=12, lr=0.05, batch_size=32)),
}


def build(names: Sequence[str], out: Path) -> None:
    from ..models import load_mnist_unet
    from .grid_search import gits_grid, learn_grid
    from .train import train_amed

    torch.set_num_threads(1)
    model = load_mnist_unet()
    log = lambda s: print(s, flush=True)  # noqa: E731
    for name in names:
        file, cfg = ITEMS[name]
        cfg = dict(cfg)
        kind = cfg.pop("kind")
        start = time.perf_counter()
        log(f"== {name}: {kind} {cfg}")
        if kind == "amed":
            corr = train_amed(model, nfe=NFE, teacher="fine", seed=0, log=log, **cfg)
        elif kind == "gits":
            corr = gits_grid(model, nfe=NFE, teacher="fine", seed=0, log=log, **cfg)
        else:
            corr = learn_grid(model, nfe=NFE, teacher="fine", seed=0, log=log, **cfg)
        corr.meta["model"] = "mnist-unet"
        corr.meta["build_seconds"] = round(time.perf_counter() - start, 1)
        path = corr.save(out / file)
        log(f"== {name}: wrote {path} ({path.stat().st_size} bytes) in {time.perf_counter() - start:.0f}s")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffsolve.corrections.build", description=__doc__,
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
