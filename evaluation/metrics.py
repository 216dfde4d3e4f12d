"""Quality metrics for steps-versus-quality benchmarks: errors against a reference, distances between sample sets.

All functions are plain and deterministic (a seed fixes every random projection), work in float64 on the CPU or
the tensors' device, and return Python floats or per-sample tensors.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from diffsolve.errors import InvalidArgument


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _same_shape(x: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    if tuple(x.shape) != tuple(ref.shape):
        raise InvalidArgument(f"{what}: samples have shape {tuple(x.shape)} but the reference has {tuple(ref.shape)}")


def rmse_per_sample(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Root-mean-square difference over each sample's entries ([B, ...] -> [B], float64).

    Args:
        x: The samples, [B, ...].
        ref: The reference samples, of the same shape (moved to x's device).

    Returns:
        The RMSE per sample, [B] float64.

    Raises:
        InvalidArgument: The shapes differ.
    """
    _same_shape(x, ref, "rmse_per_sample")
    d = _flat(x) - _flat(ref.to(x.device))
    return d.pow(2).mean(dim=1).sqrt()


def maxabs_per_sample(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Largest absolute difference over each sample's entries ([B, ...] -> [B], float64).

    Args:
        x: The samples, [B, ...].
        ref: The reference samples, of the same shape (moved to x's device).

    Returns:
        The largest absolute difference per sample, [B] float64.

    Raises:
        InvalidArgument: The shapes differ.
    """
    _same_shape(x, ref, "maxabs_per_sample")
    return (_flat(x) - _flat(ref.to(x.device))).abs().amax(dim=1)


def summarize(values: torch.Tensor) -> dict[str, float]:
    """mean, median, 90th percentile and max of a 1-D tensor (as Python floats).

    Args:
        values: The values (flattened, in float64).

    Returns:
        The statistics under the keys mean, median, p90 and max.

    Raises:
        InvalidArgument: `values` is empty.
    """
    v = values.detach().reshape(-1).to(torch.float64).cpu()
    if v.numel() == 0:
        raise InvalidArgument("summarize: no values")
    return {"mean": float(v.mean()), "median": float(v.median()), "p90": float(torch.quantile(v, 0.9)),
            "max": float(v.max())}


def trajectory_rmse(traj: torch.Tensor, ref_traj: torch.Tensor) -> torch.Tensor:
    """Per grid point and per sample RMSE of a trajectory ([P, B, ...] each) -> [P, B] float64.

    Args:
        traj: The states at P grid points, [P, B, ...].
        ref_traj: The reference states at the same points, of the same shape.

    Returns:
        The RMSE per grid point and sample, [P, B] float64.

    Raises:
        InvalidArgument: The shapes differ.
    """
    _same_shape(traj, ref_traj, "trajectory_rmse")
    P, B = traj.shape[:2]
    d = traj.reshape(P, B, -1).to(torch.float64) - ref_traj.reshape(P, B, -1).to(traj.device, torch.float64)
    return d.pow(2).mean(dim=2).sqrt()


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_proj: int = 256, seed: int = 0, p: int = 1) -> float:
    """Sliced p-Wasserstein distance between two sample sets (Rabin et al. 2011; Bonneel et al. 2015).

    Directions are uniform on the sphere from a seeded generator; the 1-D distances compare quantile functions, so
    the two sets may differ in size (then both are read at the midpoints of 2048 quantile levels).

    Args:
        x: One sample set, [N, ...].
        y: The other, [M, ...] with the same sample size.
        n_proj: Number of random directions.
        seed: Seed of the directions.
        p: The Wasserstein order, 1 or 2.

    Returns:
        The distance.

    Raises:
        InvalidArgument: An invalid `n_proj` or `p`, an empty set, or sets of different dimensions.
    """
    return SlicedWasserstein(y, n_proj=n_proj, seed=seed, p=p)(x)


class SlicedWasserstein:
    """Sliced Wasserstein distance to a fixed sample set whose sorted projections are computed once.

    Calling the object with a sample set `x` returns its distance to `y` (see `sliced_wasserstein`).

    Args:
        y: The fixed sample set, [M, ...].
        n_proj: Number of random directions.
        seed: Seed of the directions.
        p: The Wasserstein order, 1 or 2.

    Raises:
        InvalidArgument: `n_proj` is not an integer >= 1, `p` is not 1 or 2, or `y` is empty.
    """

    LEVELS = 2048

    def __init__(self, y: torch.Tensor, n_proj: int = 256, seed: int = 0, p: int = 1):
        if not isinstance(n_proj, int) or n_proj < 1:
            raise InvalidArgument(f"n_proj={n_proj!r}: must be an integer >= 1")
        if p not in (1, 2):
            raise InvalidArgument(f"p={p!r}: allowed values: 1, 2")
        y = _flat(y).cpu()
        if y.shape[0] < 1:
            raise InvalidArgument("sliced_wasserstein: both sample sets need at least one sample")
        g = torch.Generator().manual_seed(int(seed))
        dirs = torch.randn(y.shape[1], n_proj, generator=g, dtype=torch.float64)
        self.dirs = dirs / dirs.norm(dim=0, keepdim=True)
        self.p = p
        self.py = self._sorted(y)

    def _sorted(self, x: torch.Tensor) -> torch.Tensor:
        # [n_proj, N] rows sorted along the contiguous axis; numpy's sort is several times faster than torch's here.
        proj = (self.dirs.T @ x.T).contiguous()
        return torch.from_numpy(np.sort(proj.numpy(), axis=1))

    def __call__(self, x: torch.Tensor) -> float:
        x = _flat(x).cpu()
        if x.shape[1] != self.dirs.shape[0]:
            raise InvalidArgument(f"sliced_wasserstein: dimensions differ ({x.shape[1]} vs {self.dirs.shape[0]})")
        if x.shape[0] < 1:
            raise InvalidArgument("sliced_wasserstein: both sample sets need at least one sample")
        px, py = self._sorted(x), self.py
        if px.shape[1] != py.shape[1]:
            levels = (torch.arange(self.LEVELS, dtype=torch.float64) + 0.5) / self.LEVELS
            px, py = _quantiles(px, levels), _quantiles(py, levels)
        per_dir = (px - py).abs().pow(self.p).mean(dim=1)
        return float(per_dir.mean().pow(1.0 / self.p))


def _quantiles(sorted_rows: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function (left-continuous inverse CDF) of sorted rows at the given levels."""
    n = sorted_rows.shape[1]
    idx = torch.clamp(torch.ceil(levels * n).long() - 1, 0, n - 1)
    return sorted_rows[:, idx]


def convergence_order(nfe: Sequence[float], err: Sequence[float], last: int = 3, floor: float = 0.0) -> float | None:
    """Estimated order: minus the least-squares slope of log(err) against log(NFE) over the last `last` points.

    Points with error at or below `floor` (e.g. a multiple of the reference's own error) or not finite are dropped
    first; None when fewer than two points remain.

    Args:
        nfe: The NFE values.
        err: The errors at those NFE (None entries are dropped).
        last: Number of points (largest NFE) the fit uses.
        floor: Errors at or below it are dropped.

    Returns:
        The order, or None when fewer than two distinct NFE remain.
    """
    pts = [(float(n), float(e)) for n, e in zip(nfe, err)
           if e is not None and math.isfinite(float(e)) and float(e) > floor and float(n) > 0]
    pts = sorted(pts)[-last:]
    if len(pts) < 2 or len({n for n, _ in pts}) < 2:
        return None
    lx = [math.log(n) for n, _ in pts]
    ly = [math.log(e) for _, e in pts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly))
    return -sxy / sxx


def gaussian_mixture_metrics(problem, samples: torch.Tensor, data: "torch.Tensor | SlicedWasserstein",
                             n_proj: int = 256, seed: int = 0) -> dict[str, float]:
    """Exact mean log-likelihood under the problem (when it has log_prob) and sliced W1 to exact data samples.

    Args:
        problem: The analytic problem; its `log_prob`, when it has one, gives the log-likelihood.
        samples: The samples to score.
        data: Exact data samples, or a `SlicedWasserstein` built on them (reused as is).
        n_proj: Number of directions when `data` is a tensor.
        seed: Seed of the directions when `data` is a tensor.

    Returns:
        sliced_w1, and loglik_mean when the problem has log_prob.
    """
    out = {}
    if hasattr(problem, "log_prob"):
        out["loglik_mean"] = float(problem.log_prob(_flat(samples).cpu()).mean())
    sw = data if isinstance(data, SlicedWasserstein) else SlicedWasserstein(data, n_proj=n_proj, seed=seed)
    out["sliced_w1"] = sw(samples)
    return out
