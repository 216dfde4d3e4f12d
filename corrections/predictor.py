"""The AMED predictor (Zhou et al., CVPR 2024): a ~9k-parameter network that picks, per sample and per step,
the intermediate time r, the step scale c and the time scale a of a mean-value step.

Inputs: the channel mean of a network feature (the UNet bottleneck, taken by a forward hook and detached),
pooled to a `feature_size` x `feature_size` map, and the log noise levels log s_n and log s_{n+1}, each through a
sinusoidal embedding and one shared Linear + SiLU. Body: Linear(f^2, 128) - SiLU - Linear(128, 4), concatenated
with the two time embeddings; three one-output heads with a sigmoid: r in (0, 1), c in [1 - delta_c, 1 + delta_c],
a in [1 - delta_a, 1 + delta_a].

`features=None` (the time-only variant) feeds zeros in place of the features, so the outputs depend on the step
alone: `time_table(grid)` exports them as per-step constants (`TimeTable`), for models whose features cannot be
hooked. A `TimeTable` is itself a predictor that a solver reads on the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from typing import Any, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from diffsolve.errors import InvalidArgument

FEATURE_KINDS = ("module", "denoised", "none")


class SinusoidalEmbedding(nn.Module):
    """cos/sin of u * f_k for log-spaced frequencies f_k; u is a log noise level (about -7 .. 5).

    Args:
        dim: Embedding width (dim // 2 frequencies, each with cos and sin).
        min_freq: The lowest frequency.
        max_freq: The highest frequency.
    """

    def __init__(self, dim: int = 8, min_freq: float = 0.1, max_freq: float = 3.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The embedding of `u`.

        Args:
            u: Log noise levels, any shape (flattened).

        Returns:
            [N, dim]: the cosines, then the sines.
        """
        a = u.reshape(-1, 1) * self.freqs.to(u.dtype)
        return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def pool_features(feat: torch.Tensor, size: int) -> torch.Tensor:
    """A network feature pooled to [B, size * size].

    [B, C, H, W]: the channel mean pooled to size x size; [B, D] (or any other shape): 1-D adaptive average pooling
    of the flattened values (kept as they are when they already number size * size). The feature is detached.

    Args:
        feat: The feature, batch first.
        size: The side of the pooled map.

    Returns:
        The pooled features, [B, size * size].
    """
    feat = feat.detach()
    if feat.dim() == 4:
        m = feat.mean(dim=1, keepdim=True)
        return F.adaptive_avg_pool2d(m, size).flatten(1)
    flat = feat.flatten(1)
    if flat.shape[1] == size * size:
        return flat
    return F.adaptive_avg_pool1d(flat[:, None, :], size * size)[:, 0]


class AMEDPredictor(nn.Module):
    """(features, s_n, s_{n+1}) -> (r, c, a), each [B].

    The heads start at zero: r = 1/2, c = a = 1, the midpoint rule.

    Args:
        features: 'module' (a submodule output of the network, named by `module`), 'denoised' (the data prediction
            at the step's start, for networks without hooks, e.g. analytic problems) or 'none' (time-only).
        module: The submodule path of the network whose output is read (default 'mid'); used only with 'module'.
        feature_size: The side of the pooled feature map.
        hidden: Width of the feature encoder's hidden layer.
        bottleneck: Width of the feature encoder's output.
        emb_dim: Width of each time embedding.
        delta_c: c lies in [1 - delta_c, 1 + delta_c]; in (0, 1).
        delta_a: a lies in [1 - delta_a, 1 + delta_a]; in (0, 1).
        s_floor: The smallest noise level fed to the time embedding (log of zero is avoided).

    Raises:
        InvalidArgument: `features` is not one of FEATURE_KINDS, 'module' without `module`, or a delta outside (0, 1).
    """

    def __init__(self, features: str = "module", module: str | None = "mid", feature_size: int = 8,
                 hidden: int = 128, bottleneck: int = 4, emb_dim: int = 8, delta_c: float = 0.05,
                 delta_a: float = 0.2, s_floor: float = 0.002):
        super().__init__()
        if features not in FEATURE_KINDS:
            raise InvalidArgument(f"features={features!r}; allowed values: {', '.join(map(repr, FEATURE_KINDS))}")
        if features == "module" and not module:
            raise InvalidArgument("features='module' needs module= (a submodule path of the network, e.g. 'mid')")
        if not (0 < delta_c < 1 and 0 < delta_a < 1):
            raise InvalidArgument("delta_c and delta_a must lie in (0, 1)")
        self.config = {"features": features, "module": module if features == "module" else None,
                       "feature_size": int(feature_size), "hidden": int(hidden), "bottleneck": int(bottleneck),
                       "emb_dim": int(emb_dim), "delta_c": float(delta_c), "delta_a": float(delta_a),
                       "s_floor": float(s_floor)}
        self.features = features
        self.module = self.config["module"]
        self.feature_size = int(feature_size)
        self.delta_c, self.delta_a, self.s_floor = float(delta_c), float(delta_a), float(s_floor)
        self.embed = SinusoidalEmbedding(emb_dim)
        self.time_layer = nn.Linear(emb_dim, emb_dim)
        self.enc0 = nn.Linear(feature_size * feature_size, hidden)
        self.enc1 = nn.Linear(hidden, bottleneck)
        n = bottleneck + 2 * emb_dim
        self.head_r, self.head_c, self.head_a = nn.Linear(n, 1), nn.Linear(n, 1), nn.Linear(n, 1)
        for head in (self.head_r, self.head_c, self.head_a):     # start at r = 1/2, c = a = 1: the midpoint rule
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def needs_features(self) -> bool:
        """True unless the predictor is time-only (features='none')."""
        return self.features != "none"

    def log_s(self, s: Any, like: torch.Tensor) -> torch.Tensor:
        """log max(s, s_floor) on the device and in the dtype of `like`.

        Args:
            s: A host float (filled on the device, no copy or sync) or a tensor of levels.
            like: A tensor whose device and dtype the result takes.

        Returns:
            The log levels, 1-D.
        """
        if not isinstance(s, torch.Tensor):        # a host float: a fill on the device, no copy or sync
            return torch.full((1,), math.log(max(float(s), self.s_floor)), dtype=like.dtype, device=like.device)
        return torch.log(s.to(device=like.device, dtype=like.dtype).reshape(-1).clamp_min(self.s_floor))

    def forward(self, feat: torch.Tensor | None, s0: Any, s1: Any, batch: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The step's (r, c, a) for each sample.

        Args:
            feat: The network feature at the step's start, or None (zeros, as for a time-only predictor).
            s0: The EDM noise level at the step's start (a float or a per-sample tensor).
            s1: The EDM noise level at the step's end.
            batch: The batch size when `feat` is None; None is 1.

        Returns:
            r in (0, 1), c and a near 1, each [B].
        """
        w = self.enc0.weight
        if feat is None or not self.needs_features:
            B = batch if batch is not None else (feat.shape[0] if feat is not None else 1)
            f = torch.zeros(B, self.feature_size ** 2, device=w.device, dtype=w.dtype)
        else:
            f = pool_features(feat, self.feature_size).to(w.dtype)
            B = f.shape[0]
        e0 = F.silu(self.time_layer(self.embed(self.log_s(s0, w))))
        e1 = F.silu(self.time_layer(self.embed(self.log_s(s1, w))))
        e = torch.cat([e0.expand(B, -1), e1.expand(B, -1)], dim=1)
        h = self.enc1(F.silu(self.enc0(f)))
        z = torch.cat([h, e], dim=1)
        r = torch.sigmoid(self.head_r(z))[:, 0]
        c = 1.0 + self.delta_c * (2.0 * torch.sigmoid(self.head_c(z))[:, 0] - 1.0)
        a = 1.0 + self.delta_a * (2.0 * torch.sigmoid(self.head_a(z))[:, 0] - 1.0)
        return r, c, a

    def time_table(self, grid: Sequence[float] | torch.Tensor, schedule: Any = None) -> "TimeTable":
        """Per-step constants (r_n, c_n, a_n) with zero features on a grid: the export for models without features.

        Args:
            grid: The schedule times of the grid.
            schedule: The schedule that maps them to EDM sigmas; None takes the grid as EDM sigmas.

        Returns:
            The table for `grid`.
        """
        t = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
        s = schedule.edm_sigma(t) if schedule is not None else t
        rows = []
        with torch.no_grad():
            for i in range(t.numel() - 1):
                r, c, a = self.forward(None, float(s[i]), float(s[i + 1]), batch=1)
                rows.append((float(r[0]), float(c[0]), float(a[0])))
        return TimeTable(tuple(float(v) for v in t), tuple(rows))


@dataclass(frozen=True)
class TimeTable:
    """Per-step constants (r_n, c_n, a_n) for one grid of schedule times (len(grid) - 1 rows).

    Attributes:
        grid: The schedule times, from the start to the end.
        rows: One (r, c, a) per step.
        needs_features: Always False: a table reads no features.

    Raises:
        InvalidArgument: The row count is not one per step, or a row has r outside [0, 1] or c, a not positive.
    """

    grid: tuple[float, ...]
    rows: tuple[tuple[float, float, float], ...]
    needs_features: bool = dc_field(default=False, init=False)

    def __post_init__(self):
        if len(self.rows) != len(self.grid) - 1:
            raise InvalidArgument(f"a time table needs one (r, c, a) row per step: {len(self.grid) - 1} steps, "
                                  f"{len(self.rows)} rows")
        for r, c, a in self.rows:
            if not (0.0 <= r <= 1.0 and c > 0 and a > 0):
                raise InvalidArgument(f"time table row (r={r}, c={c}, a={a}) is out of range")

    def row_for(self, t0: float, t1: float) -> tuple[float, float, float]:
        """The constants of the step from `t0` to `t1`.

        Args:
            t0: The step's start time (matched to the grid to rel 1e-9).
            t1: The step's end time.

        Returns:
            (r, c, a).

        Raises:
            InvalidArgument: The table has no such step (it was exported for another grid).
        """
        for i in range(len(self.rows)):
            if math.isclose(self.grid[i], t0, rel_tol=1e-9, abs_tol=1e-12) and \
                    math.isclose(self.grid[i + 1], t1, rel_tol=1e-9, abs_tol=1e-12):
                return self.rows[i]
        raise InvalidArgument(f"this time table has no step from t={t0:g} to t={t1:g}; it was exported for the "
                              f"grid {list(self.grid)}: pass grid= that list")
