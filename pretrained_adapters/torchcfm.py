"""torchcfm (conditional-flow-matching) 2-D MLP velocity fields: x, t -> dx/dt with t = 0 at the source noise."""
from __future__ import annotations

from pathlib import Path

import torch

from diffsolve.field import ModelSpec


class TorchCFMMLP(torch.nn.Module):
    """`net = Linear(d+1, w) SELU Linear(w, w) SELU Linear(w, w) SELU Linear(w, d)` on cat([x, t]).

    Args:
        dim: d, the data dimension (default 2).
        width: w, the hidden width (default 64).
    """

    def __init__(self, dim: int = 2, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width), torch.nn.SELU(), torch.nn.Linear(width, width), torch.nn.SELU(),
            torch.nn.Linear(width, width), torch.nn.SELU(), torch.nn.Linear(width, dim))
        self.dim = dim

    @property
    def diffsolve_spec(self) -> ModelSpec:
        """A plain velocity field: no schedule, sample shape (dim,), flow time (t = 0 at the source noise)."""
        # A plain velocity field: no Gaussian path is guaranteed (OT couplings), time runs the flow way.
        return ModelSpec(prediction="velocity", schedule=None, sample_shape=(self.dim,), time_convention="flow")

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity dx/dt.

        Args:
            x: points, shape (batch, dim).
            t: the flow time, a scalar or one per point.

        Returns:
            The velocity, shaped like x.
        """
        t = t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([x, t], dim=1))


def load_torchcfm_mlp(path: str | Path, dim: int = 2, width: int = 64) -> TorchCFMMLP:
    """Load a torchcfm MLP from safetensors (strict key match).

    Args:
        path: the safetensors file.
        dim: the data dimension the weights were trained for (default 2).
        width: the hidden width (default 64).

    Returns:
        The model in eval mode, without gradients.

    Raises:
        FileNotFoundError: no file at `path`.
        RuntimeError: the file's keys or shapes do not match the MLP (torch's load_state_dict).
    """
    from safetensors.torch import load_file
    model = TorchCFMMLP(dim, width)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval().requires_grad_(False)
