"""`diffsolve sample`: one sample per seed from a bench model with one solver, written to a folder.

`sample_to_folder(model, solver, seeds, out, nfe=|steps=)` writes `samples.safetensors` (the samples, as run, on
the CPU, and the seeds as int64; model, solver, NFE, steps, grid and dtype in its metadata) and `samples.png` (an
image grid for image models, a scatter plot of the first two coordinates otherwise), each atomically. The model
comes from the bench's registry (`bench.models.resolve_model`). Sample i's noise (and a stochastic solver's step
noise) depends on its seed only, so a seed gives the same sample whatever other seeds are drawn with it.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from safetensors.torch import save

from diffsolve import __version__
from diffsolve.bench.models import data_range_of, model_with_source, resolve_model
from diffsolve.bench.settings import model_dtype, resolve_dtype
from diffsolve.checks import check_device, check_seed, check_writable
from diffsolve.errors import InvalidArgument, check_bool, check_int
from diffsolve.field import source_identity
from diffsolve.files import atomic_write_bytes
from diffsolve.progress import Progress
from diffsolve.sampler import Sampler


@dataclass(frozen=True)
class SampleSettings:
    """What `diffsolve sample` draws and where it writes it (see `sample_to_folder`, which checks every value).

    Attributes:
        model: A bench model name, a 'module:attr' path or a model object.
        solver: Solver name.
        seeds: One seed per sample.
        out: Folder for samples.safetensors and samples.png.
        nfe: NFE budget; None uses `steps` (one of the two is needed unless the solver is adaptive).
        steps: Solver steps; None uses `nfe`.
        grid: Grid name; None takes the solver's default.
        device: Device to sample on; None samples on the CPU.
        dtype: Dtype name or torch dtype; 'auto' takes the entry's or the model's own.
        batch_size: Samples per solve; None solves all seeds at once.
        plots: Also write samples.png (needs matplotlib).
        progress: diffsolve.progress lines/bar on stderr (the command line turns it on).
        source: A plain velocity field's source (a Distribution or a callable `source(n, generator)`) or a
            'module:attr' path naming it; None: the model's own (N(0, I) unless its spec names one).
    """

    model: Any = "gmm"
    solver: str = "dpmpp_2m"
    seeds: tuple[int, ...] = tuple(range(16))
    out: str | Path = "diffsolve-samples"
    nfe: int | None = None
    steps: int | None = None
    grid: Any = None
    device: Any = None
    dtype: Any = "auto"
    batch_size: int | None = None
    plots: bool = True
    progress: bool = False      # diffsolve.progress lines/bar on stderr (the command line turns it on)
    source: Any = None


def write_samples(cfg: SampleSettings) -> list[str]:
    """`sample_to_folder` with the settings of one `SampleSettings`; the paths written.

    Args:
        cfg: What to draw and where.

    Returns:
        The paths written.
    """
    return sample_to_folder(cfg.model, cfg.solver, cfg.seeds, cfg.out, nfe=cfg.nfe, steps=cfg.steps, grid=cfg.grid,
                            device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, plot=cfg.plots,
                            progress=cfg.progress, source=cfg.source)


def sample_to_folder(model: Any, solver: str, seeds: Sequence[int], out: str | Path, *, nfe: int | None = None,
                     steps: int | None = None, grid: Any = None, device: Any = None, dtype: Any = "auto",
                     batch_size: int | None = None, plot: bool = True, progress: bool = False,
                     source: Any = None) -> list[str]:
    """Draw one sample per seed and write them to `out`; returns the paths written. `progress`: report on stderr
    (diffsolve.progress: a bar in a terminal, plain lines about every 10 s elsewhere).

    Args:
        model: A bench model name, a 'module:attr' path or a model object (see `resolve_model`).
        solver: Solver name.
        seeds: One seed per sample.
        out: Folder to write to (checked writable before the model is built).
        nfe: NFE budget; None uses `steps`.
        steps: Solver steps; None uses `nfe` (one of the two is needed unless the solver is adaptive).
        grid: Grid name; None takes the solver's default.
        device: Device to sample on; None samples on the CPU.
        dtype: Dtype name or torch dtype; 'auto' takes the model entry's or the model's own.
        batch_size: Samples per solve; None solves all seeds at once.
        plot: Also write samples.png.
        progress: Report progress on stderr.
        source: A plain velocity field's source, or a 'module:attr' path naming it; None: the model's own.

    Returns:
        The paths written: samples.safetensors (samples, seeds, metadata) and, with `plot`, samples.png.

    Raises:
        InvalidArgument: No seeds, an invalid value, a model without a sample shape, neither nfe nor steps.
        FloatingPointError: The samples contain NaN or Inf.
    """
    seeds = [check_seed(s, option="seeds") for s in seeds]
    if not seeds:
        raise InvalidArgument("seeds: give at least one seed")
    if batch_size is not None:
        batch_size = check_int("batch_size", batch_size, minimum=1)
    check_device(device, "--device")
    folder = check_writable(out, "--out")          # before the model is built or anything is solved
    with Progress("sample", len(seeds), unit="samples", enabled=check_bool("progress", progress)) as report:
        report.note("loading the model")
        return _sample(model, solver, seeds, folder, nfe, steps, grid, device, dtype, batch_size, plot, report,
                       source)


def _sample(model: Any, solver: str, seeds: list[int], folder: Path, nfe: int | None, steps: int | None, grid: Any,
            device: Any, dtype: Any, batch_size: int | None, plot: bool, report: Progress,
            source: Any = None) -> list[str]:
    entry, net = resolve_model(model)
    run_dtype = resolve_dtype(dtype)
    if run_dtype is None:
        run_dtype = entry.dtype if entry.dtype is not None else model_dtype(net)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(net, torch.nn.Module):
        has_params = any(True for _ in net.parameters())
        net = net.to(device=dev, dtype=run_dtype) if has_params else net.to(device=dev)
    smp = Sampler(model_with_source(net, source) if source is not None else net, solver, grid=grid, progress=False)
    if smp.field.sample_shape is None:
        raise InvalidArgument(f"model {entry.name!r} does not declare its sample shape (ModelSpec.sample_shape)")
    if nfe is None and steps is None and not smp.solver.adaptive:
        raise InvalidArgument("give --nfe or --steps")
    plan = smp.plan(steps, nfe)             # a budget the solver cannot meet fails here, before any model call
    chunk = len(seeds) if batch_size is None else batch_size
    parts, used, steps_taken = [], 0, None
    report.note(f"solving with {smp.solver.name}")
    with torch.no_grad():
        for i in range(0, len(seeds), chunk):
            part = seeds[i:i + chunk]
            res = smp.run(steps, nfe=nfe, seed=part, batch_size=len(part), device=dev, dtype=run_dtype)
            parts.append(res.samples.detach().cpu())
            used = max(used, res.nfe)
            steps_taken = res.steps
            report.update(len(part))
    report.note("writing")
    samples = torch.cat(parts)
    if not torch.isfinite(samples).all():
        raise FloatingPointError("the samples contain NaN/Inf")

    meta = {"model": entry.name, "solver": smp.solver.name, "nfe": used, "steps": steps_taken,
            "nfe_requested": nfe, "steps_requested": steps, "adaptive": smp.solver.adaptive,
            "grid": smp.grid if isinstance(smp.grid, str) else "custom", "dtype": str(run_dtype).replace("torch.", ""),
            "kind": entry.kind, "data_range": data_range_of(net), "diffsolve": __version__,
            "plan_nfe": None if smp.solver.adaptive else plan.nfe * smp.field.evals_per_call,
            "source": source_identity(smp.field.source)}
    blob = save({"samples": samples.contiguous(), "seeds": torch.tensor(seeds, dtype=torch.int64)},
                metadata={"diffsolve": json.dumps(meta, sort_keys=True)})
    written = []
    atomic_write_bytes(folder / "samples.safetensors", blob)
    written.append(str(folder / "samples.safetensors"))
    if plot:
        png = sample_png(samples, entry.kind, data_range_of(net),
                         f"{entry.name}: {smp.solver.name}, {used} NFE, seeds {_seed_text(seeds)}")
        atomic_write_bytes(folder / "samples.png", png)
        written.append(str(folder / "samples.png"))
    return written


def _seed_text(seeds: Sequence[int]) -> str:
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds[:8])) + (", ..." if len(seeds) > 8 else "")


def sample_png(samples: torch.Tensor, kind: str, data_range: tuple[float, float] | None, title: str) -> bytes:
    """PNG bytes: an image grid ([N, C, H, W] with C in 1, 3), else a scatter plot of the first two coordinates.

    Args:
        samples: The samples.
        kind: The bench model's kind ('image', 'points' or 'vector').
        data_range: The range images are shown in; None shows them as they are.
        title: The figure's title.

    Returns:
        The PNG file's bytes.

    Raises:
        InvalidArgument: An image model's samples are not [N, 1|3, H, W].
        ImportError: matplotlib is not installed.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = samples.detach().to(torch.float64).cpu()
    is_image = x.ndim == 4 and x.shape[1] in (1, 3)
    if kind == "image" and not is_image:
        raise InvalidArgument(f"an image model's samples should be [N, 1|3, H, W], got {tuple(x.shape)}")
    if is_image:
        lo, hi = data_range if data_range is not None else (float(x.min()), float(x.max()))
        if not hi > lo:
            lo, hi = lo - 1.0, hi + 1.0
        imgs = ((x - lo) / (hi - lo)).clamp(0, 1)
        n, c, h, w = imgs.shape
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        canvas = torch.ones(c, rows * (h + 2) + 2, cols * (w + 2) + 2)
        for k in range(n):
            r, q = divmod(k, cols)
            canvas[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = imgs[k]
        fig, ax = plt.subplots(figsize=(max(2.0, canvas.shape[2] / 40), max(2.0, canvas.shape[1] / 40) + 0.4))
        if c == 1:
            ax.imshow(canvas[0].numpy(), cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(canvas.permute(1, 2, 0).numpy())
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] < 2:
            flat = torch.cat([flat, torch.zeros_like(flat)], dim=1)
        fig, ax = plt.subplots(figsize=(4.8, 4.8))
        ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), s=6)
        ax.set_aspect("equal", adjustable="datalim")
        if x[0].numel() > 2:
            ax.set_xlabel("coordinate 0")
            ax.set_ylabel("coordinate 1")
            title += f" (first 2 of {x[0].numel()} coordinates)"
    ax.set_title(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
