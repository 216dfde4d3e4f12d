"""`diffsolve tune auto`: train every candidate correction within a time budget, judge each on held-out seeds
against the best un-learned solver and grid, and write one file holding the winner of each NFE.

    diffsolve tune auto --model mnist-unet --nfe 3,5,7 --budget 600 --out auto.safetensors
    Sampler(model, correction="auto.safetensors").run(nfe=5, seed=0)

The candidates are the tuners registered with `auto=` (corrections.tuning.register_tuner: learned weights on DEIS,
a learned grid, AMED-Plugin, and any registered later), each trained once per NFE with its light recipe; the
budget is split evenly over those runs and a deadline stops their epochs when a run's share is spent (the teacher
solve is not cut short). Validation runs on VALIDATION_SEEDS, which no tuner trains on (training noise is drawn from
seeds seed * 1e6 + i, i < samples). The un-learned field is SWEEP_SOLVERS x SWEEP_GRIDS; where no learned candidate
beats its best at an NFE, the file says so: that NFE's entry is the plain solver and grid that won.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.sampler import Sampler
from diffsolve.corrections.auto_file import AutoCorrection, SolverChoice
from diffsolve.corrections.cost import CountingField, counting_phase, teacher_phase, training_deadline
from diffsolve.corrections.io import load_correction
from diffsolve.corrections.teacher import noise_for, teacher_states
from diffsolve.corrections.tuning import (TUNERS, TuneContext, TuneSettings, check_count, check_rate, option,
                                          parse_float, parse_int, parse_ints, parse_names, reference_settings,
                                          register_tuner)

VALIDATION_SEEDS = 3_000_000_000_000        # held-out noise of `tune auto` (seeds from here), never trained on
SWEEP_SOLVERS = ("dpmpp_2m", "ipndm", "deis", "unipc_bh2")
SWEEP_GRIDS = (None, "karras", "logsnr_uniform")        # None: the model's default grid


def auto_candidates() -> tuple[str, ...]:
    """The tuners `tune auto` tries: those registered with `auto=`.

    Returns:
        Their names, in registration order.
    """
    return tuple(name for name, t in TUNERS.items() if t.auto is not None)


@dataclass(frozen=True)
class AutoTuneSettings(TuneSettings):
    """Settings of `diffsolve tune auto`.

    Attributes:
        solver: The base solver of the learned candidates (default deis).
        nfe: The budgets (default 3,5,7).
        samples: Training trajectories of every candidate; None: each recipe's own.
        budget: Seconds of training, split evenly over candidates x NFEs (default 600).
        candidates: The tuners tried; empty: every one registered with auto= (auto_candidates()).
        val_samples: Held-out samples each candidate and plain solver is judged on (default 32).

    Raises:
        InvalidArgument: A field is invalid (the message names its flag).
    """
    solver: str = option("deis", "base solver of the learned candidates (default deis)")
    nfe: tuple[int, ...] = option((3, 5, 7), "comma-separated NFE budgets (default 3,5,7)", parse=parse_ints)
    samples: int | None = option(None, "training trajectories of every candidate (default: each recipe's own)",
                                 aliases=("--n",), parse=parse_int)
    budget: float = option(600.0, "seconds of training, split over candidates and NFEs (default 600)",
                           parse=parse_float)
    candidates: tuple[str, ...] = option((), "comma-separated tuners to try (default: every auto candidate)",
                                         parse=parse_names)
    val_samples: int = option(32, "held-out samples to judge on (default 32)", parse=parse_int)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rate("--budget", self.budget)
        check_count("--val-samples", self.val_samples)
        unknown = [c for c in self.candidates if c not in auto_candidates()]
        if unknown:
            raise InvalidArgument(f"--candidates {','.join(self.candidates)!r}: {unknown[0]!r} is not a tune-auto "
                                  f"candidate; allowed values: {', '.join(auto_candidates())}")

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "auto.safetensors".
        """
        return "auto.safetensors"


@dataclass
class Judged:
    """One row of the table: a candidate (or the best plain solver) at one NFE, judged on held-out seeds.

    Attributes:
        nfe: The budget.
        name: What it is ("weights[deis]", "un-learned dpmpp_2m / karras", ...).
        error: Endpoint RMSE against the teacher on the held-out seeds; None: it could not run at this NFE.
        seconds: Training seconds (0 for a plain solver).
        evaluations: Model evaluations its training spent (teacher and training).
        correction: The correction (or SolverChoice) to keep if it wins.
        note: Why it has no error (refused, no such budget).
    """
    nfe: int
    name: str
    error: float | None
    seconds: float = 0.0
    evaluations: int = 0
    correction: Any = None
    note: str = ""


def _rmse(x: torch.Tensor, target: torch.Tensor) -> float:
    return float((x.double() - target.double()).pow(2).mean().sqrt())


class HeldOut:
    """The held-out noise and the teacher's endpoints from it: what every candidate is judged against.

    A conditioned field (per-sample conditions) is judged with its training conditions in turn, one per held-out
    noise seed: the noise is new, the conditions are those the model is tuned for.

    Args:
        field: The field tuned for.
        st: The settings (teacher mode, samples, dtype through `dtype`).
        ctx: What the caller knows about the model.
    """

    def __init__(self, field: Any, st: AutoTuneSettings, ctx: TuneContext):
        if field.condition_rows is not None:    # a conditioned field: its conditions in turn, on held-out noise
            field = field.select(torch.arange(st.val_samples) % field.condition_rows)
        self.field = field
        seeds = list(range(VALIDATION_SEEDS, VALIDATION_SEEDS + st.val_samples))
        t = Sampler(field, progress=False).times(2)
        self.noise = noise_for(field, seeds, dtype=ctx.dtype)
        ref = reference_settings(st, ctx)
        with teacher_phase(), torch.no_grad():
            start = self.noise.double() if st.teacher == "reference" else self.noise
            self.target = teacher_states(field, start, [float(t[0]), float(t[-1])], mode=st.teacher, seeds=seeds,
                                         **({"settings": ref} if st.teacher == "reference" else {}))[-1]

    def error(self, nfe: int, **sampler: Any) -> float:
        """Endpoint RMSE of `Sampler(field, **sampler).run(nfe=nfe)` from the held-out noise; a correction runs at the
        largest budget it holds within `nfe` (AMED without AFS holds even budgets only).

        Args:
            nfe: The budget.
            **sampler: The Sampler's arguments (solver, grid or correction).

        Returns:
            The RMSE.

        Raises:
            InvalidArgument: The sampler refuses (no such budget, a solver that needs a schedule, ...).
        """
        s = Sampler(self.field, progress=False, check_finite=False, **sampler)
        if s.tuned is not None:         # a correction runs at the largest budget it holds within nfe (AMED: even)
            within = [b for _, _, b in s.tuned.held(s) if b <= nfe]
            if not within:
                raise InvalidArgument(f"it holds no budget within NFE {nfe}")
            nfe = max(within)
        with torch.no_grad(), counting_phase("validation"):
            out = s.run(nfe=nfe, noise=self.noise)
        if out.nfe != nfe:
            raise InvalidArgument(f"it makes {out.nfe} model evaluations, not {nfe}")
        return _rmse(out.samples, self.target)


def best_unlearned(held: HeldOut, nfe: int) -> Judged:
    """The best plain solver and grid of the sweep (SWEEP_SOLVERS x SWEEP_GRIDS) at `nfe` on the held-out seeds.

    Args:
        held: The held-out noise and teacher endpoints.
        nfe: The budget.

    Returns:
        Its row (correction: a SolverChoice).

    Raises:
        InvalidArgument: No plain solver of the sweep runs at this NFE on this model.
    """
    best = None
    for solver in SWEEP_SOLVERS:
        for grid in SWEEP_GRIDS:
            try:
                err = held.error(nfe, solver=solver, grid=grid)
            except InvalidArgument:         # a grid or solver that does not apply here (no schedule, odd NFE)
                continue
            if best is None or err < best.error:
                best = Judged(nfe, f"un-learned {solver} / {grid or 'default grid'}", err,
                              correction=SolverChoice(solver, grid, nfe))
    if best is None:
        raise InvalidArgument(f"--nfe {nfe}: none of {', '.join(SWEEP_SOLVERS)} runs at this NFE on this model")
    return best


CANDIDATE = "candidate:"       # an auto recipe's value naming another candidate's file (trained before it)


def _train_one(field: Any, name: str, nfe: int, st: AutoTuneSettings, ctx: TuneContext, folder: Path,
               seconds: float) -> tuple[Any, float, int]:
    """Train candidate `name` for one NFE within `seconds`: (its correction, seconds, model evaluations)."""
    tuner = TUNERS[name]
    given = {"nfe": (nfe,), "out": str(folder / f"{name}-{nfe}.safetensors"), "seed": st.seed,
             "teacher": st.teacher, "threads": st.threads, "ref_rtol": st.ref_rtol, "solver": st.solver,
             **({"samples": st.samples} if st.samples is not None else {})}
    recipe = {}
    for key, value in tuner.auto.items():       # "candidate:NAME": that candidate's file at this NFE, if it ran
        if isinstance(value, str) and value.startswith(CANDIDATE):
            built = folder / f"{value[len(CANDIDATE):]}-{nfe}.safetensors"
            if built.is_file():
                recipe[key] = str(built)
        else:
            recipe[key] = value
    settings = tuner.settings(**{**recipe, **given})
    counted = CountingField(field)
    start = time.perf_counter()
    with training_deadline(seconds):
        path = tuner.run(counted, settings, dataclasses.replace(ctx, log=None))
    return load_correction(path), time.perf_counter() - start, counted.counts["teacher"] + counted.counts["training"]


def judge_candidates(field: Any, st: AutoTuneSettings, ctx: TuneContext, held: HeldOut,
                     log: Callable[[str], None]) -> list[Judged]:
    """Train and judge every candidate at every NFE (a candidate that refuses the model is noted, not fatal).

    Args:
        field: The (counted) field.
        st: The settings.
        ctx: What the caller knows about the model.
        held: The held-out noise and teacher endpoints.
        log: Where progress goes.

    Returns:
        One row per candidate and NFE.
    """
    names = st.candidates or auto_candidates()
    share = st.budget / (len(names) * len(st.nfe))
    rows = []
    with tempfile.TemporaryDirectory(prefix="diffsolve-auto-") as tmp:
        for name in names:
            for nfe in st.nfe:
                label = f"{name}[{st.solver}]"
                try:
                    corr, secs, evals = _train_one(field, name, nfe, st, ctx, Path(tmp), share)
                except InvalidArgument as e:
                    rows.append(Judged(nfe, label, None, note=f"refused: {str(e)[:80]}"))
                    continue
                try:
                    rows.append(Judged(nfe, label, held.error(nfe, correction=corr), secs, evals, corr))
                except InvalidArgument as e:
                    rows.append(Judged(nfe, label, None, secs, evals, note=f"cannot run: {str(e)[:80]}"))
                log(f"{label} at NFE {nfe}: held-out RMSE {_fmt(rows[-1].error)} after {secs:.0f}s")
    return rows


def _fmt(err: float | None) -> str:
    return f"{err:.3e}" if err is not None else "-"


def table(rows: list[Judged], plain: dict[int, Judged], winners: dict[int, Judged]) -> str:
    """The printed table: per NFE, the best plain solver, then every candidate, the winner marked.

    Args:
        rows: The candidates' rows.
        plain: NFE -> the best un-learned row.
        winners: NFE -> the winning row.

    Returns:
        The table as text.
    """
    lines = [f"{'NFE':>3}  {'candidate':<38} {'held-out RMSE':>13} {'ratio':>6} {'train s':>8} {'model evals':>12}"]
    for nfe in sorted(plain):
        for r in [plain[nfe]] + [r for r in rows if r.nfe == nfe]:
            ratio = f"{r.error / plain[nfe].error:.2f}" if r.error is not None and plain[nfe].error > 0 else "-"
            mark = " *" if r is winners[nfe] else ""
            lines.append(f"{nfe:>3}  {r.name:<38} {_fmt(r.error):>13} {ratio:>6} {r.seconds:>8.0f} "
                         f"{r.evaluations:>12,}{mark}{('  ' + r.note) if r.note else ''}")
    lines.append("(* kept in the file; ratio: to the best un-learned solver and grid at that NFE; held-out seeds "
                 f"from {VALIDATION_SEEDS})")
    return "\n".join(lines)


def tune_auto(model: Any, st: AutoTuneSettings, ctx: TuneContext) -> Path:
    """The `auto` tuner: train the candidates, judge them on held-out seeds, write the winner of each NFE.

    Args:
        model: The model or field (tune() hands a counted field).
        st: The settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: No plain solver runs at some NFE, or the settings are refused.
    """
    log = ctx.log or (lambda line: None)
    field = model
    held = HeldOut(field, st, ctx)
    plain = {nfe: best_unlearned(held, nfe) for nfe in st.nfe}
    log("best un-learned: " + ", ".join(f"NFE {n}: {r.name[len('un-learned '):]} {r.error:.3e}"
                                        for n, r in plain.items()))
    rows = judge_candidates(field, st, ctx, held, log)
    winners = {}
    for nfe in st.nfe:
        learned = [r for r in rows if r.nfe == nfe and r.error is not None]
        best = min(learned, key=lambda r: r.error, default=None)
        winners[nfe] = best if best is not None and best.error < plain[nfe].error else plain[nfe]
    log(table(rows, plain, winners))
    meta = {"model": ctx.model_name, "budget_seconds": st.budget, "teacher": st.teacher,
            "validation_seeds": [VALIDATION_SEEDS, st.val_samples],
            "table": [{"nfe": r.nfe, "candidate": r.name, "held_out_rmse": r.error, "seconds": round(r.seconds, 1),
                       "model_evaluations": r.evaluations, "kept": r is winners[r.nfe], "note": r.note}
                      for r in [*plain.values(), *rows]]}
    corr = AutoCorrection({n: w.correction for n, w in winners.items()}, field.correction_identity(), meta)
    path = corr.save(st.out_path())
    log(f"wrote {path}: " + ", ".join(f"NFE {n}: {w.name}" for n, w in sorted(winners.items())))
    return path


register_tuner("auto", AutoTuneSettings, tune_auto, "train every candidate correction within --budget seconds, "
               "keep the best of each NFE on held-out seeds (or the best plain solver), write one file")
