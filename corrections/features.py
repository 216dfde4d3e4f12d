"""A network's feature at the same call as its data prediction: what AMED predictors read."""
from __future__ import annotations

from typing import Any

import torch

from diffsolve.errors import InvalidArgument
from diffsolve.field import EvalPoint, _network_of


def denoise_with_features(ev, x: torch.Tensor, p: EvalPoint, module: str | None) -> tuple[torch.Tensor, Any]:
    """The data prediction and the feature of `module` at the same call.

    From a FeatureCapture wrapper when the field has one (`ev.features`), else by a forward hook held only during
    this call.

    Args:
        ev: The evaluator that calls the model.
        x: The state.
        p: The evaluation point.
        module: Dotted name of the network's submodule whose output is the feature; None takes no feature.

    Returns:
        The data prediction, and the feature (None when `module` is None).

    Raises:
        InvalidArgument: The network has no submodule `module`, or no feature was captured during the call.
    """
    if module is None:
        return ev.denoise(x, p), None
    net = _network_of(ev.field)
    captured: dict = {}
    handle = None
    if isinstance(net, torch.nn.Module):
        try:
            target = net.get_submodule(module)
        except AttributeError:
            raise InvalidArgument(f"the predictor reads features of submodule {module!r}, which this network does "
                                  "not have; use a predictor trained for this model") from None

        def hook(_m, _inp, out):
            captured["f"] = (out if isinstance(out, torch.Tensor) else out[0]).detach()
        handle = target.register_forward_hook(hook)
    try:
        D = ev.denoise(x, p)
    finally:
        if handle is not None:
            handle.remove()
    feat = captured.get("f")
    if feat is None:
        feat = ev.features.get("bottleneck")
    if feat is None:
        raise InvalidArgument(f"no feature from submodule {module!r} was captured during the model call")
    return D, feat
