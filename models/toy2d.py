"""Small 2-D few-step flows on the two moons: the network and the loaders of the shipped 1-rectified flow,
2-rectified flow and shortcut model, and of a 1-rectified flow from the eight-Gaussians source.

The problem is the one of `../shared/models/moons-flow`: data `sklearn.datasets.make_moons(noise=0.2) * 3 - 1`,
source N(0, I), t = 0 at the noise and t = 1 at the data (time_convention="flow"), x_t = (1 - t) z + t x1.
The eight-Gaussians flow starts from `eight_gaussians()` instead, which its ModelSpec names as its source, so
`Sampler(load_moons_8gaussians())` and every tuner draw its starts from there.
How they were trained and how they score: `diffsolve.training.toy2d`. Retrain with
`diffsolve train --what moons-1rf|moons-2rf|moons-shortcut|moons-8gaussians|moons`; score with
`diffsolve evaluate --models moons`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from diffsolve.errors import InvalidArgument, check_choice
from diffsolve.field import ModelSpec
from diffsolve.models.builtin import load_weights

WEIGHTS = Path(__file__).resolve().parent / "weights"
FILES = {"1rf": "moons_1rf.safetensors", "2rf": "moons_2rf.safetensors", "shortcut": "moons_shortcut.safetensors",
         "8gaussians": "moons_8gaussians.safetensors"}

# torchcfm's `sample_8gaussians` (Tong et al. 2024): centres 5 (cos k pi/4, sin k pi/4), k = 0..7, equal weights,
# covariance sqrt(0.1) I (torchcfm passes sqrt(var) as the covariance), so each component's std is 0.1 ** 0.25.
EIGHT_RADIUS, EIGHT_STD = 5.0, 0.1 ** 0.25


def _eight_centres() -> torch.Tensor:
    k = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return (EIGHT_RADIUS * torch.stack([k.cos(), k.sin()], dim=1)).float()


def eight_gaussians() -> torch.distributions.Distribution:
    """The eight-Gaussians source as a torch distribution (torchcfm's `sample_8gaussians`): an equal mixture of
    N(5 (cos k pi/4, sin k pi/4), sqrt(0.1) I), k = 0..7.

    Returns:
        A MixtureSameFamily whose samples have shape (2,).
    """
    comps = torch.distributions.Independent(
        torch.distributions.Normal(_eight_centres(), torch.full((8, 2), EIGHT_STD)), 1)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(probs=torch.full((8,), 1 / 8)), comps)


def sample_eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """`n` draws of the eight-Gaussians source from a generator (training's draws; the same law as
    `eight_gaussians()`).

    Args:
        n: the number of points.
        generator: the torch.Generator to draw from.

    Returns:
        The points, float32 (n, 2).
    """
    k = torch.randint(0, 8, (int(n),), generator=generator)
    return _eight_centres()[k] + EIGHT_STD * torch.randn(int(n), 2, generator=generator)


# its name as the reference caches' and correction files' key (draws from a seed differ from eight_gaussians()'s)
sample_eight_gaussians.identity = "diffsolve.models.toy2d.sample_eight_gaussians"

SOURCES: dict[str, Callable[[], torch.distributions.Distribution]] = {"8gaussians": eight_gaussians}

def moons(n: int, seed: int) -> torch.Tensor:
    """`sklearn.datasets.make_moons(n, noise=0.2, random_state=seed) * 3 - 1` as float32 [n, 2].

    Args:
        n: the number of points.
        seed: sklearn's random_state.

    Returns:
        The points, float32 (n, 2).
    """
    from sklearn.datasets import make_moons
    x, _ = make_moons(n_samples=n, noise=0.2, random_state=seed)
    return torch.from_numpy(x * 3.0 - 1.0).float()


class MoonsMLP(torch.nn.Module):
    """An MLP velocity field on cat([x, t]) (and the step size d for a shortcut model): SiLU, `depth` hidden layers.

    Args:
        width: the hidden width (default 128).
        depth: the number of hidden layers (default 3).
        shortcut: a shortcut model, which also takes the step size d (default False).
        source: the name of the source it was trained from (a key of SOURCES); None: N(0, I).
    """

    def __init__(self, width: int = 128, depth: int = 3, shortcut: bool = False, source: str | None = None):
        super().__init__()
        self.width, self.depth, self.shortcut = int(width), int(depth), bool(shortcut)
        if source is not None:
            check_choice("source", source, tuple(SOURCES))
        # None (N(0, I)) is left out of the weights' digest, so the shipped N(0, I) flows keep their identity
        self.source = source
        dims = [3 + int(shortcut)] + [self.width] * self.depth
        layers: list[torch.nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.SiLU()]
        layers.append(torch.nn.Linear(dims[-1], 2))
        self.net = torch.nn.Sequential(*layers)

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """The model's description for diffsolve: a velocity field on (2,) in flow time; a shortcut model adds the
        "shortcut" solver and its step input "d"; a flow from another source than N(0, I) names it.
        """
        if self.shortcut:
            return ModelSpec(prediction="velocity", schedule=None, sample_shape=(2,), time_convention="flow",
                             solver="shortcut", step_input="d")
        source = SOURCES[self.source]() if self.source is not None else None
        return ModelSpec(prediction="velocity", schedule=None, sample_shape=(2,), time_convention="flow", source=source)

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity at points `x` and flow time `t`.

        Args:
            x: points, (batch, 2).
            t: the flow time (t = 0 at the noise), a scalar or one per point.
            d: a shortcut model's step size, a scalar or one per point; None: 0 (ignored without shortcut).

        Returns:
            The velocity, (batch, 2).
        """
        cols = [x, t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)]
        if self.shortcut:
            d = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device) if d is None else d
            cols.append(d.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1))
        return self.net(torch.cat(cols, dim=1))


def toy_metadata(path: str | Path) -> dict:
    """The training record stored with a shipped toy model (config, train_seconds, ...).

    Args:
        path: the safetensors file.

    Returns:
        The record (an empty dict when the file has none).
    """
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("config", "{}"))


def _load(path: Path, shortcut: bool) -> MoonsMLP:
    if not path.is_file():
        raise InvalidArgument(f"path={str(path)!r} is missing: train it with `diffsolve train --what moons`")
    state, meta = load_weights(path)        # a truncated or foreign file: InvalidArgument naming it
    try:
        source = meta.get("source", "normal")
        model = MoonsMLP(int(meta.get("width", 128)), int(meta.get("depth", 3)), shortcut=shortcut,
                         source=None if source == "normal" else source)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgument(f"path={str(path)!r} holds another model's weights ({type(e).__name__}: "
                              f"{' '.join(str(e).split())})"[:400]) from None
    return model.eval().requires_grad_(False)


def load_moons_flow(reflow: int = 1, path: str | Path | None = None) -> MoonsMLP:
    """The shipped moons rectified flow: reflow=1 (flow matching) or reflow=2 (trained on the 1-RF's couplings).

    Args:
        reflow: 1 (default) or 2.
        path: the safetensors file; None: the shipped one.

    Returns:
        The MoonsMLP, in eval mode without gradients.

    Raises:
        InvalidArgument: `reflow` is not 1 or 2.
        FileNotFoundError: the file is missing (train it with `diffsolve train --what moons`).
    """
    check_choice("reflow", reflow, (1, 2))
    return _load(Path(path) if path is not None else WEIGHTS / FILES[f"{reflow}rf"], shortcut=False)


def load_moons_shortcut(path: str | Path | None = None) -> MoonsMLP:
    """The shipped moons shortcut model (v(x, t, d); `Sampler(model)` uses the 'shortcut' solver, K = 1, 2, 4, ...).

    Args:
        path: the safetensors file; None: the shipped one.

    Returns:
        The MoonsMLP (shortcut=True), in eval mode without gradients.

    Raises:
        FileNotFoundError: the file is missing (train it with `diffsolve train --what moons`).
    """
    return _load(Path(path) if path is not None else WEIGHTS / FILES["shortcut"], shortcut=True)


def load_moons_8gaussians(path: str | Path | None = None) -> MoonsMLP:
    """The shipped 1-rectified flow from the eight-Gaussians source to the moons; its spec names the source, so
    `Sampler(model)` and the tuners draw their starts from `eight_gaussians()`.

    Args:
        path: the safetensors file; None: the shipped one.

    Returns:
        The MoonsMLP, in eval mode without gradients.

    Raises:
        InvalidArgument: the file is missing or holds another model.
    """
    return _load(Path(path) if path is not None else WEIGHTS / FILES["8gaussians"], shortcut=False)


MODELS: dict[str, Callable[[], MoonsMLP]] = {
    "moons-1rf": lambda: load_moons_flow(1),
    "moons-2rf": lambda: load_moons_flow(2),
    "moons-shortcut": load_moons_shortcut,
    "moons-8gaussians": load_moons_8gaussians,
}

