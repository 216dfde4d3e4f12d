"""PAS-style direction corrections on learned DEIS weights, on the shared MNIST DDPM, against diffusers' schedulers.

    python scripts/pas_report.py [--nfe 3,5] [--samples 64] [--out DIR] [--rank 4] [--epochs 20] [--lr 3e-3]
                                 [--weight-lr RATE]

The yardstick of scripts/peer_report.py: endpoint RMSE against DPM-Solver++(3M) on 1,000 log-SNR steps, on held-out
noise seeds from 100000. Best peer: every diffusers scheduler at its default timesteps; best un-learned: the bench's
fast solvers on the karras, log-SNR and diffusers grids. Learned DEIS weights are trained as in peer_report (AFS grid
from several starts, then the weights, 128 trajectories of the 'fine' teacher, seed 0); the directions
(corrections.pas.learn_directions) are fitted on the same 128 trajectories with the weights fixed. Every stage is
kept in `--out` and reused when present (the teacher endpoints and the held-out reference too). One thread.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from diffsolve.bench.presets import MNIST_DDPM, diffusers_rows, rmse, solver_rows
from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.grid_search import _teacher_endpoints, learn_grid
from diffsolve.corrections.io import load_correction
from diffsolve.corrections.pas import learn_directions
from diffsolve.corrections.teacher import field_of
from diffsolve.noise import draw_noise
from diffsolve.pretrained_adapters import load_mnist_ddpm
from diffsolve.pretrained_adapters.diffusers import diffusers_grid
from diffsolve.sampler import Sampler


def _peer_report():
    """scripts/peer_report.py (its yardstick and training recipe), loaded from beside this file."""
    spec = importlib.util.spec_from_file_location("diffsolve_scripts_peer_report",
                                                  Path(__file__).resolve().parent / "peer_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PEER = _peer_report()
EVAL_SEED, GRID_FIT, TEACHER, WEIGHTS, grid_starts = (_PEER.EVAL_SEED, _PEER.GRID_FIT, _PEER.TEACHER, _PEER.WEIGHTS,
                                                      _PEER.grid_starts)


class ReportSettings(NamedTuple):
    """The command line, parsed: NFEs, held-out samples, cache folder and the direction training's options."""

    nfe: tuple[int, ...]
    samples: int
    out: Path
    rank: int
    epochs: int
    lr: float
    weight_lr: float | None


def _cached(path: Path, make):
    """torch.load(path) when present, else make() saved there (the teacher and the reference)."""
    if path.is_file():
        return torch.load(path)
    value = make()
    torch.save(value, path)
    return value


def train(model, st: ReportSettings) -> tuple:
    """(learned weights, directions, seconds of each) for `st.nfe`, read from `st.out` when there."""
    tag = "-".join(str(k) for k in st.nfe)
    common = dict(teacher="fine", teacher_options=TEACHER, seed=0, log=print)
    wpath = st.out / f"weights-deis-{tag}.safetensors"
    if wpath.is_file():
        weights = load_correction(wpath, field=field_of(model))
    else:
        start = time.perf_counter()
        grid = learn_grid(model, base="deis", nfe=st.nfe, afs=True, starts=grid_starts(), **GRID_FIT, **common)
        weights = learn_coefficients(model, base="deis", nfe=st.nfe, grid=grid, **WEIGHTS, **common)
        weights.meta["build_seconds"] = round(time.perf_counter() - start, 1)
        weights.save(wpath)
    n = WEIGHTS["n"]
    ends = _cached(st.out / f"teacher-{n}.pt", lambda: _teacher_endpoints(
        field_of(model), n, 0, "fine", TEACHER, torch.float32, print, time.perf_counter())[1:])
    ppath = st.out / f"pas-deis-{tag}-r{st.rank}-e{st.epochs}-lr{st.lr:g}-w{st.weight_lr}.safetensors"
    if ppath.is_file():
        pas = load_correction(ppath, field=field_of(model))
    else:
        pas = learn_directions(model, weights, rank=st.rank, n=n, batch_size=16, epochs=st.epochs, lr=st.lr,
                               weight_lr=st.weight_lr,
                               seed=0, teacher="fine", teacher_options=TEACHER, endpoints=tuple(ends), log=print)
        pas.save(ppath)
    return weights, pas


def unlearned(model, noise: torch.Tensor, ref: torch.Tensor, nfes: Sequence[int]) -> tuple[dict, dict]:
    """(diffusers' schedulers, the bench's fast solvers on three grids): name -> {nfe: (RMSE, model calls)}."""
    ours: dict = {}
    for label, g, opts in (("karras", "karras", None), ("logsnr_uniform", "logsnr_uniform", None),
                           ("diffusers", diffusers_grid, {"style": "dpmsolver"})):
        ours.update({f"{k} / {label}": v for k, v in solver_rows(model, noise, ref, nfes, None, g, opts).items()})
    return diffusers_rows(model, noise, ref, nfes), ours


def measure(st: ReportSettings) -> list[dict]:
    """One row per NFE: the best peer, the best un-learned, learned weights and the directions on held-out noise."""
    torch.set_num_threads(1)
    st.out.mkdir(parents=True, exist_ok=True)
    model = load_mnist_ddpm(MNIST_DDPM)
    n = st.samples
    noise = draw_noise((n, 1, 28, 28), seed=list(range(EVAL_SEED, EVAL_SEED + n)), dtype=torch.float32)

    def reference():
        with torch.no_grad():
            return Sampler(model, "dpmpp_3m", "logsnr_uniform", progress=False).run(steps=1000, noise=noise).samples
    ref = _cached(st.out / f"reference-{EVAL_SEED}-{n}.pt", reference)
    weights, pas = train(model, st)
    tag = "-".join(str(k) for k in st.nfe)
    peers, ours = _cached(st.out / f"peers-{tag}-{n}.pt", lambda: unlearned(model, noise, ref, st.nfe))
    rows = []
    for k in st.nfe:
        def best(table):
            cells = [(v[k][0], name) for name, v in table.items() if v.get(k) is not None and v[k][1] <= k]
            return min(cells)
        w = Sampler(model, "learned_multistep", coefficients=weights, progress=False)
        name, options = pas.solver_settings()
        p = Sampler(model, name, progress=False, **options)
        with torch.no_grad():
            rw, rp = rmse(w.run(nfe=k, noise=noise).samples, ref), rmse(p.run(nfe=k, noise=noise).samples, ref)
        steps = next(s for s in weights.grids if weights.nfe_for(s) == k)
        rows.append({"nfe": k, "peer": best(peers), "unlearned": best(ours), "weights": rw, "pas": rp,
                     "steps": steps, "evals": p.plan(steps=steps).nfe,
                     "seconds": (weights.meta.get("build_seconds"), pas.meta.get("seconds")),
                     "train_calls": pas.meta.get("training_model_calls")})
    return rows


def table(rows: Sequence[dict]) -> str:
    """The markdown table of `measure`'s rows."""
    out = ["| NFE | best peer | best un-learned | learned weights | weights + directions | ratio weights | "
           "ratio directions | training s (weights; directions) | directions' training model calls (all NFEs) | "
           "steps / model evaluations per sample |", "|" + "---|" * 10]
    for r in rows:
        peer, un = r["peer"], r["unlearned"]
        sw, sp = r["seconds"]
        out.append(f"| {r['nfe']} | {peer[1]} {peer[0]:.4f} | {un[1]} {un[0]:.4f} | {r['weights']:.4f} | "
                   f"{r['pas']:.4f} | {r['weights'] / peer[0]:.3f}x | {r['pas'] / peer[0]:.3f}x | "
                   f"{sw}; {sp} | {r['train_calls']} | {r['steps']} / {r['evals']} |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/pas_report.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nfe", default="3,5")
    p.add_argument("--samples", type=int, default=64, help="held-out samples (default 64)")
    p.add_argument("--out", default="/tmp/diffsolve-pas", help="cache folder (reused when present)")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate of the directions")
    p.add_argument("--weight-lr", type=float, default=None,
                   help="fine-tune the weight offsets too, at this learning rate (default: fixed)")
    a = p.parse_args(argv)
    st = ReportSettings(tuple(int(v) for v in a.nfe.replace(",", " ").split()), a.samples, Path(a.out), a.rank,
                        a.epochs, a.lr, a.weight_lr)
    print(table(measure(st)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
