"""How to run the benchmark: `BenchSettings`, their checks, and the names the bench accepts for dtypes and progress.

Every value is checked before any work (`check_settings`): no value is silently replaced by a default, and an
unusable output or cache folder fails in well under a second rather than after the whole run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffsolve.checks import BENCH_SEED_LIMIT, check_device, check_seed, check_writable
from diffsolve.errors import DiffsolveError, InvalidArgument, check_bool, unknown_name
from diffsolve.evaluation.reference import ReferenceSettings, default_cache_dir

PROGRESS_MODES = ("auto", "bar", "log", "none")


class OutputError(DiffsolveError, OSError):
    """The bench finished (its table was printed) but writing its files failed; `report` holds the results.

    Args:
        message: What failed, naming the output folder.
        report: The bench's report, or None.
    """

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class BenchSettings:
    """How to run the benchmark. None means: the model entry's default (see `BenchModel`).

    Attributes:
        batch_size: Number of samples.
        chunk_size: Samples per chunk: the unit of work and of sharding.
        seed: The run's seed; sample i's noise comes from seed * 2**24 + i.
        device: Device to run on; None runs on the CPU.
        dtype: Dtype name or torch dtype the solvers run in; None or 'auto' takes the entry's or the model's own.
        grid: Grid name for every solver; None takes each solver's default.
        grid_options: Options of the grid.
        threads: Torch CPU threads during the run (the small analytic problems use 1, since OpenMP start-up costs
            more than their tiny tensors gain); torch's setting is restored after.
        reference: How the reference is solved.
        trajectory: Measure errors at every grid point.
        cache: Reuse references cached on disk (and cache new ones).
        cache_dir: Folder of the reference cache; None takes `default_cache_dir()`.
        peers: Also run other libraries' samplers on the same noise.
        out: Folder for bench.json, bench.csv and plots; None writes no files.
        plots: Write the PNG plots (with `out`).
        progress: True/'auto': a bar on a terminal, else a log line per cell; 'bar', 'log', False/'none'.
        verbose: Print what runs, failing peer providers and the report's tables on stdout.
        straightness: Measure the model's straightness and one-step gap (diffsolve.analysis.straightness).
    """

    batch_size: int | None = None
    chunk_size: int | None = None       # samples per chunk: the unit of work and of sharding
    seed: int = 0
    device: Any = None
    dtype: Any = None
    grid: Any = None
    grid_options: dict | None = None
    threads: int | None = None
    reference: ReferenceSettings | None = None
    trajectory: bool | None = None
    cache: bool = True
    cache_dir: str | Path | None = None
    peers: bool = True
    out: str | Path | None = None
    plots: bool = True
    progress: bool | str = True        # True/'auto': a bar on a terminal, else a log line per cell; 'bar', 'log',
                                        # False/'none'
    verbose: bool = True
    straightness: bool = True           # the model's straightness and one-step gap (diffsolve.analysis.straightness)


def _positive_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgument(f"{name}={value!r}: must be an integer >= 1 (or None for the model's default)")


def check_settings(cfg: BenchSettings) -> None:
    """Every user value checked before any work: no value is silently replaced by a default, and an unusable
    output or cache folder fails here, in well under a second, rather than after the whole run.

    Args:
        cfg: The settings to check.

    Raises:
        InvalidArgument: A value is invalid, naming its field or flag.
    """
    for name in ("batch_size", "chunk_size", "threads"):
        _positive_or_none(name, getattr(cfg, name))
    check_seed(cfg.seed, BENCH_SEED_LIMIT, "seed")
    check_device(cfg.device, "device")
    progress_mode(cfg.progress)
    for name in ("cache", "peers", "plots", "verbose", "straightness"):
        check_bool(name, getattr(cfg, name))
    if cfg.out is not None:
        check_writable(cfg.out, "--out")
    if cfg.cache:
        check_writable(cfg.cache_dir if cfg.cache_dir is not None else default_cache_dir(), "--cache-dir")



def progress_mode(progress: bool | str) -> str:
    """The progress mode a `BenchSettings.progress` value stands for.

    Args:
        progress: True or 'auto' (a bar on a terminal, else log lines), 'bar', 'log', False or 'none'.

    Returns:
        'bar', 'log' or 'none'.

    Raises:
        InvalidArgument: Not one of those values.
    """
    if progress is True:
        progress = "auto"
    elif progress is False:
        progress = "none"
    if progress not in PROGRESS_MODES:
        raise unknown_name("progress", progress, PROGRESS_MODES)
    if progress == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return progress


DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "double": torch.float64, "float": torch.float32, "half": torch.float16}


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """The torch dtype a name (or dtype) stands for; None for 'auto' (the model entry's or the model's own).

    Args:
        dtype: A key of `DTYPES`, a torch dtype, 'auto' or None.

    Returns:
        The dtype, or None for None and 'auto'.

    Raises:
        InvalidArgument: An unknown dtype name.
    """
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise unknown_name("dtype", dtype, list(DTYPES) + ["auto"])
    return DTYPES[dtype]


def model_dtype(model: Any) -> torch.dtype:
    """The dtype of a network's first floating parameter or buffer (float32 for anything else).

    Args:
        model: A torch module, or any other model object.

    Returns:
        The dtype.
    """
    if isinstance(model, torch.nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    return torch.float32

