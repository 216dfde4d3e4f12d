"""Reflow couplings: (noise, endpoint) pairs from a flow, for training a rectified flow on them (Liu et al. 2023).

`generate_couplings(model, out_dir, n, solver=, steps=, seed=)` solves the model's ODE from noise and writes the
pairs in fixed shards of `shard_size` samples, `out_dir/shard-{k:06d}.safetensors` with tensors `noise`,
`endpoint` and `index` (the global sample indices), each written atomically (temporary name, then rename).

- Sample i's noise is drawn from its own stream, seeded by (seed, i) (`coupling_seeds`): a shard's content does
  not depend on the batching, the rank that computed it or the number of ranks. Under `torchrun`, rank r takes
  the shards k with k % world == r; all files are byte for byte those of a one-process run (same shard size,
  batch size and thread count).
- `settings.json` is written before the first shard: a rerun with other settings (another model, solver, seed,
  ...) is refused with an error naming the argument. A rerun with the same settings resumes: shards already on
  disk are verified (format, indices, noise, settings digest) and kept, the missing ones are computed; a shard
  that fails the check is recomputed. Nothing is computed twice and no index is missing or repeated.
- `manifest.json` is written (atomically, by rank 0 after a barrier) once every shard exists: the settings, the
  model identity, and each shard's name, sample range, count and sha256. `load_couplings(out_dir)` checks it.

The command line: `diffsolve reflow --model moons-1rf --samples 20000 --out DIR [--solver rk4 --steps 64]`, also
under `torchrun --standalone --nproc_per_node 2 -m diffsolve reflow ...` (there spell the count `--samples`:
torchrun's own parser reads the alias `--n` as an ambiguous abbreviation of its options and stops).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load

from diffsolve.distributed import Dist
from diffsolve.errors import DiffsolveError, InvalidArgument, check_bool, check_int
from diffsolve.field import model_identity
from diffsolve.files import atomic_write_bytes
from diffsolve.noise import NoiseSource, draw_noise
from diffsolve.sampler import Sampler, as_dtype

__all__ = ["generate_couplings", "load_couplings", "verify_couplings", "coupling_seeds", "CouplingsError",
           "CouplingRun", "FORMAT"]

FORMAT = "diffsolve-couplings/1"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
MAX_SEED = 2 ** 31 - 1          # per-sample seeds are seed * 2**32 + index: both fit below torch's 2**64 range
MAX_N = 2 ** 32
# settings a rerun must repeat exactly (the CLI flag for each, for error messages)
SETTING_NAMES = ("n", "shard_size", "batch_size", "solver", "solver_options", "steps", "seed", "dtype",
                 "sample_shape", "model")


class CouplingsError(DiffsolveError, ValueError):
    """A coupling folder is incomplete, corrupted, or holds a run with other settings."""


def shard_name(k: int) -> str:
    """The file name of shard `k`: shard-{k:06d}.safetensors."""
    return f"shard-{k:06d}.safetensors"


def coupling_seeds(seed: int, start: int, stop: int) -> list[int]:
    """The per-sample noise seeds of samples start..stop-1: seed * 2**32 + index (distinct for distinct pairs).

    Args:
        seed: the run's seed.
        start: the first sample index.
        stop: one past the last sample index.

    Returns:
        The seeds, one per sample.
    """
    return [int(seed) * 2 ** 32 + i for i in range(start, stop)]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _identity(model: Any, given: str | None) -> str:
    if given is not None:
        if not isinstance(given, str) or not given:
            raise InvalidArgument(f"model_id={given!r}: must be a non-empty string naming the model's weights")
        return given
    ident = model_identity(model)
    if ident is None:
        raise InvalidArgument("model: cannot identify this model (not an nn.Module and no identity() method); pass "
                              "model_id= naming its weights, so that a resumed run can check it is the same model")
    return ident


@dataclass
class CouplingRun:
    """What `generate_couplings` did: the folder, its manifest, the shards this process computed and kept.

    Attributes:
        out_dir: the coupling folder.
        manifest: the folder's manifest (settings, model identity, each shard's range and sha256).
        computed: shard indices computed by this run (every rank's).
        kept: shard indices found complete and verified (every rank's).
        seconds: the wall time of the call.
    """

    out_dir: Path
    manifest: dict
    computed: list[int] = dc_field(default_factory=list)     # shard indices computed by this process
    kept: list[int] = dc_field(default_factory=list)         # shard indices found complete and verified
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------------
# One shard
# ------------------------------------------------------------------------------------------------
def _shard_noise(seed: int, start: int, stop: int, sample_shape: Sequence[int]) -> torch.Tensor:
    return draw_noise((stop - start, *sample_shape), seed=coupling_seeds(seed, start, stop), dtype=torch.float32)


def _compute_shard(sampler: Any, plan: Any, settings: dict, start: int, stop: int, batch_size: int,
                   dtype: torch.dtype, device: Any) -> bytes:
    noise = _shard_noise(settings["seed"], start, stop, settings["sample_shape"])
    ends = []
    for a in range(0, stop - start, batch_size):
        b = min(a + batch_size, stop - start)
        z = noise[a:b].to(device=device, dtype=dtype)
        step_noise = None
        if not sampler.solver.deterministic:
            step_noise = NoiseSource.for_run(z.shape, seed=coupling_seeds(settings["seed"], start + a, start + b),
                                             device=z.device, dtype=z.dtype)
        out = sampler.solve(plan, z, step_noise=step_noise, progress=False)
        ends.append(out.samples.detach().to("cpu", torch.float32))
    endpoint = torch.cat(ends).contiguous()
    index = torch.arange(start, stop, dtype=torch.int64)
    meta = {"format": FORMAT, "settings": _digest(settings), "start": str(start), "stop": str(stop)}
    return safetensors_bytes({"noise": noise.contiguous(), "endpoint": endpoint, "index": index}, meta)


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file with a canonical header (sorted keys, no spaces, padded to 8 bytes): the same tensors
    and metadata give the same bytes in every process (safetensors' own writer orders the metadata by a hash
    map, which differs from process to process).

    Args:
        tensors: name -> float32, float64 or int64 tensor.
        metadata: the header's string metadata.

    Returns:
        The file's bytes.

    Raises:
        KeyError: a tensor of another dtype.
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def _check_shard(path: Path, settings: dict, start: int, stop: int, noise_check: bool = True) -> str | None:
    """Why the shard file is not the complete shard start..stop of this run, or None when it is."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            if keys != {"noise", "endpoint", "index"}:
                return f"holds tensors {sorted(keys)}, not noise/endpoint/index"
            if meta.get("format") != FORMAT or meta.get("settings") != _digest(settings):
                return "was written by a run with other settings"
            noise, endpoint, index = f.get_tensor("noise"), f.get_tensor("endpoint"), f.get_tensor("index")
    except Exception as e:             # truncated or not a safetensors file at all
        return f"cannot be read ({type(e).__name__}: {e})"
    m = stop - start
    shape = (m, *settings["sample_shape"])
    if tuple(noise.shape) != shape or tuple(endpoint.shape) != shape or tuple(index.shape) != (m,):
        return f"has shapes {tuple(noise.shape)}/{tuple(endpoint.shape)}/{tuple(index.shape)}, expected {shape}"
    if not torch.equal(index, torch.arange(start, stop, dtype=torch.int64)):
        return f"does not hold the indices {start}..{stop - 1}"
    if not bool(torch.isfinite(endpoint).all()):
        return "holds non-finite endpoints"
    if noise_check and not torch.equal(noise, _shard_noise(settings["seed"], start, stop, settings["sample_shape"])):
        return "holds noise that is not this run's"
    return None


# ------------------------------------------------------------------------------------------------
# Settings and the manifest
# ------------------------------------------------------------------------------------------------
def _compare_settings(found: dict, want: dict, where: Path, recover: str = "") -> None:
    if found.get("format") != FORMAT:
        raise CouplingsError(f"{where} is not a diffsolve coupling folder of format {FORMAT} "
                             f"(format={found.get('format')!r}); use a new --out folder{recover}")
    diff = [k for k in SETTING_NAMES if found.get(k) != want.get(k)]
    if diff:
        detail = "; ".join(f"{k}={want.get(k)!r} but the folder holds {k}={found.get(k)!r}" for k in diff)
        raise CouplingsError(f"refusing to resume into {where}: it was made with other settings ({detail}); "
                             f"rerun with the folder's settings or use a new output folder{recover}")


def _read_json(path: Path, recover: str = "") -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CouplingsError(f"{path} cannot be read as JSON ({e}){recover}") from None
    if not isinstance(data, dict):
        raise CouplingsError(f"{path} holds a {type(data).__name__}, not an object{recover}")
    return data


# The manifest only records what the shards already prove (their names and sha256); the settings file fixes the run.
_MANIFEST_RECOVERY = ("; delete it to recover: the next run checks every shard against settings.json, keeps the "
                      "complete ones and writes a new manifest")


def _bounds(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def _manifest(settings: dict, out: Path) -> dict:
    shards = []
    for k, (a, b) in enumerate(_bounds(settings["n"], settings["shard_size"])):
        path = out / shard_name(k)
        shards.append({"name": shard_name(k), "start": a, "stop": b, "count": b - a,
                       "sha256": _sha256_file(path)})
    return {**settings, "shards": shards}


def _remove_stale_temps(out: Path, shards: Sequence[int]) -> None:
    """Temporary files a killed writer left for these shards (this process owns them now)."""
    for k in shards:
        for tmp in out.glob(shard_name(k) + ".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------
# The generator
# ------------------------------------------------------------------------------------------------
def generate_couplings(model: Any, out_dir: str | Path, n: int, *, solver: str = "heun", steps: int = 64,
                       batch_size: int = 1024, shard_size: int = 4096, seed: int = 0, dtype: Any = "float32",
                       solver_options: dict | None = None, model_id: str | None = None, device: Any = None,
                       verify_noise: bool = True, log: bool = False, dist: Any = None) -> CouplingRun:
    """Solve `n` noise draws to their endpoints with a diffsolve solver and write them as resumable shards.

    Args:
        model: anything `Sampler` takes (its `diffsolve_spec` must give the sample shape).
        out_dir: the coupling folder (created; an earlier run's folder is resumed).
        n: the number of samples, 1 to 2**32.
        solver: the solver's registry name (an accurate one: the coupling is the ODE's map; default "heun").
        steps: solver steps per sample (default 64).
        batch_size: samples per solver call (recorded: it fixes the floating-point work per sample).
        shard_size: samples per file.
        seed: the noise seeds of sample i are seed * 2**32 + i (0 to 2**31 - 1).
        dtype: the state's dtype (stored as float32).
        solver_options: the solver's keywords.
        model_id: the model's identity for the manifest (default: `diffsolve.field.model_identity`, a digest of an
            nn.Module's weights).
        device: where to solve; None: the Dist's device.
        verify_noise: when resuming, check each kept shard's noise against its seeds (default True).
        log: print a line per shard written.
        dist: a `diffsolve.distributed.Dist` (default: from torchrun's environment).

    Returns:
        The CouplingRun.

    Raises:
        InvalidArgument: an argument out of its range or of the wrong type, a model without a sample shape or
            identity, or a path that is not a folder.
        CouplingsError: the folder holds a run with other settings, or a shard is missing at the end.
    """
    t_start = time.perf_counter()
    n = check_int("n", n, 1, MAX_N)
    steps = check_int("steps", steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    shard_size = check_int("shard_size", shard_size, 1)
    seed = check_int("seed", seed, 0, MAX_SEED)
    verify_noise = check_bool("verify_noise", verify_noise)
    log = check_bool("log", log)
    run_dtype = as_dtype(dtype)
    if run_dtype is None:
        raise InvalidArgument("dtype=None: name the state's dtype ('float32' or 'float64')")
    if not isinstance(solver, str):
        raise InvalidArgument(f"solver={solver!r}: must be a solver's registry name (it is recorded in the manifest)")
    solver_options = dict(solver_options or {})
    out = _out_folder(out_dir)

    sampler = Sampler(model, solver, progress=False, **solver_options)
    shape = sampler.field.sample_shape
    if shape is None:
        raise InvalidArgument("model: it does not declare its sample shape (diffsolve_spec.sample_shape); wrap it "
                              "with diffsolve.field.as_field(model, sample_shape=...)")
    plan = sampler.plan(steps)
    settings = {"format": FORMAT, "n": n, "shard_size": shard_size, "batch_size": batch_size,
                "solver": sampler.solver.name, "solver_options": json.loads(json.dumps(solver_options, default=str)),
                "steps": steps, "nfe_per_sample": int(plan.nfe), "seed": seed,
                "dtype": str(run_dtype).replace("torch.", ""), "sample_shape": [int(v) for v in shape],
                "model": _identity(model, model_id), "seeds": "seed * 2**32 + index"}

    dist = Dist.from_env() if dist is None else dist
    try:
        known = _open_folder(out, settings, dist)
        writer = _ShardWriter(sampler, plan, settings, out, run_dtype, dist.device(device), verify_noise, log)
        computed, kept = writer.run(dist.my_chunks(len(_bounds(n, shard_size))), known, dist.rank)
        manifest = _close_folder(out, settings, dist)
        counts = dist.all_gather((computed, kept))
    finally:
        dist.close()
    all_computed = sorted(k for c, _ in counts for k in c)
    all_kept = sorted(k for _, kk in counts for k in kk)
    return CouplingRun(out, manifest, computed=all_computed, kept=all_kept, seconds=time.perf_counter() - t_start)


def _out_folder(out_dir: Any) -> Path:
    if out_dir is None or not isinstance(out_dir, (str, os.PathLike)) or str(out_dir) == "":
        raise InvalidArgument(f"out_dir={out_dir!r}: must be a folder path")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidArgument(f"out_dir={str(out)!r} exists and is not a folder")
    # checked before any work, created only once the run's other arguments have passed too
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidArgument(f"out_dir={str(out)!r}: {str(parent)!r} is not a writable folder")
    return out


def _open_folder(out: Path, settings: dict, dist: Any) -> dict[str, str]:
    """Check a folder's earlier settings and write this run's; returns a finished run's shard hashes (a shard
    changed since is computed again)."""
    # Every rank reads what is there before anyone writes: all refuse, or none does.
    if (out / SETTINGS).exists():
        _compare_settings(_read_json(out / SETTINGS), settings, out)
    known: dict[str, str] = {}
    if (out / MANIFEST).exists():
        # settings.json matched this run (or is absent): a manifest that disagrees is the file to delete
        found = _read_json(out / MANIFEST, _MANIFEST_RECOVERY)
        _compare_settings(found, settings, out / MANIFEST, _MANIFEST_RECOVERY)
        known = {s.get("name"): s.get("sha256") for s in found.get("shards", []) if isinstance(s, dict)}
    dist.barrier()
    if dist.is_main and not (out / SETTINGS).exists():
        atomic_write_bytes(out / SETTINGS, _canonical(settings))
    dist.barrier()
    return known


@dataclass
class _ShardWriter:
    """Computes this rank's shards, keeping those already complete on disk."""

    sampler: Any
    plan: Any
    settings: dict
    out: Path
    dtype: torch.dtype
    device: Any
    verify_noise: bool
    log: bool

    def run(self, mine: list[int], known: dict[str, str], rank: int) -> tuple[list[int], list[int]]:
        out, settings = self.out, self.settings
        _remove_stale_temps(out, mine)
        if rank == 0:
            for tmp in out.glob(MANIFEST + ".*.tmp"):
                tmp.unlink(missing_ok=True)
        bounds = _bounds(settings["n"], settings["shard_size"])
        computed, kept = [], []
        for k in mine:
            a, b = bounds[k]
            path = out / shard_name(k)
            if path.exists():
                why = _check_shard(path, settings, a, b, noise_check=self.verify_noise)
                if why is None and path.name in known and _sha256_file(path) != known[path.name]:
                    why = "does not match the manifest's sha256"
                if why is None:
                    kept.append(k)
                    continue
                print(f"reflow: {path.name} {why}; computing it again", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            atomic_write_bytes(path, _compute_shard(self.sampler, self.plan, settings, a, b, settings["batch_size"],
                                                    self.dtype, self.device))
            computed.append(k)
            if self.log:
                print(f"reflow: rank {rank} wrote {path.name} (samples {a}..{b - 1}) in "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        return computed, kept


def _close_folder(out: Path, settings: dict, dist: Any) -> dict:
    """After every rank finished: rank 0 checks that every shard exists and writes the manifest; all read it."""
    dist.barrier()
    if dist.is_main:
        n_shards = len(_bounds(settings["n"], settings["shard_size"]))
        missing = [shard_name(k) for k in range(n_shards) if not (out / shard_name(k)).is_file()]
        if missing:
            raise CouplingsError(f"{out}: shards {missing[:5]} are missing after every rank finished")
        atomic_write_bytes(out / MANIFEST, _canonical(_manifest(settings, out)))
    dist.barrier()
    return _read_json(out / MANIFEST)


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def verify_couplings(out_dir: str | Path) -> dict:
    """The manifest, after checking every shard's presence, sha256, count and indices (else CouplingsError).

    Args:
        out_dir: the coupling folder.

    Returns:
        The manifest.

    Raises:
        CouplingsError: no manifest (the generator has not finished), another format, a shard list that does not
            cover the samples in order, or a shard missing or corrupted.
    """
    out = Path(out_dir)
    path = out / MANIFEST
    if not path.is_file():
        raise CouplingsError(f"{out}: no {MANIFEST} (the generator has not finished; rerun it to resume)")
    manifest = _read_json(path, _MANIFEST_RECOVERY)
    if manifest.get("format") != FORMAT:
        raise CouplingsError(f"{path}: format={manifest.get('format')!r}, expected {FORMAT!r}{_MANIFEST_RECOVERY}")
    try:
        want = _bounds(check_int("n", manifest["n"], 1), check_int("shard_size", manifest["shard_size"], 1))
        shards = manifest.get("shards", [])
        ok = [(s["start"], s["stop"]) for s in shards] == want and all(
            s["name"] == shard_name(k) and isinstance(s["sha256"], str) for k, s in enumerate(shards))
    except (KeyError, TypeError, InvalidArgument) as e:
        raise CouplingsError(f"{path}: malformed ({type(e).__name__}: {e}){_MANIFEST_RECOVERY}") from None
    if not ok:
        raise CouplingsError(f"{path}: its shard list does not cover samples 0..{manifest['n'] - 1} in order"
                             f"{_MANIFEST_RECOVERY}")
    for s in shards:
        f = out / s["name"]
        if not f.is_file():
            raise CouplingsError(f"{out}: {s['name']} is missing")
        got = _sha256_file(f)
        if got != s["sha256"]:
            raise CouplingsError(f"{out}: {s['name']} is corrupted (sha256 {got[:12]}..., the manifest says "
                                 f"{s['sha256'][:12]}...)")
    return manifest


def load_couplings(out_dir: str | Path, *, with_index: bool = False):
    """(noise, endpoint), each [n, *sample_shape] float32, after `verify_couplings`; with_index: also the indices.

    Args:
        out_dir: the coupling folder.
        with_index: also return the int64 sample indices.

    Returns:
        (tuple): (noise, endpoint), or (noise, endpoint, index).

    Raises:
        CouplingsError: the folder fails `verify_couplings`, or a shard changed or holds other samples.
    """
    out = Path(out_dir)
    manifest = verify_couplings(out)
    noise, ends, index = [], [], []
    for s in manifest["shards"]:
        data = (out / s["name"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != s["sha256"]:       # changed since the check
            raise CouplingsError(f"{out}: {s['name']} changed while it was read")
        t = st_load(data)
        if t["index"].numel() != s["count"] or not torch.equal(
                t["index"], torch.arange(s["start"], s["stop"], dtype=torch.int64)):
            raise CouplingsError(f"{out}: {s['name']} does not hold samples {s['start']}..{s['stop'] - 1}")
        noise.append(t["noise"])
        ends.append(t["endpoint"])
        index.append(t["index"])
    result = (torch.cat(noise), torch.cat(ends))
    return (*result, torch.cat(index)) if with_index else result
