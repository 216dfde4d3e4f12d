"""The bench's PNG plots: error against NFE for every solver, and sample grids (images) or scatter plots (2-D)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from diffsolve.files import atomic_write_bytes


def _savefig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def write_plots(rep: dict, out: Path, chunks: list[dict], nfes: list[int], names: list[str]) -> list[str]:
    """error_vs_nfe.png, and samples.png for image and 2-D models, in `out`; the paths written (none without plots).

    `rep` is the bench report (results and fitted orders), `chunks` the chunks' results (their samples feed
    samples.png), `nfes` the NFE budgets and `names` the solver names (one curve each).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'diffsolve[plots]')")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name in names:
        pts = sorted({r["nfe"]: r["rmse_mean"] for r in rep["results"]
                      if r["solver"] == name and r["status"] == "ok" and r.get("rmse_mean") is not None
                      and r["rmse_mean"] > 0}.items())
        if pts:
            o = rep["orders"].get(name)
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o",
                      label=f"{name}" + (f" (order {o:.1f})" if o is not None else ""))
    gap = rep["reference"]["gap_endpoint_rmse"]
    if gap > 0:
        ax.axhline(gap, color="gray", ls="--", lw=1, label="reference tolerance gap")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("endpoint RMSE vs reference")
    ax.set_title(f"diffsolve bench: {rep['model']['name']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _savefig(fig, out / "error_vs_nfe.png")
    plt.close(fig)
    written.append(str(out / "error_vs_nfe.png"))

    if rep["model"]["kind"] == "image":
        show = min(4, rep["config"]["batch_size"])
        ref_end = torch.cat([ch["refs"][max(ch["refs"])]["endpoint"] for ch in chunks])[:show]
        cols = nfes + ["ref"]
        fig, axes = plt.subplots(len(names), len(cols), figsize=(1.6 * len(cols), 1.6 * len(names)), squeeze=False)
        lo, hi = _data_range(rep, ref_end)
        for i, name in enumerate(names):
            for j, n in enumerate(cols):
                ax = axes[i][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if n == "ref":
                    imgs = ref_end
                else:
                    key = (name, n)
                    if not all("samples" in ch["runs"].get(key, {}) for ch in chunks):
                        continue
                    imgs = torch.cat([ch["runs"][key]["samples"] for ch in chunks])[:show]
                ax.imshow(_mosaic(imgs, lo, hi).numpy(), cmap="gray", vmin=0, vmax=1)
                if i == 0:
                    ax.set_title("reference" if n == "ref" else f"NFE {n}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(name, fontsize=8)
        _savefig(fig, out / "samples.png")
        plt.close(fig)
        written.append(str(out / "samples.png"))
    if rep["model"]["kind"] == "points":
        fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.6), squeeze=False)
        ref_end = torch.cat([ch["refs"][max(ch["refs"])]["endpoint"] for ch in chunks])
        n = nfes[0]
        for j, name in enumerate(names + ["reference"]):
            ax = axes[0][j]
            if name == "reference":
                pts = ref_end
            elif all("samples" in ch["runs"].get((name, n), {}) for ch in chunks):
                pts = torch.cat([ch["runs"][(name, n)]["samples"] for ch in chunks])
            else:
                continue
            ax.scatter(pts[:, 0].double().numpy(), pts[:, 1].double().numpy(), s=2)
            ax.set_title(name if name == "reference" else f"{name} NFE {n}", fontsize=8)
        _savefig(fig, out / "samples.png")
        plt.close(fig)
        written.append(str(out / "samples.png"))
    return written


def _data_range(rep: dict, ref: torch.Tensor) -> tuple[float, float]:
    """The model's declared data range (ModelSpec.data_range); without one, the range of the reference samples,
    so that an undeclared model's images still fill the grey scale instead of being clipped or washed out."""
    rng = rep["model"].get("data_range")
    if rng is not None:
        return float(rng[0]), float(rng[1])
    lo, hi = float(ref.min()), float(ref.max())
    return (lo, hi) if hi > lo else (lo - 1.0, hi + 1.0)


def _mosaic(imgs: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Up to 4 images [N, C, H, W] tiled 2 x 2, scaled to [0, 1] from the data range."""
    imgs = ((imgs.float() - lo) / (hi - lo)).clamp(0, 1)
    imgs = imgs.mean(1) if imgs.shape[1] != 3 else imgs.permute(0, 2, 3, 1)
    n = imgs.shape[0]
    while imgs.shape[0] < 4:
        imgs = torch.cat([imgs, torch.zeros_like(imgs[:1])])
    top = torch.cat([imgs[0], imgs[1]], dim=1)
    bottom = torch.cat([imgs[2], imgs[3]], dim=1)
    return torch.cat([top, bottom], dim=0) if n > 2 else top
