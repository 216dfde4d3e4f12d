"""Reference solutions of the probability-flow ODE from given noise: float64, adaptive high order, cached on disk.

Frames (as the Runge-Kutta solvers use them): a Gaussian-path field is integrated in the EDM frame y = x / alpha
against lambda = -log s, s = sigma / alpha (dy/dlambda = D(x, t) - y, the EDM ODE dy/ds = (y - D) / s in log
time, smooth down to small s); a plain velocity field, a velocity-predicting model, or a path that starts at pure
noise (alpha = 0) is integrated in its own time, dx/dt = v(x, t). The noise-free end t = 0 is reached like every
grid with final='zero' reaches it: the exact solution at the schedule's smallest noise t_min, then the data
prediction there (its slope is 0/0 at zero noise); a velocity model integrates to t = 0 itself.

The solve is done twice, at the requested tolerance and at a 100x looser one; their gap is reported with the result
so that a user can see that the reference is far more accurate than the errors it measures.

The cache: one safetensors file per entry under `cache_dir` (default $DIFFSOLVE_CACHE or ~/.cache/diffsolve),
named by the sha256 of everything the result depends on, written to a temporary file and renamed into place, and
carrying the sha256 of its tensors in its metadata; an entry whose checksum or key does not match is recomputed.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import Field, VectorField, as_field
from diffsolve.files import atomic_write_bytes
from diffsolve.solvers.frames import FRAMES, integration_frame     # FRAMES: the frames a reference may be solved in

METHODS = ("dopri8", "dopri5", "bosh3", "rk4")
CACHE_VERSION = 2     # 2: keys cover every field setting (guidance, clipping) and module settings


@dataclass(frozen=True)
class ReferenceSettings:
    """How the reference is computed: torchdiffeq method, tolerances (float64), and the looser check solve.

    Attributes:
        method: One of `METHODS`: a torchdiffeq method, or 'rk4' on a fixed grid.
        rtol: Relative tolerance, positive and finite.
        atol: Absolute tolerance, positive and finite.
        check_factor: The check solve uses rtol * check_factor, atol * check_factor (must be > 1).
        rk4_steps: Only for method='rk4': fixed steps between consecutive requested times.

    Raises:
        InvalidArgument: An unknown method, a tolerance that is not positive and finite, or check_factor <= 1.
    """

    method: str = "dopri8"
    rtol: float = 1e-10
    atol: float = 1e-10
    check_factor: float = 100.0     # the check solve uses rtol * check_factor, atol * check_factor
    rk4_steps: int = 2000            # only for method='rk4': fixed steps between consecutive requested times

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise InvalidArgument(f"{name}={v!r}: must be a positive finite number")
        if not self.check_factor > 1:
            raise InvalidArgument(f"check_factor={self.check_factor!r}: must be > 1")

    def loosened(self) -> "ReferenceSettings":
        """The check solve's settings: tolerances times `check_factor`, a quarter of the rk4 steps (at least 1)."""
        return ReferenceSettings(self.method, self.rtol * self.check_factor, self.atol * self.check_factor,
                                 self.check_factor, max(self.rk4_steps // 4, 1))


@dataclass
class Reference:
    """Reference states at the requested times, for one batch of noise.

    `states[k]` is the state at `times[k]` ([K, B, ...], float64); `gap_rmse` / `gap_maxabs` are per time point the
    largest per-sample RMSE / max-abs difference to the looser check solve; `nfe` counts the main solve's evaluations.

    Attributes:
        times: The requested times, float64, largest (the start) first.
        states: The state at each time, [K, B, ...] float64.
        gap_rmse: Per time, the largest per-sample RMSE to the check solve.
        gap_maxabs: Per time, the largest absolute difference to the check solve.
        nfe: Model evaluations of the main solve.
        seconds: Wall time of both solves.
        frame: The frame integrated in ("time", "edm" or "logsnr").
        cached: Whether it was read from the cache.
    """

    times: torch.Tensor
    states: torch.Tensor
    gap_rmse: torch.Tensor
    gap_maxabs: torch.Tensor
    nfe: int
    seconds: float
    frame: str
    cached: bool = False

    def at(self, t: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """States at the given times (each must be one of the requested times, matched exactly): [len(t), B, ...].

        Args:
            t: The times.

        Returns:
            The states, [len(t), B, ...].

        Raises:
            InvalidArgument: A time is not one of the requested times.
        """
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        idx = []
        for v in t.tolist():
            hit = (self.times == v).nonzero()
            if hit.numel() == 0:
                raise InvalidArgument(f"the reference has no state at t={v!r}; request it in `times`")
            idx.append(int(hit[0]))
        return self.states[idx]

    @property
    def endpoint(self) -> torch.Tensor:
        """The state at the smallest time (the end of the solve), [B, ...]."""
        return self.states[int(torch.argmin(self.times))]


# ------------------------------------------------------------------------------------------------
# Identity and keys
# ------------------------------------------------------------------------------------------------
def _tensor_bytes(v: torch.Tensor) -> bytes:
    v = v.detach().cpu().contiguous()
    if v.dtype == torch.bfloat16:
        v = v.view(torch.int16)
    return v.numpy().tobytes()


def field_identity(field: Field) -> dict | None:
    """What identifies the field's output for the cache (`field.identity()`), or None when it cannot be identified:
    then nothing is cached, since a wrong hit would silently measure every solver against another model's answer.

    Args:
        field: The field to identify.

    Returns:
        {"field": identity string}, or None.
    """
    ident = field.identity()
    return None if ident is None else {"field": str(ident)}


def reference_key(field: VectorField, noise: torch.Tensor, times: torch.Tensor, settings: ReferenceSettings,
                  seeds: Sequence[int] | None = None) -> tuple[str | None, dict | None]:
    """The cache key (sha256 hex) and the description it hashes; (None, None) when the field cannot be identified.

    Args:
        field: The field solved.
        noise: The standard-normal noise (hashed in float64).
        times: The requested times.
        settings: The reference settings.
        seeds: The seeds the noise was drawn from, or None.
    """
    ident = field_identity(field)
    if ident is None:
        return None, None
    desc = {
        "version": CACHE_VERSION,
        "field": ident,
        "times": [float(v).hex() for v in times.tolist()],
        "noise_sha256": hashlib.sha256(_tensor_bytes(noise.to(torch.float64))).hexdigest(),
        "noise_shape": list(noise.shape),
        "seeds": list(map(int, seeds)) if seeds is not None else None,
        "settings": asdict(settings),
    }
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
    return key, desc


def default_cache_dir() -> Path:
    """The cache folder: $DIFFSOLVE_CACHE when set, else ~/.cache/diffsolve."""
    env = os.environ.get("DIFFSOLVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "diffsolve"


# ------------------------------------------------------------------------------------------------
# The cache: one safetensors file per entry, atomic writes, verified reads
# ------------------------------------------------------------------------------------------------
_TENSORS = ("times", "states", "gap_rmse", "gap_maxabs")


def _payload_sha(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        v = tensors[name]
        h.update(f"{name}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(_tensor_bytes(v))
    return h.hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    """The entry's file, `cache_dir`/reference/`key`.safetensors.

    Args:
        cache_dir: The cache folder.
        key: The entry's key (see `reference_key`).
    """
    return Path(cache_dir) / "reference" / f"{key}.safetensors"


def save_reference(path: str | Path, ref: Reference, key: str, desc: dict) -> None:
    """Write atomically: a temporary file in the same folder, flushed and fsynced, then os.replace.

    Args:
        path: The entry's file (its folder is created if missing).
        ref: The reference to store.
        key: Its cache key.
        desc: The description the key hashes, stored in the metadata.

    Raises:
        OSError: The file cannot be written.
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(ref, name).detach().cpu().contiguous() for name in _TENSORS}
    meta = {"key": key, "sha256": _payload_sha(tensors), "nfe": ref.nfe, "seconds": ref.seconds,
            "frame": ref.frame, "desc": desc}
    blob = save(tensors, metadata={"diffsolve": json.dumps(meta, sort_keys=True)})
    atomic_write_bytes(path, blob)


# Every field an entry's metadata must carry, and its type; an entry lacking one, or with one of another type, is
# a cache miss like any other malformed entry.
_META_FIELDS = {"key": str, "sha256": str, "nfe": int, "seconds": (int, float), "frame": str, "desc": dict}


def _check_entry(meta: Any, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Raise ValueError unless the entry is complete and consistent (what load_reference trusts)."""
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a JSON object")
    for name, kind in _META_FIELDS.items():
        if name not in meta:
            raise ValueError(f"metadata lacks {name!r}")
        if not isinstance(meta[name], kind) or isinstance(meta[name], bool):
            raise ValueError(f"metadata field {name!r} has type {type(meta[name]).__name__}")
    if meta["key"] != key:
        raise ValueError("key mismatch")
    if _payload_sha(tensors) != meta["sha256"]:
        raise ValueError("checksum mismatch")
    if meta["nfe"] < 0 or not math.isfinite(float(meta["seconds"])):
        raise ValueError("nfe or seconds out of range")
    if meta["frame"] not in FRAMES:
        raise ValueError(f"unknown frame {meta['frame']!r}")
    times, states = tensors["times"], tensors["states"]
    k = times.numel()
    if times.ndim != 1 or states.ndim < 2 or states.shape[0] != k or \
            tuple(tensors["gap_rmse"].shape) != (k,) or tuple(tensors["gap_maxabs"].shape) != (k,):
        raise ValueError("tensor shapes do not match")


def load_reference(path: str | Path, key: str) -> Reference | None:
    """The cached entry if it exists, parses, carries this key and every metadata field, and its tensors match
    their checksum; else None (with a warning), so that the caller recomputes it and overwrites it atomically.

    Args:
        path: The entry's file.
        key: The key it must carry.

    Returns:
        The reference (with `cached` set), or None when missing or unusable (a RuntimeWarning says why).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            if "diffsolve" not in header:
                raise ValueError("no diffsolve metadata")
            meta = json.loads(header["diffsolve"])
            names = set(f.keys())
            missing = [n for n in _TENSORS if n not in names]
            if missing:
                raise ValueError(f"tensors missing: {missing}")
            tensors = {name: f.get_tensor(name) for name in _TENSORS}
        _check_entry(meta, tensors, key)
        return Reference(times=tensors["times"], states=tensors["states"], gap_rmse=tensors["gap_rmse"],
                         gap_maxabs=tensors["gap_maxabs"], nfe=int(meta["nfe"]), seconds=float(meta["seconds"]),
                         frame=str(meta["frame"]), cached=True)
    except Exception as e:  # noqa: BLE001 - any unusable entry is recomputed, whatever broke it
        warnings.warn(f"reference cache entry {path} is unusable ({type(e).__name__}: {e}); recomputing",
                      RuntimeWarning, stacklevel=3)
        return None


# ------------------------------------------------------------------------------------------------
# The solve
# ------------------------------------------------------------------------------------------------
def float64_field(field: VectorField) -> VectorField:
    """The same field on a float64 copy of the model (the model itself is left untouched).

    Wrapper fields (ClassifierFreeGuidance) call the model through an inner field that holds it too: every field
    reachable through the wrapper's attributes gets the copy, or the inner calls would still run in float32.

    Args:
        field: The field; returned as is when its model has no floating tensor other than float64.

    Returns:
        The float64 field.
    """
    model = field.model
    tensors = list(model.parameters()) + list(model.buffers()) if isinstance(model, torch.nn.Module) else []
    if not any(t.is_floating_point() and t.dtype != torch.float64 for t in tensors):
        return field
    return _with_model(field, model, copy.deepcopy(model).to(torch.float64), {})


def _with_model(field: VectorField, old: Any, new: Any, done: dict) -> VectorField:
    if id(field) in done:
        return done[id(field)]
    f = copy.copy(field)
    done[id(field)] = f
    if "model" in vars(f) and f.model is old:
        f.model = new
    for attr, value in vars(field).items():
        if isinstance(value, Field):
            setattr(f, attr, _with_model(value, old, new, done))
    return f


def choose_frame(field: Field, t0: float) -> str:
    """The frame the reference integrates in (`integration_frame` with its default preference).

    Args:
        field: The field solved.
        t0: The start (noisiest) time.

    Returns:
        "time", "edm" or "logsnr".
    """
    return integration_frame(field, t0)


class _Counted:
    def __init__(self):
        self.n = 0


def _solve_once(field: VectorField, x0: torch.Tensor, times: torch.Tensor, settings: ReferenceSettings,
                frame: str, model_kwargs: dict) -> tuple[torch.Tensor, int]:
    """States at each of `times` (decreasing, times[0] = start) from x0 at times[0]; returns ([K, B, ...], nfe)."""
    from torchdiffeq import odeint

    sch = field.schedule
    count = _Counted()
    t_min_pos = None
    end_zero = float(times[-1]) == 0.0
    singular_end = end_zero and field.has_schedule and field.prediction != "velocity"
    targets = times[:-1] if singular_end else times
    if singular_end:
        # The last finite point: the schedule's t_min (grids reach 0 from there), or a tiny noise if it has none.
        t_min_pos = float(sch.t_min) if sch.t_min > 0 else float(targets[targets > 0].min()) * 1e-6
        if t_min_pos < float(targets[-1]) * (1 - 1e-9):     # not merely a rounding below the grid's last point
            targets = torch.cat([targets, torch.tensor([t_min_pos], dtype=torch.float64)])
        else:
            t_min_pos = float(targets[-1])

    if frame == "edm":
        # Integration variable lambda = -log s, increasing as noise decreases.
        var = -torch.log(sch.edm_sigma(targets))
        a0 = float(sch.alpha(float(targets[0])))
        y0 = x0 / a0

        def f(lam, y):
            t = float(sch.t_from_lambda(float(lam)))
            p = field.at(t)
            count.n += 1
            return field.denoise(y * p.alpha, p, **model_kwargs) - y
    else:
        var = -targets
        y0 = x0

        def f(r, x):
            p = field.at(-float(r))
            count.n += 1
            return -field.velocity(x, p, **model_kwargs)

    var = var.to(torch.float64)
    if not torch.all(var[1:] > var[:-1]):
        raise InvalidArgument("reference times must be strictly decreasing in noise")
    if settings.method == "rk4":
        ys = [y0]
        y = y0
        for k in range(var.numel() - 1):
            sub = torch.linspace(float(var[k]), float(var[k + 1]), settings.rk4_steps + 1, dtype=torch.float64)
            y = odeint(f, y, sub, method="rk4")[-1]
            ys.append(y)
        sol = torch.stack(ys)
    else:
        # Every requested time is a step end, never a dense-output interpolation (only 4th order for dopri8).
        opts = {"step_t": var[1:]}
        sol = odeint(f, y0, var, rtol=settings.rtol, atol=settings.atol, method=settings.method, options=opts)

    if frame == "edm":
        alphas = sch.alpha(targets).to(sol)
        sol = sol * alphas.reshape(-1, *([1] * (sol.ndim - 1)))
    if singular_end:
        x_last = sol[-1]
        p = field.at(t_min_pos)
        count.n += 1
        x_end = field.denoise(x_last, p, **model_kwargs)
        keep = sol[: times.numel() - 1]
        sol = torch.cat([keep, x_end[None]])
    return sol, count.n


def solve_reference(model: Any, noise: torch.Tensor, times: Sequence[float] | torch.Tensor, *,
                    settings: ReferenceSettings | None = None, cache: bool = True,
                    cache_dir: str | Path | None = None, seeds: Sequence[int] | None = None,
                    model_kwargs: dict | None = None) -> Reference:
    """Reference states at `times` (schedule times, any order; the largest is the start) from standard-normal noise.

    The start state is `noise * prior_std(t_start)`, exactly as `Sampler.solve` scales it. Works in float64 on a
    float64 copy of the model, on the noise's device.

    Args:
        model: A model or field.
        noise: Standard-normal noise, [B, ...].
        times: Schedule times, any order (duplicates dropped); the largest is the start.
        settings: How to solve; None takes `ReferenceSettings()`.
        cache: Read and write the on-disk cache (a field that cannot be identified is never cached).
        cache_dir: The cache folder; None takes `default_cache_dir()`.
        seeds: The seeds the noise was drawn from, part of the cache key.
        model_kwargs: Passed to the model at every evaluation.

    Returns:
        The states at the times (on the CPU), the gaps to the check solve, NFE, seconds and frame.

    Raises:
        InvalidArgument: `noise` is not a tensor, or the times are not finite non-negative numbers.
        FloatingPointError: The solve produced NaN or Inf.
    """
    settings = settings or ReferenceSettings()
    field = as_field(model)
    if not isinstance(noise, torch.Tensor):
        raise InvalidArgument(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    times = torch.as_tensor(times, dtype=torch.float64).reshape(-1).unique(sorted=True).flip(0)
    if times.numel() < 1 or not torch.isfinite(times).all() or float(times[-1]) < 0:
        raise InvalidArgument("times must be finite, non-negative schedule times")
    kwargs = dict(model_kwargs or {})
    key = desc = path = None
    if cache:
        key, desc = reference_key(field, noise, times, settings, seeds)
        cache = key is not None         # an unidentifiable field is solved every time, never cached
    if cache:
        path = cache_path(cache_dir or default_cache_dir(), key)
        hit = load_reference(path, key)
        if hit is not None:
            return hit

    f64 = float64_field(field)
    t0 = float(times[0])
    scale = f64.schedule.prior_std(t0) if f64.schedule is not None else 1.0
    x0 = noise.to(torch.float64) * scale
    frame = choose_frame(f64, t0)
    start = time.perf_counter()
    with torch.no_grad():
        if times.numel() == 1:
            main, nfe, check = x0[None], 0, x0[None]
        else:
            main, calls = _solve_once(f64, x0, times, settings, frame, kwargs)
            nfe = calls * getattr(f64, "evals_per_call", 1)     # a guided field calls the model twice per slope
            check, _ = _solve_once(f64, x0, times, settings.loosened(), frame, kwargs)
    seconds = time.perf_counter() - start
    B = main.shape[1]
    diff = (main - check).reshape(main.shape[0], B, -1)
    gap_rmse = diff.pow(2).mean(dim=2).sqrt().amax(dim=1).cpu()
    gap_maxabs = diff.abs().amax(dim=(1, 2)).cpu()
    ref = Reference(times=times, states=main.cpu(), gap_rmse=gap_rmse, gap_maxabs=gap_maxabs, nfe=nfe,
                    seconds=seconds, frame=frame)
    if not torch.isfinite(ref.states).all():
        raise FloatingPointError("the reference solve produced NaN/Inf; check the model in float64")
    if cache:
        try:
            save_reference(path, ref, key, desc)
        except OSError as e:
            # The answer is right whatever happens to the cache: a failed write costs a recompute next time only.
            warnings.warn(f"could not write the reference cache entry {path} ({e}); continuing without it",
                          RuntimeWarning, stacklevel=2)
    return ref
