"""A local diffusers folder as a diffsolve field: a pipeline folder (`model_index.json`, `unet/`, `scheduler/`,
maybe `vae/` and `text_encoder/`, which sampling in latent space does not need) or a UNet folder (`config.json` and
its weights) with its scheduler beside it (`scheduler/` inside it or next to it, or a `scheduler_config.json`).
The network class comes from its config's `_class_name`, the latent shape from the config (`in_channels`,
`sample_size`), the path and prediction type from the scheduler config (`from_diffusers`). Nothing is downloaded.
A text-conditioned UNet (UNet2DConditionModel) takes its conditions as `encoder_hidden_states`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffsolve.errors import InvalidArgument
from diffsolve.field import Field
from diffsolve.pretrained_adapters.diffusers.model import from_diffusers

NETWORK_FOLDERS = ("unet", "transformer")


def is_diffusers_folder(path: Any) -> bool:
    """Whether `path` is a local folder that looks like a diffusers pipeline or network.

    Args:
        path: Anything (only an existing folder with `model_index.json`, `unet/`, `transformer/` or a
            `config.json` naming a `_class_name` counts).

    Returns:
        True for such a folder.
    """
    if not isinstance(path, (str, Path)) or not Path(path).is_dir():
        return False
    p = Path(path)
    return (p / "model_index.json").is_file() or any((p / d).is_dir() for d in NETWORK_FOLDERS) \
        or (p / "config.json").is_file()


def _read_json(path: Path, argument: str) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{argument}: {path} is not a readable JSON config ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise InvalidArgument(f"{argument}: {path} holds a {type(cfg).__name__}, not a config object")
    return cfg


def folder_parts(path: str | Path, argument: str = "model") -> tuple[Path, Path]:
    """The network folder and the scheduler config file of a diffusers folder.

    Args:
        path: The pipeline folder, or a network folder with its scheduler.
        argument: The argument or flag the path came from, named in errors.

    Returns:
        (network folder, scheduler_config.json).

    Raises:
        InvalidArgument: No network or no scheduler config is found (the message says what was looked for).
    """
    root = Path(path)
    net = next((root / d for d in NETWORK_FOLDERS if (root / d / "config.json").is_file()), None)
    if net is None and (root / "config.json").is_file():
        net = root
    if net is None:
        raise InvalidArgument(f"{argument}={str(path)!r}: no diffusers network here (looked for unet/config.json, "
                              "transformer/config.json and config.json)")
    for candidate in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json",
                      root.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return net, candidate
    raise InvalidArgument(f"{argument}={str(path)!r}: no scheduler config (looked for scheduler/"
                          "scheduler_config.json in the folder and beside it, and scheduler_config.json)")


def load_diffusers_folder(path: str | Path, argument: str = "model") -> Field:
    """The field of a local diffusers folder: its network (in eval mode, without gradients) under its scheduler.

    Args:
        path: The pipeline folder, or a network folder with its scheduler.
        argument: The argument or flag the path came from, named in errors.

    Returns:
        The VectorField (from_diffusers), its sample shape the network config's latent shape.

    Raises:
        InvalidArgument: Not a diffusers folder, a network class diffusers does not have, or weights that do not
            load.
    """
    import diffusers

    net_dir, sched_file = folder_parts(path, argument)
    cfg = _read_json(net_dir / "config.json", argument)
    name = cfg.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise InvalidArgument(f"{argument}={str(path)!r}: {net_dir / 'config.json'} names the class {name!r}, "
                              "which is not a diffusers model class")
    try:
        net = cls.from_pretrained(str(net_dir), local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise InvalidArgument(f"{argument}={str(path)!r}: the {name} in {net_dir} does not load "
                              f"({type(e).__name__}: {' '.join(str(e).split())})"[:400]) from None
    field = from_diffusers(net.eval().requires_grad_(False), _read_json(sched_file, argument))
    if field.sample_shape is None:
        raise InvalidArgument(f"{argument}={str(path)!r}: the network config gives no in_channels and sample_size, "
                              "so the latent shape is unknown")
    return field
