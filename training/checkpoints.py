"""Writing trained weights: safetensors with the training record as metadata, never a half-written file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_model(model: torch.nn.Module, path: Path, meta: dict, dtype: torch.dtype | None = None) -> None:
    """Weights and metadata as safetensors, written to a temporary file and renamed (never a half-written file);
    floating tensors stored in `dtype` when given.

    Args:
        model: the module whose state dict is saved.
        path: the file to write (its folder is created).
        meta: the training record, stored as JSON under the `config` metadata key.
        dtype: the dtype of the stored floating tensors; None: as they are.

    Raises:
        OSError: the folder or file cannot be written.
        TypeError: `meta` holds a value JSON cannot encode.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous()
             for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(state, str(tmp), metadata={"config": json.dumps(meta)})
    os.replace(tmp, path)
