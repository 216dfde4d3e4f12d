"""Learned sampling-direction corrections on top of learned multistep weights, after PAS (Wang et al. 2024,
"Diffusion sampling correction via approximately 10 parameters").

Each step of the learned multistep rule (corrections.learned_multistep: a base rule plus learned weight offsets on its
learned grid) moves the EDM-frame state along a direction v = (y_{n+1} - y_n) / (s_{n+1} - s_n). PAS corrects v in
a low-dimensional basis of the trajectory so far. Per sample, Gram-Schmidt orthonormalizes

    v, y_T (the start), d_n, d_{n-1}, ... (the slopes, newest first)

into q_0, q_1, ..., q_{R-1} (a source nearly dependent on the ones before adds nothing), and the step takes

    v' = v + |v| sum_j c_{n,j} q_j,

with R learned coefficients per step (zero: the learned multistep rule bit for bit). The paper searches a PCA basis
step by step against teacher points; here the basis keeps the base direction first (so c = 0 is the base exactly) and
all steps' coefficients are fitted together against the teacher's endpoints, the multistep weights and grid fixed.
The basis is per sample and the coefficients shared, so a sample's result does not depend on its batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field as dc_field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_int
from diffsolve.field import EvalPoint, Field
from diffsolve.solvers.base import Plan, register
from diffsolve.corrections.base_rules import afs_denoised, corrected_step
from diffsolve.corrections.coefficients import learn_coefficients
from diffsolve.corrections.grid_search import _fit_grid, _teacher_endpoints
from diffsolve.corrections.io import (LOADERS, CoefficientCorrection, _check_identity,
                                      as_coefficient_correction, load_correction)
from diffsolve.corrections.learned_multistep import LearnedMultistep, LearnedStep
from diffsolve.corrections.teacher import field_of, frozen
from diffsolve.corrections.record import write_record
from diffsolve.corrections.tuners import WeightsTuneSettings, save_tuned, teacher_of
from diffsolve.corrections.tuning import TuneContext, check_count, check_rate, option, parse_float, parse_int, \
    register_tuner

DEFAULT_RANK = 4
_TINY = 1e-30          # guards the division of an all-zero direction


def corrected_direction(v: torch.Tensor, sources: Sequence[torch.Tensor], coeffs: Sequence[Any]) -> torch.Tensor:
    """v + |v| sum_j coeffs[j] q_j over the per-sample orthonormal basis of (v, *sources).

    Args:
        v: The base direction, [B, ...].
        sources: The further basis vectors before orthonormalization (the start, then the slopes newest first),
            each shaped like `v`; only the first len(coeffs) - 1 are used.
        coeffs: One coefficient per basis vector (floats, or scalar tensors with gradient); exact float zeros are
            skipped, so all zeros return `v` itself.

    Returns:
        The corrected direction, shaped like `v`.
    """
    if all(isinstance(c, float) and c == 0.0 for c in coeffs):
        return v
    b = v.shape[0]
    vf = v.reshape(b, -1)
    norm = vf.norm(dim=1, keepdim=True)
    basis = [vf / norm.clamp_min(_TINY)]
    for src in list(sources)[: len(coeffs) - 1]:
        w = src.reshape(b, -1).to(vf.dtype)
        scale = w.norm(dim=1, keepdim=True)
        for q in basis:
            w = w - (w * q).sum(1, keepdim=True) * q
        wn = w.norm(dim=1, keepdim=True)
        # a source (nearly) in the span of the ones before adds no direction; no host sync, a per-sample select
        basis.append(torch.where(wn > 1e-6 * scale, w / wn.clamp_min(_TINY), torch.zeros_like(w)))
    out = vf
    for c, q in zip(coeffs, basis):
        if isinstance(c, float) and c == 0.0:
            continue
        out = out + c * norm * q
    return out.reshape(v.shape)


@dataclass
class PASCorrection:
    """Learned direction coefficients (one row of `rank` per step) on top of learned multistep weights.

    Attributes:
        coefficients: The learned multistep weights and grids the directions were fitted on (kept fixed).
        directions: Step count -> one row of `rank` coefficients per step.
        rank: Basis vectors per step (the direction, the start, then slopes).
        meta: The training record.
    """

    coefficients: CoefficientCorrection
    directions: dict[int, tuple[tuple[float, ...], ...]]
    rank: int = DEFAULT_RANK
    meta: dict = dc_field(default_factory=dict)
    kind = "pas"

    def __post_init__(self) -> None:
        self.rank = check_int("rank", self.rank, minimum=1)
        if set(self.directions) != set(self.coefficients.grids):
            raise InvalidArgument(f"directions: need rows for every learned grid ({sorted(self.coefficients.grids)} "
                                  f"steps), got {sorted(self.directions)}")
        for steps, rows in self.directions.items():
            if len(rows) != steps or any(len(r) != self.rank for r in rows):
                raise InvalidArgument(f"directions[{steps}]: need one row of rank={self.rank} coefficients per step "
                                      f"of a learned grid ({sorted(self.coefficients.grids)} steps)")

    @property
    def identity(self) -> str | None:
        """The model identity of the underlying coefficients."""
        return self.coefficients.identity

    def check_field(self, field: Any) -> None:
        """Refuse (IdentityMismatch) a `field` of another model than the recorded identity; None passes."""
        _check_identity(self.identity, field, "set of learned directions")

    def solver_settings(self) -> tuple[str, dict]:
        """The registered solver and its options that run this correction: `Sampler(model, name, **options)`.

        Returns:
            ("pas", {"directions": self}).
        """
        return "pas", {"directions": self}

    def directions_for(self, steps: int) -> tuple[tuple[float, ...], ...]:
        """The rows of a run of `steps` steps (the coefficients' own grid check comes first, in the plan).

        Raises:
            InvalidArgument: No directions were learned for `steps` steps.
        """
        if steps not in self.directions:
            raise InvalidArgument(f"directions were learned for {sorted(self.directions)} steps (NFE "
                                  f"{[self.coefficients.nfe_for(k) for k in sorted(self.directions)]}), not {steps}")
        return self.directions[steps]

    def sidecar(self) -> dict:
        """The record written into the file and its JSON sidecar: the coefficients' record plus the directions."""
        side = self.coefficients.sidecar()
        return {**side, "kind": self.kind, "rank": self.rank,
                "directions": {str(k): [list(r) for r in v] for k, v in sorted(self.directions.items())},
                "meta": {**self.meta, "coefficients_meta": self.coefficients.meta}}

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors) and its sidecar atomically; returns the path."""
        return write_record(path, self.coefficients.tensors(), self.sidecar())


def _pas_from(rec: dict, tensors: dict[str, torch.Tensor], path: Path) -> PASCorrection:
    meta = dict(rec["meta"])
    inner = CoefficientCorrection(rec["grids"], rec["weights"], rec["base"], rec["afs"], tensors.get("afs_mean"),
                                  rec["identity"], meta.pop("coefficients_meta", {}))
    return PASCorrection(inner, rec["directions"], rec["rank"], meta)


LOADERS["pas"] = _pas_from


def as_pas_correction(obj: Any) -> PASCorrection:
    """A PASCorrection from itself or the path of a saved one.

    Raises:
        InvalidArgument: `obj` is neither, or the file holds another kind of correction.
    """
    if isinstance(obj, PASCorrection):
        return obj
    if isinstance(obj, (str, Path)):
        corr = load_correction(obj)
        if not isinstance(corr, PASCorrection):
            raise InvalidArgument(f"{obj} holds a {getattr(corr, 'kind', 'amed')} correction, not learned directions")
        return corr
    raise InvalidArgument(f"directions={type(obj).__name__}: give a PASCorrection or the path of a saved one")


@dataclass(frozen=True)
class PASStep(LearnedStep):
    """A LearnedStep plus this step's direction coefficients.

    Attributes:
        directions: One coefficient per basis vector (empty: none).
    """

    directions: tuple[Any, ...] = ()


class PASMultistep(LearnedMultistep):
    """Learned multistep weights (on their grid) with learned direction corrections (`directions=`).

    Args:
        directions: A PASCorrection or the path of a saved one; None: zero directions on the weights
            `learned_multistep` would use (its shipped ones, else zero offsets with a warning).
        max_order: The base rule's highest order; None uses the order the weights were learned with.

    Raises:
        InvalidArgument: `directions` is not a PASCorrection or a file of one, or `max_order` is below 1.
    """

    name = "pas"
    citation = "PAS (Wang et al. 2024) direction corrections on learned multistep weights (LD3 times, S4S weights)"

    def __init__(self, directions: Any = None, max_order: int | None = None):
        self._pas = None if directions is None else as_pas_correction(directions)
        base = self._pas.coefficients.base if self._pas is not None else "deis"
        super().__init__(None if self._pas is None else self._pas.coefficients, base=base, max_order=max_order)

    def options(self) -> dict:
        """The solver's options as given.

        Returns:
            The keys "directions" (the correction) and "max_order".
        """
        return {"directions": self._pas, "max_order": self._max_order}

    def correction(self, field: Field | None, warn: bool = False) -> CoefficientCorrection:
        """The learned multistep weights under the directions, checked against `field`'s model; without
        `directions=`, those `learned_multistep` would use (shipped, else zero offsets with a warning).

        Raises:
            IdentityMismatch: They were learned for another model.
        """
        if self._pas is None:
            return super().correction(field, warn)
        if field is not None:
            self._pas.check_field(field)
        return self._pas.coefficients

    def plan(self, field: Field, t: torch.Tensor) -> Plan:
        """The learned multistep plan with each step's direction coefficients (see LearnedMultistep.plan); without
        `directions=`, zero ones: `learned_multistep` exactly.

        Raises:
            InvalidArgument: As LearnedMultistep.plan, or no directions were learned for this step count.
        """
        base = super().plan(field, t)
        n = len(base.coeffs)
        rows = self._pas.directions_for(n) if self._pas is not None else ((0.0,) * DEFAULT_RANK,) * n
        steps = tuple(PASStep(**{k: getattr(c, k) for k in LearnedStep.__dataclass_fields__}, directions=tuple(r))
                      for c, r in zip(base.coeffs, rows))
        return replace(base, coeffs=steps)

    def init(self, plan: Plan) -> Any:
        """The starting state: no history, no start state yet, no slopes.

        Returns:
            ((), None, ()).
        """
        return (), None, ()

    def step(self, ev, x: torch.Tensor, t0: EvalPoint, t1: EvalPoint, state: Any, coeffs: PASStep):
        """One learned multistep step, its direction corrected in the trajectory's basis.

        Args:
            ev: The evaluator that calls the model (or a field, with gradient, when training).
            x: The state at t0.
            t0: The evaluation point at the step's start.
            t1: The evaluation point at the step's end.
            state: (history ((s, d, D), ...), the EDM-frame start, the slopes newest first).
            coeffs: This step's PASStep.

        Returns:
            (tuple): (x at t1, None, the new state).
        """
        co = coeffs
        hist, start, slopes = state
        y0 = x / co.alpha0 if co.alpha0 != 1.0 else x
        start = y0 if start is None else start
        D0 = afs_denoised(y0, co.s0, co.afs_mean) if co.afs else ev.denoise(x, t0)
        d0 = (y0 - D0) / co.s0
        hist = ((co.s0, d0, D0), *hist)
        slopes = (d0, *slopes)
        y1 = corrected_step(self.rule, y0, hist, co.s0, co.s1, co.max_order, co.weights)
        if not all(isinstance(c, float) and c == 0.0 for c in co.directions):    # zeros: the base bit for bit
            h = co.s1 - co.s0
            y1 = y0 + h * corrected_direction((y1 - y0) / h, (start, *slopes), co.directions)
        x1 = y1 * co.alpha1 if co.alpha1 != 1.0 else y1
        keep = max(len(co.directions) - 3, 0)       # the next step uses rank - 2 slopes, its own first
        return x1.to(x.dtype), None, (hist[: co.max_order - 1], start, slopes[:keep])


class _Coefficients(torch.nn.Module):
    """The trainable rows: `rows`, the direction coefficients (one row of `rank` per step, from zero), and with
    `offsets` given, the multistep weight offsets too (from those rows)."""

    def __init__(self, steps: int, rank: int, offsets: Sequence[Sequence[float]] | None = None):
        super().__init__()
        self.rows = torch.nn.Parameter(torch.zeros(steps, rank, dtype=torch.float64))
        self.offsets = None if offsets is None else torch.nn.Parameter(torch.tensor(offsets, dtype=torch.float64))

    def forward(self) -> None:
        return None


def directions_run(solver: PASMultistep, field: Field, plan: Plan, x: torch.Tensor, rows: Any,
                   offsets: Any = None) -> torch.Tensor:
    """The end state of `solver`'s run over `plan` from `x` with direction rows `rows` (tensors with gradient).

    The same step function as sampling, the field itself as the evaluator (so gradients reach `rows`).

    Args:
        solver: The solver.
        field: The field.
        plan: The solver's plan on its learned grid.
        x: The start state at plan.t[0].
        rows: One row of direction coefficients per step.
        offsets: One row of multistep weight offsets per step in place of the plan's; None keeps the plan's.

    Returns:
        The state at the grid's end.
    """
    state = solver.init(plan)
    for i, co in enumerate(plan.coeffs):
        co = replace(co, directions=tuple(rows[i]))
        if offsets is not None:
            co = replace(co, weights=tuple(offsets[i]))
        x, _, state = solver.step(field, x, plan.points[i], plan.points[i + 1], state, co)
    return x


def _fit_one(solver: PASMultistep, field: Field, plan: Plan, m: _Coefficients, x0: torch.Tensor,
             target: torch.Tensor, *, batch_size: int, epochs: int, lr: float, weight_lr: float | None,
             gen: torch.Generator, log: Callable[[str], None] | None, start: float) -> list[float]:
    """Fit `m` on one grid; [the loss before training, then each epoch's]. Nothing better than the start on the
    training set leaves `m` at its start (zero directions, the given offsets)."""
    n = target.shape[0]
    first = {k: v.detach().clone() for k, v in m.state_dict().items()}

    def run(idx: torch.Tensor, _: Any) -> torch.Tensor:
        return directions_run(solver, field, plan, x0[idx], m.rows, m.offsets)
    with torch.no_grad():
        before = float(sum((run(torch.arange(b, min(n, b + batch_size)), None) - target[b:b + batch_size])
                           .pow(2).sum() for b in range(0, n, batch_size)) / target.numel())
    groups = [{"params": [m.rows], "lr": lr}]
    if m.offsets is not None:
        groups.append({"params": [m.offsets], "lr": weight_lr})
    hist = _fit_grid(m, run, target, n=n, batch_size=batch_size, epochs=epochs, lr=lr, gen=gen, log=log,
                     label=f"directions, {plan.steps} steps", start=start, cosine=True, param_groups=groups)
    if not min(hist) < before:
        m.load_state_dict(first)
    return [before, *hist]


def learn_directions(model: Any, coefficients: Any, *, rank: int = DEFAULT_RANK, n: int = 128, batch_size: int = 16,
                     epochs: int = 20, lr: float = 3e-3, weight_lr: float | None = None, seed: int = 0,
                     teacher: str = "reference", teacher_options: dict | None = None,
                     dtype: torch.dtype = torch.float32, endpoints: tuple[torch.Tensor, torch.Tensor] | None = None,
                     log: Callable[[str], None] | None = print) -> PASCorrection:
    """Direction coefficients for every learned grid of `coefficients`, fitted by Adam against teacher endpoints.

    Args:
        model: The model or field the coefficients were learned for.
        coefficients: Learned multistep weights (a CoefficientCorrection or the path of one); their grids stay.
        rank: Basis vectors per step (the direction, the start, then slopes newest first).
        n: Teacher trajectories (the seeds learn_coefficients trains on), fitted in batches of `batch_size` for
            `epochs` passes at learning rate `lr` (cosine decay; the best epoch kept, the start when no epoch beat
            it on the training set).
        weight_lr: None keeps the weight offsets fixed; a rate fine-tunes them together with the directions.
        seed: Seeds the noise and the minibatch order.
        teacher: How the endpoints are computed, with `teacher_options`, in `dtype` (as learn_coefficients).
        endpoints: (unit noise, teacher endpoints) computed before (skips the teacher); None computes them.
        log: Prints progress (None: silent).

    Returns:
        The directions with the coefficients they run on.

    Raises:
        InvalidArgument: A bad argument (named), or the coefficients belong to another model.
    """
    corr = as_coefficient_correction(coefficients)
    field = field_of(model)
    corr.check_field(field)
    rank = check_int("rank", rank, minimum=1)
    for name, value in (("n", n), ("batch_size", batch_size), ("epochs", epochs)):
        check_int(name, value, minimum=1)
    for name, value in (("lr", lr), ("weight_lr", weight_lr)):
        if value is not None or name == "lr":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"{name}={value!r}: must be a positive number")
    if not corr.grids:
        raise InvalidArgument("coefficients= holds no learned grids (train them with learn_coefficients first)")
    start = time.perf_counter()
    if endpoints is None:
        _, noise, target = _teacher_endpoints(field, n, seed, teacher, teacher_options, dtype, log, start)
    else:
        noise, target = endpoints
        if noise.shape[0] != n or target.shape != noise.shape:
            raise InvalidArgument(f"endpoints: need two tensors of {n} samples of one shape")
    zeros = {k: tuple((0.0,) * rank for _ in range(k)) for k in corr.grids}
    solver = PASMultistep(PASCorrection(corr, zeros, rank))
    x0 = noise * field.schedule.prior_std(field.t_max)
    gen = torch.Generator().manual_seed(seed)
    rows, offsets, losses, evals = {}, dict(corr.weights), {}, 0
    with frozen(field):
        for steps in sorted(corr.grids):
            plan = solver.plan(field, torch.tensor(corr.grids[steps], dtype=torch.float64))
            m = _Coefficients(steps, rank, corr.weights[steps] if weight_lr is not None else None)
            losses[str(steps)] = _fit_one(solver, field, plan, m, x0, target, batch_size=batch_size, epochs=epochs,
                                          lr=lr, weight_lr=weight_lr, gen=gen, log=log, start=start)
            rows[steps] = tuple(tuple(float(v) for v in r) for r in m.rows.detach())
            if m.offsets is not None:
                offsets[steps] = tuple(tuple(float(v) for v in r) for r in m.offsets.detach())
            evals += (epochs + 1) * n * plan.nfe
    return PASCorrection(replace(corr, weights=offsets), rows, rank,
                         {"loss_history": losses, "n": n, "epochs": epochs, "lr": lr, "weight_lr": weight_lr,
                          "training_model_calls": evals, "batch_size": batch_size, "seed": seed, "teacher": teacher,
                          "seconds": round(time.perf_counter() - start, 1)})


def _pas_solver(directions: Any = None, max_order: int | None = None) -> PASMultistep:
    return PASMultistep(directions, max_order=max_order)


register("pas", _pas_solver, "learned multistep weights with PAS-style learned direction corrections (directions=)")


@dataclass(frozen=True)
class DirectionsTuneSettings(WeightsTuneSettings):
    """Settings of `diffsolve tune directions`: the weights tuner's options (used when it learns the weights first)
    plus the directions' own.

    Attributes:
        samples: Training trajectories of the weights and the directions (default 128).
        batch_size: Minibatch size (default 16).
        from_weights: A learned-weights file to build on (its grids for --nfe); None learns the weights first.
        rank: Basis vectors per step (default 4).
        directions_epochs: Epochs of the directions (default 20).
        directions_lr: Learning rate of the directions (default 3e-3).

    Raises:
        InvalidArgument: A field is invalid (the message names its flag).
    """
    samples: int = option(128, "training trajectories (default 128)", aliases=("--n",), parse=parse_int)
    batch_size: int = option(16, "minibatch size (default 16)", aliases=("--batch",), parse=parse_int)
    from_weights: str | None = option(None, "learned weights file to build on (default: learn them first)")
    rank: int = option(DEFAULT_RANK, f"basis vectors per step (default {DEFAULT_RANK})", parse=parse_int)
    directions_epochs: int = option(20, "epochs of the directions (default 20)", parse=parse_int)
    directions_lr: float = option(3e-3, "learning rate of the directions (default 3e-3)", parse=parse_float)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("--rank", self.rank)
        check_count("--directions-epochs", self.directions_epochs)
        check_rate("--directions-lr", self.directions_lr)

    def default_out(self) -> str:
        """The output file when `out` is None.

        Returns:
            "pas-<solver>.safetensors".
        """
        return f"pas-{self.solver}.safetensors"


def _weights_for(model: Any, st: DirectionsTuneSettings, ctx: TuneContext, teach: dict) -> CoefficientCorrection:
    """The learned weights at st.nfe: the grids of --from-weights (refused when one is missing), else learned."""
    teacher = teach.pop("teacher")
    if st.from_weights is None:
        return learn_coefficients(model, base=st.solver, nfe=st.nfe, afs=not st.no_afs, n=st.samples,
                                  batch_size=st.batch_size, epochs=st.epochs, lr=st.lr, weight_lr=st.weight_lr,
                                  seed=st.seed, teacher=teacher, dtype=ctx.dtype, log=ctx.log,
                                  grid_options={"lr": st.grid_lr}, grid_starts=st.starts, **teach)
    corr = as_coefficient_correction(st.from_weights)
    corr.check_field(field_of(model))
    by_nfe = {corr.nfe_for(k): k for k in corr.grids}
    missing = [k for k in st.nfe if k not in by_nfe]
    if missing:
        raise InvalidArgument(f"--from-weights {st.from_weights}: no grid for NFE {missing}; it holds NFE "
                              f"{sorted(by_nfe)}")
    keep = [by_nfe[k] for k in st.nfe]
    return replace(corr, grids={k: corr.grids[k] for k in keep}, weights={k: corr.weights[k] for k in keep})


def tune_directions(model: Any, st: DirectionsTuneSettings, ctx: TuneContext) -> Path:
    """The `directions` tuner: learned weights (given or learned first), then their direction corrections, saved.

    Args:
        model: The model or field.
        st: The tuner's settings.
        ctx: What the caller knows about the model.

    Returns:
        The written file's path.

    Raises:
        InvalidArgument: An option the training refuses, or --from-weights lacks an NFE of --nfe.
    """
    start = time.perf_counter()
    teacher, teach = teacher_of(st, ctx)
    weights = _weights_for(model, st, ctx, {"teacher": teacher, **teach})
    corr = learn_directions(model, weights, rank=st.rank, n=st.samples, batch_size=st.batch_size,
                            epochs=st.directions_epochs, lr=st.directions_lr, seed=st.seed, teacher=teacher,
                            dtype=ctx.dtype, log=ctx.log, **teach)
    return save_tuned(corr, st, ctx, start)


register_tuner("directions", DirectionsTuneSettings, tune_directions,
               "PAS-style direction corrections on learned multistep weights (solver 'pas')",
               auto={"solver": "deis", "samples": 48, "epochs": 24, "batch_size": 16, "starts": ("karras",),
                     "directions_epochs": 12})
