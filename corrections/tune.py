"""`diffsolve tune amed|gits|grid|weights|skip`: train a correction for one model and write it (safetensors + JSON
sidecar; for skip, a JSON file).

    diffsolve tune amed --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out amed-ipndm.safetensors
    diffsolve tune gits --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out gits-ipndm.safetensors
    diffsolve tune grid --model mnist-unet --solver ipndm --nfe 3,5,7,9 --out learned-ipndm.safetensors
    diffsolve tune weights --model mnist-unet --solver deis --nfe 5 --out weights-deis.safetensors

`weights` learns a multistep rule's weight offsets together with its grid (with the data-mean AFS unless
`--no-afs`; the starting grids are learned first), for `Sampler(model, "learned_multistep", base=...,
coefficients=file)`; bases deis, ipndm, ipndm_v.

On a plain velocity field (the moons flows: `--model moons-cfm`) everything runs in the field's own time t, without
AFS; bases in native time (euler, ipndm, ipndm_v; amed, dpm_solver_2 for AMED), e.g.

    diffsolve tune grid --model moons-otcfm --solver ipndm_v --nfe 4 --reference-rtol 1e-7 --out moons-otcfm.safetensors

`skip` searches Skip-Tuning's rho_bottom (golden section, `--evaluations` samples of the metric) for one solver
and NFE, minimising the FD of the built-in classifier's features to held-out real digits (MNIST-shaped models) or
`--metric module:attr` (a callable `metric(samples) -> float`, lower is better), on `--n` tuning seeds, then scores
the choice against the untuned model on `--eval-n` other seeds; `Sampler(model, skip_tuning="skip.json")` loads it:

    diffsolve tune skip --model mnist-unet-deep --solver dpmpp_2m --nfe 5 --out skip-dpmpp_2m.json

`--solver` is the base solver: for `amed`, 'amed' trains the AMED-Solver and any other name (ipndm, ipndm_v,
dpmpp_2m, deis, dpm_solver_2, euler) an AMED-Plugin predictor for it. Training prints its progress and loss; the
run is seeded (`--seed`) and reproducible on one machine and thread count.
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch

from diffsolve.errors import InvalidArgument

WHAT = ("amed", "gits", "grid", "weights", "skip")
SKIP_TUNE_SEED, SKIP_EVAL_SEED = 7_000_000, 9_000_000     # tuning and held-out noise of `tune skip`: disjoint


def add_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("tune", help="train an AMED predictor, a GITS grid or a learned grid, or tune skips, for one "
                                    "model",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("what", choices=WHAT, help="amed (predictor), gits (grid by dynamic programming), grid (learned), "
                                              "weights (learned multistep weights and grid), skip (Skip-Tuning's rho)")
    t.add_argument("--model", default="mnist-unet",
                   help="built-in bench model name (mnist-unet, gmm, ...) or 'module:attr' (default mnist-unet)")
    t.add_argument("--solver", default=None, help="base solver (default: amed for amed, ipndm for grids)")
    t.add_argument("--nfe", default="3,5,7,9", help="comma-separated NFE budgets (default 3,5,7,9)")
    t.add_argument("--out", default=None, help="output .safetensors (a .json sidecar is written beside it)")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights, noise and batch order (default 0)")
    t.add_argument("--n", type=int, default=None,
                   help="training trajectories (default: 128 amed/gits/weights, 96 grid)")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default 10 amed, 20 grid, 30 weights)")
    t.add_argument("--batch-size", type=int, default=None, help="default 32 (weights: 16)")
    t.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (default 5e-3 amed, 0.05 grid, 0.02 for the grid in weights)")
    t.add_argument("--weight-lr", type=float, default=5e-3, help="weights: learning rate of the offsets")
    t.add_argument("--loss", choices=("step", "endpoint"), default="step", help="amed: step-wise or endpoint loss")
    t.add_argument("--no-afs", action="store_true", help="amed, weights: no analytical first step (one more NFE)")
    t.add_argument("--features", default="auto", help="amed: auto, module, denoised or none (time-only)")
    t.add_argument("--module", default=None, help="amed: submodule whose output feeds the predictor")
    t.add_argument("--from-grid", action="store_true",
                   help="amed plugin: first learn 2(N-1)-step grids of the base with the data-mean AFS, read them as "
                        "per-step constants and start the predictor there (how the shipped MNIST one was made)")
    t.add_argument("--grid-epochs", type=int, default=8, help="amed --from-grid: epochs of the grid stage")
    t.add_argument("--grid-lr", type=float, default=None,
                   help="amed --from-grid, weights: learning rate of the grid stage (default 0.05 amed, 0.2 weights; "
                        "the shipped DEIS plugin used 0.2)")
    t.add_argument("--starts", default=None,
                   help="grid, amed --from-grid, weights: comma-separated grid names also fitted from (the lowest "
                        "training loss is kept; the endpoint loss has local minima in the grid). Default: none for "
                        "grid and amed, karras,logsnr_uniform,time_quadratic for weights")
    t.add_argument("--teacher", choices=("reference", "fine"), default=None,
                   help="reference (adaptive float64, bench/reference.py) or fine (a fine-grid solve; default "
                        "for image models)")
    t.add_argument("--reference-rtol", type=float, default=None,
                   help="teacher 'reference': solve with dopri5 at this rtol = atol in float64 instead of the "
                        "bench model's reference settings (e.g. 1e-7 for the moons flows, whose SELU field makes the "
                        "default dopri8 at 1e-10 slow)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    k = t.add_argument_group("skip")
    k.add_argument("--rho-range", default="0.5,1.0", help="skip: search interval of rho_bottom (default 0.5,1.0)")
    k.add_argument("--rho-top", type=float, default=1.0, help="skip: rho of the highest-resolution skip (default 1)")
    k.add_argument("--active", default=None,
                   help="skip: 'lo,hi' EDM noise levels where the scaling applies (default: everywhere)")
    k.add_argument("--tune-rho-top", action="store_true",
                   help="skip: then search rho_top between the rho_bottom found and 1")
    k.add_argument("--active-choices", default=None,
                   help="skip: noise ranges to try with the rho found, 'lo,hi;lo,hi' (EDM levels; 'all' for "
                        "everywhere); the best on the tuning noise is kept")
    k.add_argument("--evaluations", type=int, default=8, help="skip: metric evaluations of the search (default 8)")
    k.add_argument("--eval-n", type=int, default=1000, help="skip: held-out samples for the final score (default "
                                                            "1000; --n, default 1000, are the tuning samples)")
    k.add_argument("--grid", default=None, help="skip: the solver's grid (default: the model's)")
    k.add_argument("--metric", default=None,
                   help="skip: 'module:attr', a callable metric(samples) -> float to minimise (default: the built-in "
                        "classifier's FD for MNIST-shaped models)")
    return t


def _starts(text: str | None, default: tuple) -> tuple:
    if text is None:
        return default
    from diffsolve.grids import GRIDS
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in GRIDS]
    if bad:
        raise InvalidArgument(f"--starts {text!r}: unknown grid {bad[0]!r}; allowed values: {', '.join(sorted(GRIDS))}")
    return names


def _nfes(text: str) -> list[int]:
    vals = [int(v) for v in text.replace(",", " ").split()]
    if not vals or min(vals) < 1:
        raise SystemExit(f"--nfe {text!r}: give positive integers")
    return vals


def run(args: argparse.Namespace) -> int:
    from diffsolve.bench.models import resolve_model
    from diffsolve.corrections.grid_search import gits_grid, learn_grid
    from diffsolve.corrections.train import train_amed

    torch.set_num_threads(args.threads)
    entry, model = resolve_model(args.model)
    teacher = args.teacher or ("fine" if entry.kind == "image" else "reference")
    dtype = entry.dtype or torch.float32
    nfe = _nfes(args.nfe)
    log = lambda s: print(s, flush=True)  # noqa: E731
    from diffsolve.field import as_field
    from diffsolve.evaluation.reference import ReferenceSettings
    plain = not as_field(model).has_schedule      # a plain velocity field: native time, no AFS
    settings = (ReferenceSettings(method="dopri5", rtol=args.reference_rtol, atol=args.reference_rtol)
                if args.reference_rtol is not None else entry.reference)
    teach = {"teacher_options": {"settings": settings}} if teacher == "reference" else {}
    start = time.perf_counter()
    if args.what == "skip":
        return _tune_skip(args, entry, model, nfe, log, start)
    if args.what == "amed":
        base = args.solver or "amed"
        init = None
        if args.from_grid:
            from diffsolve.corrections.grid_search import to_amed_table
            if plain:
                raise InvalidArgument("--from-grid starts from the data-mean AFS, which a plain velocity field (schedule="
                                      "None) has not; train without --from-grid")
            g = learn_grid(model, base=base, nfe=nfe, afs=True, n=args.n or 64, batch_size=args.batch_size or 32,
                           epochs=args.grid_epochs, lr=args.grid_lr or 0.05, seed=args.seed, teacher=teacher,
                           dtype=dtype, log=log, starts=_starts(args.starts, ()), **teach)
            init = to_amed_table(g, model)
        corr = train_amed(model, base=base, nfe=nfe, afs=not (args.no_afs or plain), loss=args.loss,
                          features=args.features, init=init,
                          module=args.module, n_train=args.n or 128, batch_size=args.batch_size or 32,
                          epochs=args.epochs or 10, lr=args.lr or 5e-3, seed=args.seed, teacher=teacher, dtype=dtype,
                          log=log, **teach)
        out = args.out or f"amed-{base}.safetensors"
    elif args.what == "weights":
        from diffsolve.corrections.coefficients import GRID_STARTS, learn_coefficients
        base = args.solver or "deis"
        corr = learn_coefficients(model, base=base, nfe=nfe, afs=not args.no_afs, n=args.n or 128,
                                  batch_size=args.batch_size or 16, epochs=args.epochs or 30,
                                  lr=args.lr or 0.02, weight_lr=args.weight_lr, seed=args.seed, teacher=teacher,
                                  dtype=dtype, log=log, grid_options={"lr": args.grid_lr or 0.2},
                                  grid_starts=_starts(args.starts, GRID_STARTS), **teach)
        out = args.out or f"weights-{base}.safetensors"
    elif args.what == "gits":
        base = args.solver or "ipndm"
        corr = gits_grid(model, base=base, nfe=nfe, n=args.n or 128, seed=args.seed, teacher=teacher, dtype=dtype,
                         log=log, **teach)
        out = args.out or f"gits-{base}.safetensors"
    else:
        base = args.solver or "ipndm"
        corr = learn_grid(model, base=base, nfe=nfe, n=args.n or 96, batch_size=args.batch_size or 32,
                          epochs=args.epochs or 20, lr=args.lr or 0.05, seed=args.seed, teacher=teacher, dtype=dtype,
                          log=log, starts=_starts(args.starts, ()), **teach)
        out = args.out or f"learned-{base}.safetensors"
    corr.meta["model"] = entry.name
    path = corr.save(out)
    print(f"wrote {path} and {path.name}.json ({path.stat().st_size} bytes) in {time.perf_counter() - start:.0f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffsolve")
    add_parser(p.add_subparsers(dest="command"))
    return run(p.parse_args(["tune", *(argv or [])]))


def _pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidArgument(f"{what} {text!r}: give two numbers 'lo,hi'") from None
    return lo, hi


def _metric(spec: str | None, model):
    from diffsolve.bench.models import import_object
    from diffsolve.field import model_spec_of
    if spec is None:
        ms = model_spec_of(model)
        if ms is None or tuple(ms.sample_shape or ()) != (1, 28, 28):
            raise InvalidArgument("--metric: this model's samples are not MNIST digits, so the built-in classifier's "
                                  "FD does not apply; name a callable metric(samples) -> float as 'module:attr'")
        from diffsolve.models.evaluate import fd_metric
        return fd_metric(ms.data_range or (-1.0, 1.0)), "FD (built-in classifier, held-out real digits)"
    obj = import_object(spec, "--metric")
    if not callable(obj):
        raise InvalidArgument(f"--metric {spec!r}: not callable")
    return obj, spec


def _tune_skip(args, entry, model, nfe: list[int], log, start: float) -> int:
    from pathlib import Path
    from diffsolve.corrections.skip import save_settings, tune_skip
    if len(nfe) != 1:
        raise InvalidArgument(f"--nfe {args.nfe!r}: skip tuning takes one NFE (rho is tuned for one budget)")
    solver = args.solver or "dpmpp_2m"
    n = args.n or 1000
    metric, metric_name = _metric(args.metric, model)
    lo, hi = _pair(args.rho_range, "--rho-range")
    log(f"skip tuning {entry.name}: {solver} at NFE {nfe[0]}, rho_bottom in [{lo}, {hi}], metric {metric_name}, "
        f"{n} tuning samples, {args.eval_n} held-out")
    settings = tune_skip(model, solver, nfe[0], metric, rho_range=(lo, hi), rho_top=args.rho_top,
                         active=_pair(args.active, "--active"), evaluations=args.evaluations,
                         tune_seeds=range(SKIP_TUNE_SEED + args.seed * n, SKIP_TUNE_SEED + (args.seed + 1) * n),
                         eval_seeds=range(SKIP_EVAL_SEED, SKIP_EVAL_SEED + args.eval_n),
                         solver_options={"grid": args.grid} if args.grid else None, progress=log,
                         tune_rho_top=args.tune_rho_top,
                         active_choices=[None if c.strip() == "all" else _pair(c, "--active-choices")
                                         for c in (args.active_choices or "").split(";") if c.strip()])
    import dataclasses
    seconds = time.perf_counter() - start
    settings = dataclasses.replace(settings, metric={**settings.metric, "name": metric_name,
                                                      "model_name": entry.name, "seconds": round(seconds, 1)})
    path = save_settings(settings, Path(args.out or f"skip-{solver}-nfe{nfe[0]}.json"))
    log(f"wrote {path}: rho_bottom={settings.rho_bottom:.4f}, held-out {settings.metric['held_out']:.4g} "
        f"(untuned {settings.metric['held_out_untuned']:.4g}) in {seconds:.0f}s")
    return 0
